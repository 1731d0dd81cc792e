"""`tailor serve` stopped with SIGTERM (how systemd, Docker and Kubernetes stop a service): the
requests in flight finish, one that would outlast --shutdown-timeout is cut there, and the process
exits 0 in time. A real `tailor serve` process on a tiny model, its decode steps slowed so the
requests are still running when the signal lands, on any machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from infer_kit import save_lively
from servekit import free_port

KEY = "sk-shutdown-test-key"
PROMPT = "The quick brown fox"
STEP_S = 0.05  # each decode step's added delay: 30 tokens take 1.5 s, 900 take 45 s
TIMEOUT_S = 4.0
SRC = Path(__file__).resolve().parents[1] / "src"

# `tailor serve` with every engine's decode step slowed down by STEP_S
DRIVER = textwrap.dedent(f"""
    import sys, time
    from tailor.infer.engine import Engine
    real = Engine._forward
    def slow(self, batch):
        time.sleep({STEP_S})
        return real(self, batch)
    Engine._forward = slow
    from tailor.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def served(tmp_path):
    model = save_lively(tmp_path / "tiny")
    port = free_port()
    env = {**os.environ, "TAILOR_HOME": str(tmp_path / "home"), "PYTHONPATH": str(SRC)}
    env.pop("TAILOR_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "serve", str(model), "--name", "tiny", "--port", str(port),
                             "--api-key", KEY, "--dtype", "float32",
                             "--shutdown-timeout", str(TIMEOUT_S), "--state", str(tmp_path / "state")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "tailor serve did not start"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Stream(threading.Thread):
    """A streamed completion read on its own thread: its chunks, and whether it ended cleanly."""

    def __init__(self, url: str, max_tokens: int):
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.chunks: list[dict] = []
        self.first = threading.Event()
        self.done = False
        self.error: Exception | None = None

    def run(self):
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": self.max_tokens, "temperature": 0, "stream": True}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        self.chunks.append(json.loads(line[6:]))
                        self.first.set()
        except (httpx.HTTPError, AssertionError) as exc:  # a request cut at the shutdown timeout may end mid-stream
            self.error = exc
        finally:
            self.first.set()

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["text"] for c in self.chunks if c["choices"])

    @property
    def finish_reason(self) -> str | None:
        return next((c["choices"][0]["finish_reason"] for c in self.chunks[::-1] if c["choices"]), None)


def test_sigterm_drains_requests_in_flight_then_exits_0_within_the_timeout(served):
    url, proc = served
    whole = httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                       json={"model": "tiny", "prompt": PROMPT, "max_tokens": 30, "temperature": 0}).json()
    assert whole["choices"][0]["finish_reason"] == "length"  # it runs all 30 steps (~1.5 s)

    endless = Stream(url, max_tokens=900)  # ~45 s: longer than the shutdown timeout
    endless.start()
    assert endless.first.wait(60) and endless.chunks, endless.error
    short = Stream(url, max_tokens=30)
    short.start()
    assert short.first.wait(60) and short.chunks, short.error
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    short.join(60)
    assert short.done and short.error is None
    assert short.text == whole["choices"][0]["text"] and short.finish_reason == "length", "it finished its work"
    assert proc.wait(TIMEOUT_S + 15) == 0
    took = time.monotonic() - signalled
    assert took < TIMEOUT_S + 10, f"exited {took:.1f} s after SIGTERM"
    endless.join(10)
    assert not endless.is_alive()
    cut = len(endless.chunks)
    assert 0 < cut < 900 and endless.error is None, "cut at the timeout, yet a whole stream"
    assert endless.finish_reason == "stop" and endless.done, "its last chunk says stop, then [DONE]"
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
