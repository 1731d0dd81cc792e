"""`python`: the grader's own `grade(sample, item) -> float`, run in a confined process through
the caller's pool (sandbox.PythonPool). An exception, a broken limit or a result that is not a
number gives reward 0 and the reason in `python_grader_runtime_error_details`; a sandbox that
cannot run at all sets `python_grader_server_error`."""

from __future__ import annotations

import ast
import time

from tailor.graders import checks, result


def check(g: dict, path: str, max_source_bytes: int = 256 * 1024) -> dict:
    source = checks.string(g, "source", path)
    size = len(source.encode("utf-8"))
    if size > max_source_bytes:
        raise checks.Invalid(f"the source is {size} bytes; this server accepts at most {max_source_bytes}",
                             f"{path}.source")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise checks.Invalid(f"the source is not valid Python{where}: {getattr(exc, 'msg', exc)}",
                             f"{path}.source") from None
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "grade" for n in tree.body):
        raise checks.Invalid("the source must define grade(sample, item) at its top level", f"{path}.source")
    out = {"type": "python", "name": checks.string(g, "name", path, required=False, default="python"),
           "source": source}
    if g.get("image_tag") is not None:
        out["image_tag"] = checks.string(g, "image_tag", path)
    return out


def grade(g: dict, scope: dict, ctx) -> dict:
    from tailor.graders.sandbox import default_pool

    started = time.monotonic()
    pool = getattr(ctx, "python", None) or default_pool()
    reply = pool.grade(g["source"], scope["sample"], scope["item"])
    if "reward" in reply:
        return result.response(g, reply["reward"], started=started)
    if "server_error" in reply:
        failure = result.GradeFailure("python_grader_server_error", reply["server_error"])
    else:
        failure = result.GradeFailure("python_grader_runtime_error", reply.get("error", "unknown failure"))
    return result.failed(g, failure, started=started)
