"""One eval run, row by row: get the sample (the row's own, or a model's answer to the row's
messages), grade it with every testing criterion, then store the output items and the counts. Rows run
ROW_WORKERS at a time so a served model batches their generations."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tailor import graders
from tailor.graders import result, template
from tailor.service import evals
from tailor.service.eval_runs import DEFAULT_MAX_TOKENS, ROW_WORKERS, rows_of
from tailor.service.store import new_id


def execute(runner, run: dict) -> dict:
    """Grade every row; returns the run's final fields (status completed, counts, usage)."""
    store = runner.store
    ev = store.get("evals", run["eval_id"])
    rows = rows_of(store, run)
    sampler = runner.sampler_for(run["_project"]) if runner.sampler_for else None
    ctx = graders.Context(sampler=sampler, python=runner.python)
    usage = result.Usage()

    def one(index_row):
        index, row = index_row
        if runner.cancelled(run["id"]):
            return None
        return _row(run, ev, index, row, ctx, usage)

    with ThreadPoolExecutor(ROW_WORKERS) as pool:
        items = [i for i in pool.map(one, enumerate(rows)) if i is not None]
    with store.transaction():  # in the data source's order, whichever row finished first
        for item in items:
            store.put("eval_items", {k: v for k, v in item.items() if k != "_errored"}, project=run["_project"],
                      parent=run["id"])
    counts = {"total": len(items), "passed": 0, "failed": 0, "errored": 0}
    per = {cid: {"testing_criteria": cid, "passed": 0, "failed": 0} for cid in ev["_criteria_ids"]}
    for item in items:
        key = "errored" if item["_errored"] else "passed" if item["status"] == "pass" else "failed"
        counts[key] += 1
        for cid, res in zip(ev["_criteria_ids"], item["results"]):
            per[cid]["passed" if res["passed"] else "failed"] += 1
    per_model = [{"model_name": m, "invocation_count": u["invocation_count"], "prompt_tokens": u["prompt_tokens"],
                  "completion_tokens": u["completion_tokens"], "total_tokens": u["total_tokens"], "cached_tokens": 0}
                 for m, u in usage.per_model.items()]
    return {"status": "completed", "result_counts": counts, "per_testing_criteria_results": list(per.values()),
            "per_model_usage": per_model}


def _row(run: dict, ev: dict, index: int, row: dict, ctx: graders.Context, usage: result.Usage) -> dict:
    source = run["data_source"]
    if source["type"] == "completions":
        sample = _generate(source, row["item"], ctx, usage)
    else:
        sample = _given(row.get("sample") or {})
    results, errored = [], sample["error"] is not None
    if not errored:
        scope_sample = {"output_text": sample["output"][0]["content"] if sample["output"] else "",
                        "output_json": (row.get("sample") or {}).get("output_json"),
                        "output_tools": (row.get("sample") or {}).get("output_tools"),
                        "choices": (row.get("sample") or {}).get("choices")}
        for criterion in ev["testing_criteria"]:
            res = graders.run(criterion, scope_sample, row["item"], ctx)
            usage.merge({m: dict(u, invocation_count=1) for m, u in res["model_grader_token_usage_per_model"].items()})
            failed = result.has_error(res)
            errored = errored or failed
            results.append({"name": criterion["name"], "type": criterion["type"], "score": res["reward"],
                            "passed": not failed and evals.passed(criterion, res["reward"]), "sample": None,
                            "metadata": res["metadata"]})
    else:
        results = [{"name": c["name"], "type": c["type"], "score": 0.0, "passed": False, "sample": None}
                   for c in ev["testing_criteria"]]
    item = {"id": new_id("outputitem_"), "object": "eval.run.output_item", "created_at": int(time.time()),
            "eval_id": run["eval_id"], "run_id": run["id"], "datasource_item_id": index,
            "datasource_item": row["item"], "results": results, "sample": sample,
            "status": "pass" if results and all(r["passed"] for r in results) else "fail", "_errored": errored}
    return item


def _given(sample: dict) -> dict:
    """A jsonl row's own sample as an output item's `sample`."""
    text = sample.get("output_text")
    if text is None and sample.get("choices"):
        text = ((sample["choices"][0] or {}).get("message") or {}).get("content")
    return {"input": [], "output": [{"role": "assistant", "content": text or ""}], "finish_reason": "stop",
            "model": sample.get("model", ""), "usage": _usage(0, 0), "error": None, "temperature": None,
            "max_completion_tokens": None, "top_p": None, "seed": None}


def _generate(source: dict, item: dict, ctx: graders.Context, usage: result.Usage) -> dict:
    params = source.get("sampling_params") or {}
    max_tokens = params.get("max_completion_tokens") or params.get("max_completions_tokens") or DEFAULT_MAX_TOKENS
    out = {"input": [], "output": [], "finish_reason": None, "model": source["model"], "usage": _usage(0, 0),
           "error": None, "temperature": params.get("temperature", 1.0), "max_completion_tokens": max_tokens,
           "top_p": params.get("top_p", 1.0), "seed": params.get("seed")}
    try:
        messages = _messages(source["input_messages"], item)
        out["input"] = messages
        if ctx.sampler is None:
            raise graders.SamplerError("no model can be sampled here")
        answer = ctx.sampler.sample(source["model"], messages, {
            "temperature": out["temperature"], "top_p": out["top_p"], "seed": out["seed"], "max_tokens": max_tokens})
    except template.TemplateError as exc:
        out["error"] = {"code": "invalid_variable", "message": str(exc)}
        return out
    except graders.SamplerError as exc:
        out["error"] = {"code": "sampling_failed", "message": str(exc)}
        return out
    usage.add(answer.model, answer.prompt_tokens, answer.completion_tokens)
    out.update(output=[{"role": "assistant", "content": answer.text}], finish_reason=answer.finish_reason,
               usage=_usage(answer.prompt_tokens, answer.completion_tokens))
    return out


def _messages(spec: dict, item: dict) -> list[dict]:
    scope = {"item": item, "sample": {}}
    if spec["type"] == "item_reference":
        messages = template.lookup(spec["item_reference"], scope)
        if not isinstance(messages, list):
            raise template.TemplateError(f"{spec['item_reference']} is not a list of messages")
        return [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in messages
                if isinstance(m, dict)]
    return [{"role": "system" if m["role"] == "developer" else m["role"],
             "content": template.render(m["content"], scope)} for m in spec["template"]]


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cached_tokens": 0}
