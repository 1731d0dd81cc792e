"""The fine-tuning service under a training job: chat latency idle versus while a job trains, and
the time from job create to the first token served by the fine-tuned model.

A real `tailor serve` process (as a user runs it), driven by the official openai SDK:
1. idle: --requests short greedy streaming chats, one at a time; time to first token and total;
2. busy: the same chats while a job trains on examples/pirate.jsonl (after its first step, so
   the chats overlap training, not model loading); that job is then cancelled;
3. create -> first token: a second job (max_steps --steps) from create until its `ft:` model
   streams its first token, polling the job every 0.2 s as a client would.
Prints a table, then one JSON line.

    .venv/bin/python bench/service_latency.py [--model default] [--steps 10] [--train-threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port, stop_server

PIRATE = Path(__file__).resolve().parent.parent / "examples" / "pirate.jsonl"
QUESTIONS = ["How many legs does a goat have?", "What is the capital of France?", "Name a colour of the sky.",
             "What is 2 plus 3?", "Say hello in one word."]


def start_server(a, state: Path, port: int) -> subprocess.Popen:
    tailor = str(Path(sys.executable).parent / "tailor")
    cmd = [tailor, "serve", a.model, "--name", "base", "--port", str(port), "--state", str(state),
           "--api-key", "sk-bench", "--dtype", a.dtype]
    if a.train_threads:
        cmd += ["--train-threads", str(a.train_threads)]
    log = (state.parent / "serve.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {(state.parent / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)


def chat(client, model: str, question: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to first token, seconds to the end) of one greedy streaming reply."""
    t = time.perf_counter()
    first = None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            max_tokens=max_tokens, temperature=0, stream=True)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t
    return (first if first is not None else time.perf_counter() - t), time.perf_counter() - t


def latencies(client, model: str, n: int, max_tokens: int) -> dict:
    runs = [chat(client, model, QUESTIONS[i % len(QUESTIONS)], max_tokens) for i in range(n)]
    return {"ttft_s": statistics.median(r[0] for r in runs), "total_s": statistics.median(r[1] for r in runs),
            "ttft_max_s": max(r[0] for r in runs), "total_max_s": max(r[1] for r in runs)}


def wait(client, job_id: str, until, timeout: float = 3600, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        if job.status in ("failed", "cancelled"):
            raise SystemExit(f"job {job_id} {job.status}: {job.error}")
        time.sleep(poll)
    raise SystemExit(f"job {job_id} did not get there in {timeout:.0f}s")


def trained_a_step(client, job_id: str) -> bool:
    return any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=5).data)


def measure(a, client) -> dict:
    chat(client, "base", "Hi", 4)  # warm-up
    idle = latencies(client, "base", a.requests, a.max_tokens)
    f = client.files.create(file=PIRATE.open("rb"), purpose="fine-tune")
    busy_job = client.fine_tuning.jobs.create(model="base", training_file=f.id, suffix="busy",
                                              extra_body={"tailor": {"max_steps": 1000, "eval_samples": 0}})
    wait(client, busy_job.id, lambda j: j.status == "running" and trained_a_step(client, j.id), poll=0.5)
    busy = latencies(client, "base", a.requests, a.max_tokens)
    still = client.fine_tuning.jobs.retrieve(busy_job.id).status == "running"  # trained the whole time
    client.fine_tuning.jobs.cancel(busy_job.id)
    wait(client, busy_job.id, lambda j: j.status == "cancelled")

    t = time.perf_counter()
    job = client.fine_tuning.jobs.create(model="base", training_file=f.id, suffix="pirate",
                                         extra_body={"tailor": {"max_steps": a.steps, "eval_samples": 0}})
    job = wait(client, job.id, lambda j: j.status == "succeeded")
    first, _ = chat(client, job.fine_tuned_model, QUESTIONS[0], a.max_tokens)
    to_first_token = time.perf_counter() - t
    reply = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=a.max_tokens,
                                           messages=[{"role": "user", "content": QUESTIONS[0]}])
    return {"idle": idle, "busy": busy, "busy_job_still_running": still, "create_to_first_token_s": to_first_token,
            "job_s": job.finished_at - job.created_at, "steps": a.steps, "reply": reply.choices[0].message.content}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default", help="a model reference tailor serves (default: SmolLM2-135M)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=10, help="max_steps of the timed job")
    ap.add_argument("--requests", type=int, default=5, help="chats per phase (medians reported)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--train-threads", type=int, default=None, help="passed to tailor serve (default: its own)")
    a = ap.parse_args()
    import openai

    with tempfile.TemporaryDirectory(prefix="tailor-bench-service-") as tmp:
        port = free_port()
        server = start_server(a, Path(tmp) / "state", port)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0,
                                   timeout=600)
            r = measure(a, client)
        finally:
            stop_server(server, 60)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    r.update(model=a.model, cores=cores, train_threads=a.train_threads or max(1, cores - 1),
             ttft_ratio=r["busy"]["ttft_s"] / r["idle"]["ttft_s"],
             total_ratio=r["busy"]["total_s"] / r["idle"]["total_s"])
    print(table(r), file=sys.stderr)
    print(json.dumps(r))


def table(r: dict) -> str:
    i, b = r["idle"], r["busy"]
    return "\n".join([
        f"model {r['model']}, {r['cores']} cores, training threads {r['train_threads']}",
        "| chat (greedy, median) | idle | while a job trains | ratio |", "|---|---|---|---|",
        f"| time to first token | {i['ttft_s'] * 1000:.0f} ms | {b['ttft_s'] * 1000:.0f} ms | {r['ttft_ratio']:.2f}x |",
        f"| whole reply | {i['total_s'] * 1000:.0f} ms | {b['total_s'] * 1000:.0f} ms | {r['total_ratio']:.2f}x |",
        f"job create -> first token of its ft: model ({r['steps']} steps, pirate.jsonl): "
        f"{r['create_to_first_token_s']:.1f} s (the job itself: {r['job_s']} s)",
        f"the fine-tuned model says: {r['reply']!r}"])


if __name__ == "__main__":
    main()
