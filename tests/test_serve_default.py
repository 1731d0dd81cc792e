"""`tailor serve` as users run it: the real default model in a subprocess, answered by the
unchanged openai SDK, then stopped with SIGTERM."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


@pytest.mark.integration
def test_default_model_serves_the_openai_sdk():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tailor.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        r = client.chat.completions.create(model="default", temperature=0, max_tokens=40,
                                           messages=[{"role": "user", "content": "What is 2 + 2?"}])
        assert "4" in r.choices[0].message.content
        assert r.usage.completion_tokens > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
