"""Stopping a run with a signal: Ctrl-C (SIGINT) and SIGTERM (cluster preemption, the jobs service)
both finish the step, save a checkpoint, print the resume command and exit non-zero (130 and 143,
128 + the signal's number, as a shell reports a process killed by it)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from trainkit import write_chat_jsonl

from tailor.train import TrainConfig, train

FLAGS = dict(epochs=2, batch_size=5, lr=1e-2, save_every=4, eval_every=3, eval_samples=1, sample_max_tokens=4,
             lora_dropout=0.2)


def _argv(tiny_model_dir, data, out):
    argv = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out)]
    for key, value in FLAGS.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    data = write_chat_jsonl(root / "train.jsonl", 31, seed=3)  # 30 train + 1 val: 6 steps per epoch
    reference = train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(root / "reference"), **FLAGS),
                      quiet=True)
    assert reference.step == 12
    return root, data, reference


@pytest.fixture
def no_default_sigterm(monkeypatch):
    """If tailor did not handle SIGTERM, its default action would kill pytest itself: fail instead."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the default handler: tailor did not catch it")

    old = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_exits_non_zero(setup, tiny_model_dir, monkeypatch, capsys, sig, code,
                                                      no_default_sigterm):
    from tailor.cli import main
    from tailor.train.session import Session

    root, data, _ = setup
    out = root / f"in-process-{sig.name}"
    real_log = Session.log_step

    def log_then_signal(self, record):
        real_log(self, record)
        if record["step"] == 2:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(Session, "log_step", log_then_signal)
    assert main(_argv(tiny_model_dir, data, out) + ["--quiet"]) == code
    assert (out / "checkpoint-000002" / "meta.json").is_file()
    assert not (out / "final").exists()
    assert f"tailor train --resume {out}" in capsys.readouterr().err, "printed even with --quiet"
    assert signal.getsignal(signal.SIGTERM) is no_default_sigterm, "the handler from before the run is restored"


def test_sigterm_to_a_real_tailor_train_then_resume_matches(setup, tiny_model_dir):
    """A fresh process running the `tailor` CLI (each step slowed, so the signal lands mid-run on
    any machine) gets SIGTERM; it checkpoints and exits 143; --resume gives the uninterrupted losses."""
    from tailor.cli import main

    root, data, reference = setup
    out = root / "terminated"
    driver = textwrap.dedent("""
        import sys, time
        from tailor.train.session import Session
        real_log = Session.log_step
        def slow_log(self, record):
            real_log(self, record)
            time.sleep(0.5)
        Session.log_step = slow_log
        from tailor.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver, *_argv(tiny_model_dir, data, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    stopped = len(metrics.read_text().splitlines())
    assert 3 <= stopped < 12
    assert (out / f"checkpoint-{stopped:06d}" / "meta.json").is_file(), "a checkpoint at the step it stopped"
    assert f"tailor train --resume {out}" in err

    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    losses = [json.loads(ln)["loss"] for ln in metrics.read_text().splitlines()]
    assert losses == pytest.approx(reference.losses, abs=1e-6, rel=0)
