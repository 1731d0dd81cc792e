"""The python graders' fork server: a process that never runs a grader's code itself. Started
once (`python -I _zygote.py`, empty environment, an empty working folder), it preloads common
modules, then for each request forks a child that confines itself (_confine.py), runs
`grade(sample, item)` and writes its reward to a pipe. The server here watches every child's
wall-clock deadline and output size, and answers each request, in any order, on stdout.

Messages both ways are 4-byte big-endian lengths followed by JSON. Standard library only."""

import json
import os
import select
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _confine  # noqa: E402

sys.path.pop(0)  # graders cannot import tailor's modules by their file names
MAX_RESULT = 64 * 1024
PRELOAD = ("json", "math", "re", "statistics", "collections", "itertools", "functools", "string", "difflib",
           "fractions", "decimal", "datetime", "random", "traceback", "linecache", "numpy")


def main() -> None:
    reason = _confine.available()
    readable = _confine.readable_paths() if reason is None else []
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    out = sys.stdout.buffer
    _send(out, {"ready": reason is None, "reason": reason})
    if reason is not None:
        return
    jobs = {}  # pid -> job
    stdin = sys.stdin.buffer.raw
    pending = b""
    while True:
        reading = {j["fd"]: j for j in jobs.values() if j["fd"] is not None}
        deadline = min((j["deadline"] for j in jobs.values()), default=None)
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if len(reading) < len(jobs):  # a child closed its pipe: poll for its exit
            wait = min(wait, 0.02)
        ready, _, _ = select.select([stdin, *reading], [], [], wait)
        for fd in ready:
            if fd is stdin:
                chunk = os.read(stdin.fileno(), 1 << 20)
                if not chunk:  # the server went away: take every child with us
                    for job in jobs.values():
                        _kill(job["pid"])
                    return
                pending += chunk
                while len(pending) >= 4 and len(pending) >= 4 + struct.unpack(">I", pending[:4])[0]:
                    n = struct.unpack(">I", pending[:4])[0]
                    job = _start(json.loads(pending[4:4 + n]), readable)
                    pending = pending[4 + n:]
                    jobs[job["pid"]] = job
            else:
                job = reading[fd]
                data = os.read(fd, 65536)
                job["buf"] += data
                if not data or len(job["buf"]) > MAX_RESULT:
                    os.close(fd)
                    job["fd"] = None
        now = time.monotonic()
        for pid, job in list(jobs.items()):
            if now >= job["deadline"]:
                job["timed_out"] = True
                _kill(pid)
                status = os.waitpid(pid, 0)[1]
            elif job["fd"] is None:
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            else:
                continue
            if job["fd"] is not None:
                os.close(job["fd"])
            del jobs[pid]
            _send(out, _reply(job, status))


def _start(req: dict, readable: list) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: confine, grade, report, exit
        os.close(r)
        code = 0
        try:
            reply = _grade(req, w, readable)
        except BaseException as exc:  # noqa: BLE001 - a failed confinement is reported, never ignored
            reply, code = {"server_error": f"the sandbox could not start: {exc}"}, 1
        try:
            os.write(w, json.dumps(reply).encode()[:MAX_RESULT])
        finally:
            os._exit(code)
    os.close(w)
    return {"id": req["id"], "pid": pid, "fd": r, "buf": b"", "timed_out": False,
            "timeout": req["wall_seconds"], "deadline": time.monotonic() + req["wall_seconds"]}


def _grade(req: dict, fd: int, readable: list) -> dict:
    _confine.confine(fd, cpu_seconds=req["cpu_seconds"], memory_bytes=req["memory_bytes"], readable=readable)
    try:
        namespace = {"__name__": "grader"}
        import linecache

        lines = req["source"].splitlines(keepends=True)
        linecache.cache["grader.py"] = (len(req["source"]), None, lines, "grader.py")  # tracebacks show the line
        exec(compile(req["source"], "grader.py", "exec"), namespace)  # noqa: S102 - confined above
        grade = namespace.get("grade")
        if not callable(grade):
            return {"error": "the source defines no function grade(sample, item)"}
        value = grade(req["sample"], req["item"])
    except MemoryError:
        return {"error": "MemoryError: the grader went past its memory limit"}
    except BaseException as exc:  # noqa: BLE001 - the grader's own failure, reported as such
        return {"error": _traceback(exc)}
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        return {"error": f"grade() returned {type(value).__name__}, not a number"}
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return {"error": f"grade() returned {value}, not a finite number"}
    return {"reward": value}


def _traceback(exc: BaseException) -> str:
    """The exception and the grader's own lines only: no path of the server's files."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "grader.py"]
    where = "".join(f"  line {f.lineno}, in {f.name}: {f.line}\n" for f in frames[-5:])
    return f"{where}{type(exc).__name__}: {exc}"[-2000:]


def _reply(job: dict, status: int) -> dict:
    reply = {"id": job["id"]}
    if job["timed_out"]:
        reply["error"] = f"the grader ran past its time limit ({job['timeout']:g} s) and was stopped"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        reply["error"] = {signal.SIGXCPU: "the grader ran past its CPU time limit and was stopped",
                          signal.SIGKILL: "the grader was killed (out of memory?)",
                          signal.SIGSYS: "the grader made a forbidden system call"}.get(
            sig, f"the grader crashed ({signal.Signals(sig).name})")
    else:
        try:
            reply.update(json.loads(job["buf"]))
        except ValueError:
            reply["error"] = "the grader's result could not be read (too large or cut off)"
    return reply


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _send(out, message: dict) -> None:
    data = json.dumps(message).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


if __name__ == "__main__":
    main()
