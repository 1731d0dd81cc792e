"""Exact resume: a run killed (SIGKILL, mid-checkpoint-write) or interrupted (Ctrl-C) and resumed
gives the losses of an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from trainkit import write_chat_jsonl

from tailor.train import TrainConfig, resume_config, train

TESTS = Path(__file__).parent


def _cfg(tiny_model_dir, data, out, **kw):
    # LoRA with dropout in the compute dtype the machine picks: dropout masks come from the RNG,
    # so this also checks that RNG states are restored.
    base = dict(data=str(data), model=str(tiny_model_dir), out=str(out), epochs=2, batch_size=5, lr=1e-2,
                save_every=2, eval_every=3, eval_samples=1, sample_max_tokens=4, lora_dropout=0.2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_chat_jsonl(root / "train.jsonl", 31, seed=3)  # 30 train + 1 val: 6 steps per epoch
    reference = train(_cfg(tiny_model_dir, data, root / "reference"), quiet=True)
    assert reference.step == 12
    return root, data, reference


def test_sigkill_while_saving_then_resume_matches(setup, tiny_model_dir):
    root, data, reference = setup
    out = root / "killed"
    driver = root / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from tailor.train import checkpoint, TrainConfig, train
        real_save, real_torch_save = checkpoint.save, checkpoint.torch.save

        def save(out_dir, **kw):
            if kw["meta"]["step"] == 8:  # die for real halfway through writing checkpoint 8
                def dying(*a, **k):
                    os.kill(os.getpid(), signal.SIGKILL)
                checkpoint.torch.save = dying
            return real_save(out_dir, **kw)

        checkpoint.save = save
        train(TrainConfig(**json.load(open({str(root / "killed.json")!r}))), quiet=True)
    """))
    (root / "killed.json").write_text(json.dumps(_cfg(tiny_model_dir, data, out).__dict__))
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000004", "checkpoint-000006"]
    assert list(out.glob(".checkpoint-000008.*")), "the half-written checkpoint is left under a temp name"
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == 8, "the killed run had logged past its last checkpoint"

    resumed = train(resume_config(out), quiet=True)
    assert resumed.step == 12 and resumed.final is not None
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-6, rel=0)
    assert resumed.val["val_loss"] == pytest.approx(reference.val["val_loss"], abs=1e-6)
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 13))


def test_ctrl_c_saves_and_resume_matches(setup, tiny_model_dir, monkeypatch, capsys):
    root, data, reference = setup
    out = root / "interrupted"
    from tailor.train.session import Session

    real_log = Session.log_step

    def log_then_interrupt(self, record):
        real_log(self, record)
        if record["step"] == 5:  # mid-epoch, between checkpoints
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Session, "log_step", log_then_interrupt)
    first = train(_cfg(tiny_model_dir, data, out), quiet=False)
    assert first.interrupted and first.step == 5 and first.final is None
    assert (out / "checkpoint-000005" / "meta.json").is_file()
    assert f"tailor train --resume {out}" in capsys.readouterr().err
    monkeypatch.setattr(Session, "log_step", real_log)

    from tailor.cli import main

    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(reference.losses, abs=1e-6, rel=0)


def test_full_fine_tune_resumes_and_extends_exactly(setup, tiny_model_dir):
    """Full method: weights come back from the checkpoint's model folder; extending --max-steps on
    resume continues as if the run had been that long (constant lr, so the schedules agree)."""
    root, data, _ = setup
    kw = dict(method="full", lr=1e-3, schedule="constant", warmup=0, lora_dropout=0.0, eval_every=100)
    whole = train(_cfg(tiny_model_dir, data, root / "full-whole", max_steps=6, **kw), quiet=True)
    train(_cfg(tiny_model_dir, data, root / "full-part", max_steps=4, **kw), quiet=True)
    resumed = train(resume_config(root / "full-part", max_steps=6), quiet=True)
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6, rel=0)


# ---- a resume may not change the plan ------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(setup, tiny_model_dir):
    """A finished 4-step run with checkpoints 2 and 4, for resumes that must be refused."""
    root, data, _ = setup
    out = root / "short"
    train(_cfg(tiny_model_dir, data, out, max_steps=4, eval_every=100), quiet=True)
    val = write_chat_jsonl(root / "val.jsonl", 3, seed=9)
    return out, val


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flag, value, saved, now", [
    ("--batch-size", "4", "5", "4"),
    ("--seed", "7", "42", "7"),
    ("--max-length", "512", "1024", "512"),
    ("--val", "VAL", "None", "VAL"),
    ("--lr", "0.5", "0.01", "0.5"),
    ("--lora-r", "4", "16", "4"),
])
def test_resume_refuses_a_changed_plan(short_run, flag, value, saved, now, capsys):
    from tailor.cli import main

    out, val = short_run
    value, now = (str(val), str(val)) if value == "VAL" else (value, now)
    key = flag[2:].replace("-", "_")
    before = _snapshot(out)
    assert main(["train", "--resume", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{key}: saved {saved}, now {now}" in err
    assert "--out" in err and f"drop {flag}" in err
    assert _snapshot(out) == before, "the run folder was not touched"


def test_resume_names_every_changed_key_at_once(short_run, capsys):
    from tailor.cli import main

    out, _ = short_run
    assert main(["train", "--resume", str(out), "--batch-size", "4", "--grad-accum", "2", "--batching", "pack"]) == 2
    err = capsys.readouterr().err
    assert "batch_size: saved 5, now 4" in err and "grad_accum: saved 1, now 2" in err
    assert "batching: saved group, now pack" in err


def test_resume_refuses_fewer_steps_than_done(short_run, capsys):
    from tailor.cli import main

    out, _ = short_run
    assert main(["train", "--resume", str(out), "--max-steps", "3"]) == 2
    assert "max_steps: 3 is below the 4 steps this run has done" in capsys.readouterr().err


def test_python_resume_without_the_saved_config_is_refused(short_run, tiny_model_dir, setup):
    """TrainConfig(resume=...) alone takes the defaults, not the saved config: refused, not run."""
    from tailor.errors import UsageError

    out, _ = short_run
    _, data, _ = setup
    before = _snapshot(out)
    with pytest.raises(UsageError, match="batch_size: saved 5, now 8"):
        train(TrainConfig(resume=str(out), data=str(data), model=str(tiny_model_dir)), quiet=True)
    assert _snapshot(out) == before


def test_every_config_key_is_classified_for_resume():
    import dataclasses

    from tailor.train.session import RESUME_REFUSES, RESUME_SAFE

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "out"}
    assert not set(RESUME_SAFE) & set(RESUME_REFUSES)
    assert set(RESUME_SAFE) | set(RESUME_REFUSES) == fields


def test_safe_overrides_still_resume_exactly(setup, tiny_model_dir, monkeypatch):
    """Reporting and saving knobs may change on resume: the losses are the uninterrupted run's."""
    root, data, reference = setup
    out = root / "safe"
    from tailor.train.session import Session

    real_log = Session.log_step

    def log_then_interrupt(self, record):
        real_log(self, record)
        if record["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Session, "log_step", log_then_interrupt)
    assert train(_cfg(tiny_model_dir, data, out), quiet=True).interrupted
    monkeypatch.setattr(Session, "log_step", real_log)
    from tailor.cli import main

    assert main(["train", "--resume", str(out), "--quiet", "--eval-every", "4", "--save-every", "5",
                 "--keep-checkpoints", "1", "--sample-max-tokens", "2", "--data", str(data)]) == 0
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(reference.losses, abs=1e-6, rel=0)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000012"]
