"""Crash safety: SIGKILL a real `tailor serve` while a job trains; the next `tailor serve` on the
same state resumes the job from its newest checkpoint, and it ends with the per-step losses
of a run never interrupted, every step reported once."""

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from servekit import free_port
from trainkit import write_chat_jsonl
from tiny import save_tiny

KEY = "sk-restart"
JOB = dict(model="tiny", seed=3, hyperparameters={"batch_size": 2, "n_epochs": 1},
           extra_body={"tailor": {"max_steps": 12, "save_every": 3, "eval_every": 100, "dtype": "float32",
                                  "eval_samples": 0, "max_length": 128}})


def _serve(tmp_path, model, log_name):
    port = free_port()
    env = {**os.environ, "TAILOR_HOME": str(tmp_path / "home")}
    log = (tmp_path / log_name).open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tailor.cli", "serve", str(model), "--name", "tiny",
                             "--state", str(tmp_path / "state"), "--port", str(port), "--dtype", "float32",
                             "--api-key", KEY], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, (tmp_path / log_name).read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def _wait(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status}")


def _losses(client, job_id) -> list[tuple[int, float]]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return sorted((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics" and "train_loss" in e.data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(") ")[1][0] != "Z"


def test_sigkill_mid_job_then_restart_resumes_exactly(tmp_path):
    from tailor.service.store import Store

    model = save_tiny(tmp_path / "model")
    data = write_chat_jsonl(tmp_path / "train.jsonl", 12).read_bytes()
    proc, client = _serve(tmp_path, model, "first.log")
    try:
        f = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=f.id, **JOB)
        deadline = time.time() + 180
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
            assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running")
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    trainer = Store(tmp_path / "state").get("jobs", job.id)["_pid"]
    deadline = time.time() + 10
    while _pid_alive(trainer) and time.time() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(trainer)  # the training process died with its server
    assert Store(tmp_path / "state").get("jobs", job.id)["status"] == "running"

    proc, client = _serve(tmp_path, model, "second.log")
    try:
        done = _wait(client, job.id)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert any("resuming the job from its newest checkpoint" in m for m in messages)
        resumed = _losses(client, job.id)
        ckpts = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
        assert len(ckpts) == len(set(ckpts))
        assert [f.id for f in client.files.list(purpose="fine-tune")] == [f.id]

        fresh = client.fine_tuning.jobs.create(training_file=f.id, **JOB)
        assert _wait(client, fresh.id).status == "succeeded"
        straight = _losses(client, fresh.id)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert [s for s, _ in resumed] == list(range(1, 13))  # every step reported exactly once
    assert [s for s, _ in straight] == list(range(1, 13))
    for (step, a), (_, b) in zip(resumed, straight):
        assert a == pytest.approx(b, abs=1e-5), step
