"""Serving under load: `tailor serve` and llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`, the `llama-cpp-python[server]` extra) on the same GGUF file,
streaming chat with 1, 4, 8 and 16 concurrent clients (the official openai SDK).

Both servers run at once, idle while the other is measured, so they alternate per client count
(tailor 1, llama.cpp 1, tailor 4, ...): a drift in the machine's speed hits both alike. Each
client sends --requests chats in turn. Per server and client count: total completion tokens/s
(all clients' tokens over the wall time; tokens counted by re-tokenising each reply with the
model's tokenizer, the same way for both, since llama.cpp's stream carries no usage) and time
to first token, p50 and p95 over every request.

llama.cpp's server gets its best settings for this: both cores for decoding and prompts
(--n_threads 2, its default is half the cores) and --interrupt_requests False (by default a new
request cuts off the one streaming, which would end most replies under concurrency). It serves
one request at a time (one context, a lock); tailor batches continuously.
Prints one JSON line: {"gguf": ..., "servers": {"tailor": {"rounds": [{"1": {...}}, ...]}, ...}}.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import free_port, stop_server

HERE = Path(__file__).resolve().parent


def gguf_file(model: str, quant: str) -> Path:
    """The model exported by tailor at `quant` (bench/.work, removed by bench/run.py at its start)."""
    from tailor.export.gguf import export_gguf

    path = HERE / ".work" / f"llama-cpp-{quant}.gguf"
    if not path.is_file():
        export_gguf(model, path, quant=quant)
    return path


def _drop_conversion(gguf: Path) -> None:
    """tailor serve converted this run's GGUF into $TAILOR_HOME/models; the next run exports a new
    file (a new cache key), so this one's conversion would only fill the disk."""
    import shutil

    from tailor import models

    shutil.rmtree(models._gguf_cache_dir(gguf), ignore_errors=True)


def start(kind: str, gguf: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "tailor":
        cmd = [str(Path(sys.executable).parent / "tailor"), "serve", str(gguf), "--name", "m", "--port", str(port)]
        health = "/health"
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
               "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--n_ctx", "2048", "--interrupt_requests", "False",
               "--verbose", "False"]
        health = "/v1/models"
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # a first load converts the GGUF and measures tailor's decode precision
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2)
            return server, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise SystemExit(f"{kind} server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)


def load(base_url: str, clients: int, requests: int, max_tokens: int, count) -> dict:
    """`clients` concurrent clients, `requests` streamed chats each: tokens/s and TTFT."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)

    def one(i: int) -> list[tuple[float, int]]:
        done = []
        for j in range(requests):
            t = time.perf_counter()
            first, text = None, []
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Tell me story number {i}-{j} about a ship."}],
                max_tokens=max_tokens, temperature=0.8, seed=i * 100 + j, stream=True)
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    first = first if first is not None else time.perf_counter() - t
                    text.append(piece)
            done.append((first if first is not None else float("nan"), count("".join(text))))
        return done

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for per_client in pool.map(one, range(clients)) for r in per_client]
    wall = time.perf_counter() - t
    ttfts = sorted(r[0] for r in results if r[0] == r[0])
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "tokens": sum(r[1] for r in results),
            "requests": len(results), "ttft_p50_s": _pct(ttfts, 50), "ttft_p95_s": _pct(ttfts, 95)}


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the model folder tailor exports the GGUF from")
    ap.add_argument("--quant", default="f16", choices=["f16", "q8_0"])
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", default="tailor,llama-cpp")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    gguf = gguf_file(a.model, a.quant)
    tok = AutoTokenizer.from_pretrained(a.model)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    kinds = a.servers.split(",")
    running = {}
    try:
        for kind in kinds:
            running[kind] = start(kind, gguf, a.threads)
            load(running[kind][1], 1, 1, a.max_tokens, count)  # warm-up
        rounds = {kind: [] for kind in kinds}
        for _ in range(a.rounds):
            got = {kind: {} for kind in kinds}
            for n in [int(c) for c in a.clients.split(",")]:
                for kind in kinds:
                    got[kind][str(n)] = r = load(running[kind][1], n, a.requests, a.max_tokens, count)
                    print(f"  {kind}, {n} clients: {r['tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_s']:.2f} s "
                          f"p95 {r['ttft_p95_s']:.2f} s", file=sys.stderr, flush=True)
            for kind in kinds:
                rounds[kind].append(got[kind])
    finally:
        for server, _ in running.values():
            stop_server(server, 30)
        _drop_conversion(gguf)
    print(json.dumps({"gguf": a.quant, "threads": a.threads, "max_tokens": a.max_tokens, "requests": a.requests,
                      "servers": {k: {"rounds": v} for k, v in rounds.items()}}))


if __name__ == "__main__":
    main()
