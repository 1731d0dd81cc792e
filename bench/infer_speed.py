"""tailor's engine against HF `model.generate`, in one process on one model and dtype:
batch-1 decode tokens/s (64 new tokens after a 50-token prompt, greedy), then the HTTP
server's throughput with 1 and with 8 concurrent clients (openai SDK, streamed off).

    .venv/bin/python bench/infer_speed.py [--model default] [--dtype auto] [--reps 3]

Prints one JSON line per measurement.
"""

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def batch1(model_ref: str, dtype: str, reps: int, new: int = 64, prompt_len: int = 50) -> None:
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    from tailor import models
    from tailor.infer.loading import load_hf_model

    loaded = load_engine(model_ref, dtype=dtype, max_batch=1)

    hf = load_hf_model(models.local_folder(model_ref), dtype)
    device = next(hf.parameters()).device
    ids = torch.randint(100, 40000, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    params = SamplingParams(max_new_tokens=new, temperature=0, stop_token_ids=[])
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, attention_mask=torch.ones_like(ids),
              pad_token_id=0)

    def ours():
        t = time.perf_counter()
        n = sum(1 for e in loaded.engine.generate(ids[0].tolist(), params) if e.token is not None)
        _sync(device)
        return n / (time.perf_counter() - t)

    def theirs():
        with torch.inference_mode():
            t = time.perf_counter()
            out = hf.generate(ids, **kw)
            _sync(device)
        return (out.shape[1] - prompt_len) / (time.perf_counter() - t)

    ours(), theirs()  # warm-up
    # interleaved, so load from other processes on the machine hits both sides alike
    runs = [(ours(), theirs()) for _ in range(reps)]
    mine, hfs = [r[0] for r in runs], [r[1] for r in runs]
    print(json.dumps({"what": "batch1_decode", "device": str(device), "dtype": str(hf.dtype),
                      "threads": torch.get_num_threads(), "engine_tok_s": round(max(mine), 1),
                      "hf_generate_tok_s": round(max(hfs), 1), "speedup": round(max(mine) / max(hfs), 2),
                      "median_speedup": round(statistics.median(a / b for a, b in runs), 2),
                      "engine_runs": [round(x, 1) for x in mine], "hf_runs": [round(x, 1) for x in hfs]}))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def server(model_ref: str, dtype: str, clients: list[int], requests_per_client: int = 3) -> None:
    import openai
    import uvicorn

    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    reg = Registry.load([model_ref], ["m"], dtype=dtype, max_batch=16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(reg), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

    def one(i):
        made = 0
        for j in range(requests_per_client):
            r = client.completions.create(model="m", prompt=f"Story {i}-{j}: once upon a time", max_tokens=64,
                                          temperature=0.8, seed=i * 100 + j)
            made += r.usage.completion_tokens
        return made

    one(0)  # warm-up
    for n in clients:
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            tokens = sum(pool.map(one, range(n)))
        secs = time.perf_counter() - t
        print(json.dumps({"what": "server_throughput", "clients": n, "completion_tokens": tokens,
                          "seconds": round(secs, 2), "tok_s": round(tokens / secs, 1)}), flush=True)
    srv.should_exit = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-server", action="store_true")
    a = ap.parse_args()
    batch1(a.model, a.dtype, a.reps)
    if not a.skip_server:
        server(a.model, a.dtype, [1, 8])


if __name__ == "__main__":
    main()
