"""Multi-process training on torch.distributed (gloo on CPU, 2 ranks, tiny model, fp32): the
same losses and weights as one process with the same global batch, uneven shares at the end
of an epoch, exact resume after a rank is killed, and a job that ends when one rank fails.

The runs start real processes (torchrun), so they share one tiny model and 7-step runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from trainkit import write_chat_jsonl, write_preference_jsonl

from tailor.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return env


def _keys(tiny_model_dir, data, out, **kw) -> dict:
    # 27 lines: 2 held out for validation, 25 trained, so with a global batch of 4 an epoch is
    # 7 steps and the last one has a single example: one rank gets no share of it.
    # lr 1e-3: another split of a step sums its gradient in another order (differences of 1e-7),
    # and Adam, dividing by sqrt(v), enlarges those in weights whose gradients are tiny; at 1e-2
    # the weights of a correct run differ by 4e-5 after 7 steps.
    base = dict(data=str(data), model=str(tiny_model_dir), out=str(out), epochs=1, batch_size=4, lr=1e-3,
                dtype="float32", lora_dropout=0.0, save_every=3, eval_every=4, eval_samples=1, sample_max_tokens=4,
                schedule="constant", warmup=0)
    base.update(kw)
    return base


def _losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(final: Path) -> dict:
    from safetensors.torch import load_file

    (file,) = [p for p in final.glob("*.safetensors")]
    return load_file(file)


def _assert_same_run(out: Path, reference, *, steps: int = 7) -> None:
    import torch

    losses = _losses(out)
    assert len(losses) == steps
    assert losses == pytest.approx(reference.losses, abs=1e-5, rel=0)
    got, want = _weights(out / "final"), _weights(reference.final)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0, msg=k)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_chat_jsonl(root / "train.jsonl", 27, seed=5)
    return root


@pytest.fixture(scope="module")
def lora_reference(root, tiny_model_dir):
    """One process, batch 4: the run every LoRA distributed run must reproduce."""
    return train(TrainConfig(**_keys(tiny_model_dir, root / "train.jsonl", root / "ref-lora")), quiet=True)


def _tailor(root: Path, name: str, keys: dict, *launch: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `tailor train` (under `launch`); past `timeout`, kill it with its ranks (its own
    process group, so a hung rank is never left behind) and fail."""
    cfg = root / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(keys))
    proc = subprocess.Popen([sys.executable, *launch, "train", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=root, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_driver(root: Path) -> Path:
    """`tailor` under torchrun whose rank 1 is killed with SIGKILL at step 5."""
    driver = root / "kill_rank1.py"
    driver.write_text(textwrap.dedent("""
        import os, signal, sys
        from tailor.train.session import Session
        real_log = Session.log_step

        def dying(self, record):  # every rank logs each step; only rank 0 writes it
            if record["step"] == 5 and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            return real_log(self, record)

        Session.log_step = dying
        from tailor.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    return driver


def _kill_and_resume(root: Path, name: str, keys: dict) -> Path:
    """Run `keys` on 2 ranks with rank 1 SIGKILLed at step 5: the job fails after checkpoint 3
    with no final/; `--resume --nproc 2` then completes it. Returns the run folder."""
    killed = root / name
    proc = _tailor(root, name, {**keys, "out": str(killed)}, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", str(_kill_driver(root)))
    assert proc.returncode != 0
    assert (killed / "checkpoint-000003" / "meta.json").is_file() and not (killed / "final").exists()
    proc = subprocess.run([sys.executable, "-m", "tailor", "train", "--resume", str(killed), "--nproc", "2", "--quiet"],
                          capture_output=True, text=True, timeout=240, env=_env(), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return killed


@pytest.fixture(scope="module")
def ddp_lora(root, tiny_model_dir) -> Path:
    """`tailor train --nproc 2`, LoRA, batch 2 per rank: the run folder (asserted on below, and
    the 2-rank checkpoint the world-size refusal resumes from)."""
    out = root / "ddp-lora"
    proc = _tailor(root, "ddp-lora", _keys(tiny_model_dir, root / "train.jsonl", out, batch_size=2, nproc=2),
                   "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ddp_lora_equals_one_process_and_resumes_after_kill(root, tiny_model_dir, lora_reference, ddp_lora):
    """`tailor train --nproc 2` with batch 2 per rank is the 1-process batch-4 run. Then a run whose
    rank 1 is killed with SIGKILL at step 5 fails, and --resume (from checkpoint 3) continues it
    to the very same losses and weights."""
    out = ddp_lora
    _assert_same_run(out, lora_reference)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["nproc"] == 2
    assert "global batch: 4 examples per optimizer step (batch_size 2 x grad_accum 1 x 2 processes)" in \
        (out / "config.yaml").read_text()
    assert json.loads((out / "checkpoint-000007" / "meta.json").read_text())["world_size"] == 2

    keys = _keys(tiny_model_dir, root / "train.jsonl", root / "killed", batch_size=2)
    _assert_same_run(_kill_and_resume(root, "killed", keys), lora_reference)


FULL = dict(method="full", lr=1e-3, eval_every=100)


@pytest.fixture(scope="module")
def full_reference(root, tiny_model_dir):
    """One process, batch 4, full fine-tuning."""
    return train(TrainConfig(**_keys(tiny_model_dir, root / "train.jsonl", root / "ref-full", **FULL)), quiet=True)


def test_ddp_full_with_torchrun_equals_one_process(root, tiny_model_dir, full_reference):
    """Full fine-tuning launched by plain torchrun (`-m tailor`), 2 ranks x batch 2 = batch 4."""
    out = root / "ddp-full"
    proc = _tailor(root, "ddp-full", _keys(tiny_model_dir, root / "train.jsonl", out, batch_size=2, **FULL),
                   "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(out, full_reference)


def test_fsdp_full_equals_one_process_and_resumes_exactly(root, tiny_model_dir, full_reference):
    """FSDP2 (weights, gradients and Adam state sharded over 2 ranks), grad-accum 2 x batch 1 per
    rank, with an evaluation mid-run: the 1-process batch-4 run's losses and final weights. The
    checkpoints are plain HF folders with the full weights. Then a run stopped after checkpoint
    3 by a SIGKILL of rank 1 resumes (the full state resharded) to the very same run."""
    keys = _keys(tiny_model_dir, root / "train.jsonl", root / "fsdp", batch_size=1, grad_accum=2, nproc=2,
                 parallel="fsdp", **{**FULL, "eval_every": 4})
    proc = _tailor(root, "fsdp", keys, "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(root / "fsdp", full_reference)
    assert _weights(root / "fsdp" / "checkpoint-000006").keys() == _weights(full_reference.final).keys()
    assert json.loads((root / "fsdp" / "eval.jsonl").read_text().splitlines()[0])["step"] == 4

    _assert_same_run(_kill_and_resume(root, "fsdp-killed", {**keys, "nproc": 1}), full_reference)


def test_grad_accum_2_times_2_ranks_times_batch_1_equals_batch_4(root, tiny_model_dir, lora_reference):
    out = root / "ddp-accum"
    proc = _tailor(root, "ddp-accum", _keys(tiny_model_dir, root / "train.jsonl", out, batch_size=1, grad_accum=2,
                                            nproc=2), "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(out, lora_reference)


def test_dpo_on_2_ranks_equals_one_process_and_resumes_after_kill(root, tiny_model_dir):
    """DPO (LoRA, cached reference computed on rank 0 and shared): 2 ranks x 2 pairs is the
    1-process run of 4 pairs, the last step's single pair included; a run whose rank 1 is
    SIGKILLed at step 5 resumes from checkpoint 3 to the same losses and weights."""
    data = write_preference_jsonl(root / "pairs.jsonl", 27, seed=5)
    keys = _keys(tiny_model_dir, data, root / "dpo-ref", objective="dpo", lr=5e-3)
    reference = train(TrainConfig(**keys), quiet=True)
    out = root / "dpo-ddp"
    proc = _tailor(root, "dpo-ddp", {**keys, "out": str(out), "batch_size": 2, "nproc": 2}, "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(out, reference)
    margins = [json.loads(ln)["rewards_margin"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(ln)["rewards_margin"] for ln in (reference.out / "metrics.jsonl").read_text().splitlines()]
    assert margins == pytest.approx(want, abs=1e-6) and margins[-1] > 0
    _assert_same_run(_kill_and_resume(root, "dpo-killed", {**keys, "batch_size": 2}), reference)


def test_an_error_on_one_rank_ends_the_job_with_its_message(root, tiny_model_dir):
    driver = root / "fail_rank1.py"
    driver.write_text(textwrap.dedent("""
        import os, sys
        from tailor.train.session import Session
        real_log = Session.log_step

        def failing(self, record):
            if record["step"] == 2 and os.environ["RANK"] == "1":
                raise RuntimeError("rank 1 broke on purpose")
            return real_log(self, record)

        Session.log_step = failing
        from tailor.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    # 60 epochs: rank 0 alone would train for minutes; the job must end within seconds instead
    keys = _keys(tiny_model_dir, root / "train.jsonl", root / "failing", batch_size=2, epochs=60, eval_every=1000,
                 save_every=1000)
    start = time.monotonic()
    proc = _tailor(root, "failing", keys, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(driver), timeout=120)
    assert proc.returncode != 0
    assert "rank 1 broke on purpose" in proc.stderr
    assert time.monotonic() - start < 90, "the other rank was not stopped"


def test_sigterm_to_one_rank_stops_every_rank_with_a_checkpoint(root, tiny_model_dir, lora_reference):
    """A preemption that reaches rank 1 alone (SIGTERM at step 2, from inside, so it lands mid-run
    on any machine): both ranks finish step 2, save one checkpoint together and exit, though the
    run had 60 epochs to go."""
    driver = root / "term_rank1.py"
    driver.write_text(textwrap.dedent("""
        import os, signal, sys
        from tailor.train.session import Session
        real_log = Session.log_step

        def preempted(self, record):
            if record["step"] == 2 and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGTERM)
            return real_log(self, record)

        Session.log_step = preempted
        from tailor.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    out = root / "terminated"
    keys = _keys(tiny_model_dir, root / "train.jsonl", out, batch_size=2, epochs=60, eval_every=1000,
                 save_every=1000)
    start = time.monotonic()
    proc = _tailor(root, "terminated", keys, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(driver), timeout=120)
    assert time.monotonic() - start < 90, "a rank kept training"
    assert proc.returncode != 0
    # rank 0 never got the signal: it stopped because rank 1 did, and says so (only rank 0 prints)
    assert f"stopped at step 2; checkpoint saved. Resume with:\n  tailor train --resume {out}" in proc.stderr
    # torchrun's report: the first rank out exits 143 (128 + SIGTERM, tailor's own stop); torchrun
    # then sends SIGTERM to the other, already past the checkpoint and leaving, which may show -15
    codes = dict(re.findall(r"rank\s*: (\d+) \(local_rank.*?\n.*?exitcode\s*: (-?\d+)", proc.stderr, re.DOTALL))
    assert set(codes) == {"0", "1"} and "143" in codes.values() and set(codes.values()) <= {"143", "-15"}, codes
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000002"] and not (out / "final").exists()
    meta = json.loads((out / "checkpoint-000002" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 2
    assert meta["losses"] == pytest.approx(lora_reference.losses[:2], abs=1e-5, rel=0)  # both ranks' shares


def test_resume_with_another_world_size_is_refused(ddp_lora, capsys):
    """A checkpoint written by 2 ranks is on a plan of 2 x batch per micro-batch set: 1 process
    would take other steps, so the resume names the difference and the fix."""
    from tailor.cli import main

    out = ddp_lora
    assert main(["train", "--resume", str(out), "--max-steps", "8", "--nproc", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "world_size: saved 2, now 1" in err and "--nproc 2" in err


def test_plan_split_is_the_single_process_plan():
    """Rank shares: every micro-batch of the global step exactly once, dealt round-robin."""
    from tailor.train.distributed import share

    step = [[0, 1], [2, 3], [4, 5], [6]]
    assert share(step, rank=0, world=2) == [[0, 1], [4, 5]]
    assert share(step, rank=1, world=2) == [[2, 3], [6]]
    assert share([[7]], rank=1, world=2) == []
    assert share(step, rank=0, world=1) == step


def test_fsdp_shards_full_fine_tuning_only():
    from tailor.errors import UsageError
    from tailor.train.config import resolve

    assert resolve(TrainConfig(data="x.jsonl", method="full", parallel="fsdp")).parallel == "fsdp"
    with pytest.raises(UsageError, match="parallel: fsdp shards a full fine-tune; .*--method lora.* --parallel ddp"):
        resolve(TrainConfig(data="x.jsonl", method="lora", parallel="fsdp"))
    with pytest.raises(UsageError, match="nproc: must be at least 1"):
        resolve(TrainConfig(data="x.jsonl", nproc=0))


def test_spawned_processes_do_not_inherit_torchrun_variables():
    from tailor.train.distributed import child_env

    env = child_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x",
                     "LOCAL_RANK": "1", "PATH": "/bin", "OMP_NUM_THREADS": "1"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1"}


def test_a_thread_budget_is_divided_over_the_ranks():
    """A service job with --train-threads 4 and nproc 2 runs 2 ranks of 2 threads, not 2 x 4;
    without a budget torchrun's own default (1 per rank) stays."""
    from tailor.train.distributed import child_env

    env = child_env({"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "PATH": "/bin"}, nproc=2)
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PATH": "/bin"}
    assert child_env({"OMP_NUM_THREADS": "3"}, nproc=4) == {"OMP_NUM_THREADS": "1"}
    assert child_env({"PATH": "/bin"}, nproc=2) == {"PATH": "/bin"}


def test_grpo_on_2_ranks_equals_one_process(root, tiny_model_dir, monkeypatch):
    """GRPO, full fine-tuning, 2 ranks x 2 prompts = 4 prompts per step: each rank samples (with
    the seeds one process would use) and grades its share of the replies; the step's loss
    denominators and reward statistics are summed over the ranks. --num-iterations 2 with a
    checkpoint mid-cycle (every rank's kept replies gathered into it) and a KL reference: the
    very losses, rewards, KL and weights of one process."""
    import torch
    from trainkit import write_prompt_jsonl

    write_prompt_jsonl(root / "prompts.jsonl", 18, seed=3)
    (root / "short_reward.py").write_text("def short(sample, item):\n"
                                          "    return 1.0 - min(len(sample['output_text']), 40) / 40\n")
    keys = dict(data=str(root / "prompts.jsonl"), model=str(tiny_model_dir), objective="grpo",
                reward="short_reward:short", method="full", lr=1e-3, batch_size=4, num_generations=3,
                max_completion_tokens=8, max_length=96, max_steps=4, dtype="float32", eval_every=2, save_every=3,
                schedule="constant", warmup=0, beta=0.05, num_iterations=2, eval_samples=1)
    monkeypatch.chdir(root)  # where the reward's module is
    one = train(TrainConfig(**keys, out=str(root / "grpo-one")), quiet=True)
    out = root / "grpo-ddp"
    proc = _tailor(root, "grpo-ddp", {**keys, "batch_size": 2, "nproc": 2, "out": str(out)}, "-m", "tailor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(ln) for ln in (one.out / "metrics.jsonl").read_text().splitlines()]
    assert len(got) == 4 and got[0]["prompts"] == 4
    for a, b in zip(got, want):
        for key in ("loss", "reward_mean", "reward_std", "kl", "clip_fraction", "completion_length", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    evals = [json.loads(ln) for ln in (out / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["val_reward_mean"] == pytest.approx(one.val["val_reward_mean"], abs=1e-6)
    assert any(r["reward_std"] > 0 for r in got)  # a run that learned something, not zeros
    got_w, want_w = _weights(out / "final"), _weights(one.final)
    for k in want_w:  # lr 1e-3, as above: another split of the step sums the gradient in another order
        torch.testing.assert_close(got_w[k], want_w[k], atol=1e-5, rtol=0, msg=k)
