"""`tailor serve` under load: total completion tokens/s with 1, 4 and 8 concurrent streaming
clients (the official openai SDK), the server in its own process as a user would run it.
--rounds times over the client counts (1, 4, 8, 1, 4, 8, ...), so each ratio has a figure per round.
Prints one JSON line: {"clients": {"1": tok/s, ...} (mean), "rounds": [{"1": tok/s, ...}, ...]}."""

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import free_port, stop_server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    import openai

    port = free_port()
    tailor = str(Path(sys.executable).parent / "tailor")
    server = subprocess.Popen([tailor, "serve", a.model, "--name", "m", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

        def one(i: int) -> int:
            made = 0
            for j in range(a.requests):
                stream = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"Tell me story number {i}-{j} about a ship."}],
                    max_tokens=a.max_tokens, temperature=0.8, seed=i * 100 + j, stream=True,
                    stream_options={"include_usage": True})
                for chunk in stream:
                    if chunk.usage is not None:
                        made += chunk.usage.completion_tokens
            return made

        one(0)  # warm-up
        rounds = []
        for _ in range(a.rounds):
            result = {}
            for n in [int(c) for c in a.clients.split(",")]:
                t = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    tokens = sum(pool.map(one, range(n)))
                result[str(n)] = tokens / (time.perf_counter() - t)
                print(f"  {n} clients: {result[str(n)]:.1f} tok/s", file=sys.stderr, flush=True)
            rounds.append(result)
        mean = {k: sum(r[k] for r in rounds) / len(rounds) for k in rounds[0]}
        print(json.dumps({"tool": "tailor", "clients": mean, "rounds": rounds}))
    finally:
        stop_server(server, 30)


if __name__ == "__main__":
    main()
