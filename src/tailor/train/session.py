"""One training run's state and its side effects (set-up, logging, evaluation, checkpoints,
final outputs), so that `loop.py` holds nothing but the loop."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import yaml

from tailor.errors import TailorError, UsageError
from tailor.train import checkpoint, distributed, memory, objectives, outputs, trackers
from tailor.train.batches import plan_epoch
from tailor.train.config import TrainConfig, env_overrides, global_batch, resolve, to_dict
from tailor.train.loop import Position, TrainResult, epochs_total, peak_rss_mb
from tailor.train.loss import decoder_parts
from tailor.train.progress import Progress
from tailor.train.schedule import make_scheduler


def resume_config(out_dir: str | Path, **overrides) -> TrainConfig:
    """The config saved in `out_dir`'s newest checkpoint, with `overrides`, set to resume there."""
    from tailor import config

    ckpt = _latest_or_error(Path(out_dir))
    saved = checkpoint.read_meta(ckpt)["config"]
    return config.build(TrainConfig, saved, overrides, {"resume": str(out_dir), "out": str(out_dir)})


def _latest_or_error(out_dir: Path) -> Path:
    ckpt = checkpoint.latest(out_dir)
    if ckpt is None:
        raise TailorError(f"--resume {out_dir}: no complete checkpoint there (expected {out_dir}/checkpoint-NNNNNN "
                          "with a meta.json). Start a new run with --out instead.")
    return ckpt


# What a resume may change. A checkpoint's position is (epoch, optimizer steps into it) on the
# saved run's batch plan, with its optimizer state and RNGs: exact resume holds only while the
# plan, the examples, the model and the optimizer's settings are the saved ones.
RESUME_SAFE = (
    # Reporting and bookkeeping: what is logged, evaluated, sampled, kept or pushed, never an update.
    "log_every", "eval_every", "eval_samples", "sample_max_tokens", "save_every", "keep_checkpoints",
    "push_to_hub", "report_to", "run_name", "tracker_project", "tracker_tags", "tracker_entity",
    # The run's length: each epoch's plan depends on the epoch number alone, so the saved position
    # stays valid when a run is extended (never below the steps done, see _length_problems); the
    # lr schedule is stretched over the new length (with `schedule: constant` the extended run
    # equals a run that long from the start).
    "epochs", "max_steps",
    # Execution: the same computation on other hardware or with another speed/memory trade-off (a
    # preempted job may resume elsewhere, where dtype auto picks differently anyway).
    "device", "dtype", "gradient_checkpointing", "compile", "fused",
    # DPO's reference: the same values, cached or recomputed each step (up to rounding).
    "dpo_reference",
    # GRPO: how many validation replies are sampled (reporting), and where a score_model grader's
    # model answers (the same grader, asked through another server).
    "eval_generations", "judge_url",
    # The memory budget plans a new run only: a resume keeps its saved plan (micro-batch, checkpointing).
    "memory_budget_gb",
    # How the processes are launched and share the work: the number of processes that matters is
    # the world size the checkpoint records, which check_resume compares on its own.
    "nproc", "parallel",
    # The training file's path: its content is checked by hash instead, so a moved file is fine.
    "data",
)
RESUME_REFUSES = (
    # The batch plan: which examples make each step, in which order.
    "batch_size", "batch_tokens", "grad_accum", "batching", "max_length", "seed",
    # The examples themselves: their rendering, and the train/validation split.
    "val", "val_split", "val_max", "truncate", "chat_template",
    # What is learned: the objective and its loss.
    "objective", "beta", "dpo_loss", "rpo_alpha",
    # GRPO: the reward, and how replies are sampled and weighed (the sampled replies themselves).
    "grader", "reward", "response_format", "num_generations", "max_completion_tokens", "temperature", "top_p",
    "grpo_loss", "epsilon", "epsilon_high", "num_iterations", "scale_rewards",
    # The model being trained.
    "model", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "dora", "rslora", "qlora",
    # The optimizer and schedule: AdamW's saved state brings back lr and weight_decay over any new
    # value (a change would be silently ignored); the others would leave config.yaml describing
    # a run that did not happen.
    "lr", "weight_decay", "max_grad_norm", "warmup", "schedule", "min_lr_ratio",
)


def check_resume(meta: dict, cfg: TrainConfig, out: Path, world: int = 1) -> None:
    """Refuse a resume whose config would move the checkpoint's position onto another plan: every
    changed key (any key not in RESUME_SAFE, so a new field is refused until classified) with
    its saved and new value, and the fix, in one message."""
    from tailor.config import flag

    saved, now = meta["config"], to_dict(cfg)
    changed = [k for k in now if k in saved and k not in RESUME_SAFE + ("resume", "out") and saved[k] != now[k]]
    lines = [f"{k}: saved {saved[k]}, now {now[k]}" for k in changed] + _length_problems(meta, cfg)
    saved_world = meta.get("world_size", 1)
    if saved_world != world:
        lines.append(f"world_size: saved {saved_world}, now {world} (each step's micro-batches are dealt to the "
                     "processes, so the plan depends on their number)")
    if not lines:
        return
    fix = f"To continue this run exactly, drop {', '.join(flag(k) for k in changed)}. " if changed else ""
    if saved_world != world:
        fix += f"Resume with {saved_world} process(es): --nproc {saved_world}, or torchrun --nproc-per-node. "
    raise UsageError(
        f"--resume {out}: this would not continue the saved run (it is at step {meta['step']}, epoch "
        f"{meta['epoch']:.2f}, on the plan its saved config makes):\n  " + "\n  ".join(lines) + "\n"
        + fix + "To train with the new values, start a new run with --out NEW_DIR instead."
    )


def _length_problems(meta: dict, cfg: TrainConfig) -> list[str]:
    """A resumed run cannot be shorter than what it has already done."""
    if cfg.max_steps is not None and cfg.max_steps < meta["step"]:
        return [f"max_steps: {cfg.max_steps} is below the {meta['step']} steps this run has done"]
    if cfg.max_steps is None and cfg.epochs < meta["epoch"]:
        return [f"epochs: {cfg.epochs} is below the {meta['epoch']:.2f} epochs this run has done"]
    return []


class Session:
    @classmethod
    def open(cls, cfg: TrainConfig, *, quiet: bool = False) -> "Session":
        collector = _Collector()
        with collector.during_setup():
            self = cls._open(cfg, quiet=quiet)
        self._collector = collector
        return self

    @classmethod
    def _open(cls, cfg: TrainConfig, *, quiet: bool) -> Session:
        self = cls()
        self.t_start = time.perf_counter()
        self.rank, self.world = distributed.rank(), distributed.world()
        self.is_main = self.rank == 0
        quiet = quiet or not self.is_main  # one voice: rank 0's
        ckpt = _latest_or_error(Path(cfg.resume)) if cfg.resume else None
        if ckpt is not None:
            cfg = dataclasses.replace(cfg, out=cfg.resume)
        self.cfg = cfg = resolve(cfg)
        if ckpt is not None:  # before anything loads or is written
            check_resume(checkpoint.read_meta(ckpt), cfg, Path(cfg.resume), self.world)
        self.out = Path(cfg.out)
        self.quiet = quiet
        self._say = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
        self._say("tailor train: resolved config\n" + _indent(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
        self._say(f"global batch: {global_batch(cfg, self.world)}")
        for name, (value, why) in env_overrides().items():
            self._say(f"note: {why}: {name} is {value} for this run (recorded in config.yaml)")
        self._load(ckpt)
        self._plans = lru_cache(maxsize=4)(self._plan)
        n_epochs_needed = int(cfg.epochs) + 1
        self.total_steps = cfg.max_steps or epochs_total([len(self.plan(e)) for e in range(n_epochs_needed)], cfg.epochs)
        self.eval_every = cfg.eval_every or max(1, self.total_steps // 4)
        self.save_every = cfg.save_every or self.eval_every
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self._restore(ckpt)
        self.progress = Progress(self.total_steps, self.position.step, quiet=quiet)
        return self

    def _load(self, ckpt):
        from tailor import models
        from tailor.train.setup import load_data, load_model, precision

        cfg = self.cfg
        self.tokenizer = models.load_tokenizer(cfg.model)
        self.data = load_data(cfg, self.tokenizer)  # a bad dataset stops here, before any weights load
        for w in self.data.prepared.warnings:
            self._say(f"warning: {w}")
        self._say(f"data: {len(self.data.train)} training {self.data.items_called}; validation: "
                  f"{self.data.val_source}")
        self.precision = precision(cfg)
        for note in self.precision.notes:
            self._say(f"note: {note}")
        if ckpt is None:  # shrink the micro-batch / checkpoint to fit; a resume keeps its saved plan
            self.cfg = cfg = memory.fit(cfg, self.precision, self._say)
        torch.manual_seed(cfg.seed)
        self.model, self.base = load_model(cfg, self.tokenizer, self.precision, ckpt)
        fsdp = cfg.parallel == "fsdp" and self.world > 1
        # compile traces the HF body; so does FSDP, whose weights are gathered per layer on each forward
        self.parts = decoder_parts(self.model, fused=cfg.fused and not cfg.compile and not fsdp)
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        self.objective = objectives.make(self, resumed=ckpt is not None)  # DPO's reference pass: before sharding
        if fsdp:
            self.parts = (distributed.shard(self.model, self.parts[0], self.precision.compute), self.parts[1])
            self._say(f"parallel: fsdp (FSDP2) over {self.world} processes; the Hugging Face body runs, "
                      "not the fused one")
        if cfg.compile:
            self.parts = (torch.compile(self.parts[0], dynamic=True), self.parts[1])
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self._say(f"model: {self.base.ref} ({cfg.method}, {cfg.objective}, {trainable:,} trainable parameters, "
                  f"compute {str(self.precision.compute).replace('torch.', '')} on {self.precision.device})")

    def _restore(self, ckpt):
        self.position = Position()
        if ckpt is None:
            if self.is_main:
                note = f"global batch: {global_batch(self.cfg, self.world)}"
                outputs.save_config(self.out, to_dict(self.cfg), note=note)
            self._open_logs(rewind_to=None)
            self.last_val, self.last_saved, self.last_eval = {}, -1, -1
            return
        meta = checkpoint.read_meta(ckpt)
        if meta["data_fingerprint"] != self.data.fingerprint:
            raise TailorError(f"--resume {self.out}: {self.cfg.data} is not the file this run was trained on "
                              "(its content changed); exact resume needs the same data.")
        checkpoint.load_state(ckpt, self.optimizer, self.scheduler, rank=self.rank, scaler=self.precision.scaler,
                              model=self.model)
        self.position = Position(**meta["position"])
        if hasattr(self.objective, "restore"):
            self.objective.restore(checkpoint.objective_state(ckpt, self.rank), self.plan)
        self._open_logs(rewind_to=self.position.step)
        self.last_val, self.last_saved, self.last_eval = meta.get("val", {}), self.position.step, -1
        self._say(f"resumed from {ckpt} at step {self.position.step} (epoch {self.position.epoch}, "
                  f"{self.position.index} steps into it)")

    def _open_logs(self, rewind_to: int | None) -> None:
        """metrics.jsonl and eval.jsonl (rewound to a resumed checkpoint's step), each record also
        sent to the --report-to trackers; only rank 0 writes them."""
        if not self.is_main:
            self.metrics = self.evals = outputs.Discard()
            self.trackers = trackers.Trackers()
            return
        self.trackers = trackers.start(self.cfg, self.out, rewind_to)
        self.metrics = trackers.Reported(outputs.JsonLines(self.out / "metrics.jsonl", rewind_to=rewind_to),
                                         self.trackers, "train")
        self.evals = trackers.Reported(outputs.JsonLines(self.out / "eval.jsonl", rewind_to=rewind_to),
                                       self.trackers, "eval")

    def plan(self, epoch: int):
        return self._plans(epoch)

    def _plan(self, epoch: int):
        c = self.cfg
        # the global plan: each step has every rank's micro-batches (dealt by distributed.share)
        steps = plan_epoch(self.data.lengths, epoch, seed=c.seed, batch_size=c.batch_size, batch_tokens=c.batch_tokens,
                           grad_accum=c.grad_accum * self.world, batching=c.batching, max_length=c.max_length)
        repeat = getattr(self.objective, "repeat", 1)  # GRPO: each step's replies trained on this many times
        return [s for s in steps for _ in range(repeat)] if repeat > 1 else steps

    # ---- side effects the loop calls -------------------------------------------------------

    def log_step(self, record: dict) -> None:
        """Every rank calls it with the same (all-reduced) record; rank 0 writes it."""
        self.metrics.write(record)
        self.progress.step(record)

    def evaluate(self) -> dict:
        """Rank 0 evaluates while the other ranks wait at a barrier."""
        self.last_eval = self.position.step
        with distributed.whole(self.model, compute=True) as (model, _):  # under FSDP: rank 0 gets a whole copy
            val = self._evaluate(model) if self.is_main else {}
        distributed.barrier()
        return val

    def _evaluate(self, model) -> dict:
        from tailor.train.evaluate import sample_answers

        if not self.data.val:
            return {}
        val = self.objective.validate(model)
        samples = val.pop("samples", None) or (sample_answers(model, self.tokenizer, self.data.samples, self.precision,
                                                              self.cfg.sample_max_tokens) if self.data.samples else [])
        self.last_val, self.last_samples = val, samples
        self.evals.write({"step": self.position.step, **val, "samples": samples})
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
        self.progress.say(f"eval step {self.position.step}: {shown}")
        for smp in samples:
            reward = f"  (reward {smp['reward']:.3f})" if "reward" in smp else ""
            self.progress.say(f"  prompt:    {_one_line(smp['prompt'])}\n  reference: {_one_line(smp['reference'])}\n"
                              f"  model:     {_one_line(smp['answer'])}{reward}")
        return val

    def save_checkpoint(self) -> Path:
        """Every rank calls it (RNG states are gathered); rank 0 writes; the others wait."""
        rank_rngs = distributed.gather(checkpoint.rng_state())
        state = self.objective.state() if hasattr(self.objective, "state") else None
        states = distributed.gather(state) or ([state] if state is not None else None)
        path = self.out / f"{checkpoint.PREFIX}{self.position.step:06d}"
        with distributed.whole(self.model, self.optimizer) as (model, optim):  # every rank gathers under FSDP
            if self.is_main:
                self._write_checkpoint(rank_rngs, model, optim, states)
        distributed.barrier()
        self.last_saved = self.position.step
        return path

    def _write_checkpoint(self, rank_rngs, model, optimizer_state, objective_states=None) -> None:
        meta = {"step": self.position.step, "epoch": self.position.epoch + self.position.index / max(1, len(self.plan(self.position.epoch))),
                "position": dataclasses.asdict(self.position), "tokens_seen": self.position.tokens_seen,
                "config": to_dict(self.cfg), "data_fingerprint": self.data.fingerprint, "val": self.last_val,
                "losses": [r["loss"] for r in self.metrics.read()], "base_model": self.base.ref,
                "base_folder": str(self.base.folder), "world_size": self.world}
        checkpoint.save(self.out, model=model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                        optimizer_state=optimizer_state,
                        scheduler=self.scheduler, meta=meta, keep=self.cfg.keep_checkpoints, rank_rngs=rank_rngs,
                        scaler=self.precision.scaler, objective_states=objective_states)

    def interrupted(self, signum: int | None = None) -> TrainResult:
        if self.last_saved != self.position.step:
            self.save_checkpoint()
        text = f"stopped at step {self.position.step}; checkpoint saved. Resume with:\n  tailor train --resume {self.out}"
        if self.quiet and self.is_main:  # the run exits non-zero: even --quiet says how to continue it
            print(text, file=sys.stderr, flush=True)
        else:
            self.progress.say(text)
        return dataclasses.replace(self._result(final=None, interrupted=True), stop_signal=signum)

    def finish(self) -> TrainResult:
        if self.last_eval != self.position.step:
            self.evaluate()
        if self.last_saved != self.position.step:
            self.save_checkpoint()
        final = self.out / "final"
        with distributed.whole(self.model) as (model, _):
            if self.is_main:
                self._write_final(model)
        distributed.barrier()  # final/ is complete before any rank returns it
        return self._result(final=final, interrupted=False)

    def _write_final(self, model) -> None:
        train_log, eval_log = self.metrics.read(), self.evals.read()
        outputs.plot_losses(self.out, train_log, eval_log)
        card = outputs.model_card(cfg=to_dict(self.cfg), base=self.base, data_stats=self._data_stats(),
                                  final=self._final_stats(train_log), method=self.cfg.method)
        # finish() has just saved this step's checkpoint: a full model's weights are linked from it
        saved = self.out / f"{checkpoint.PREFIX}{self.position.step:06d}"
        same = self.last_saved == self.position.step and (saved / "meta.json").is_file()
        linked = saved if self.cfg.method == "full" and same else None
        final = outputs.write_final(self.out, model, self.tokenizer, stop_ids=self.data.prepared.stop_token_ids,
                                    card=card, method=self.cfg.method, weights_from=linked)
        self.trackers.finish(str(final.resolve()))
        self.progress.say(f"done: {final} (metrics {self.out / 'metrics.jsonl'}, curve {self.out / 'loss.png'})")

    def _data_stats(self) -> dict:
        lengths = self.data.lengths
        return {"training file": f"{self.cfg.data} (sha256 {self.data.fingerprint}...)",
                f"training {self.data.items_called}": len(self.data.train), "validation": self.data.val_source,
                "tokens per epoch": int(lengths.sum()), "mean example length": f"{lengths.mean():.1f} tokens",
                "chat template": "saved in the tokenizer (chat_template)"}

    def _final_stats(self, log: list[dict]) -> dict:
        stats = {"optimizer steps": self.position.step, "tokens seen": self.position.tokens_seen}
        if log:
            stats["final train loss"] = f"{log[-1]['loss']:.4f}"
        if log and "reward_mean" in log[-1]:
            stats["final train mean reward"] = f"{log[-1]['reward_mean']:.4f}"
        names = {"val_loss": "final validation loss", "val_accuracy": "final validation token accuracy",
                 "val_reward_mean": "final validation mean reward",
                 "val_rewards_accuracy": "final validation preference accuracy",
                 "val_rewards_margin": "final validation reward margin"}
        for key, name in names.items():
            if key in self.last_val:
                stats[name] = f"{self.last_val[key]:{'.3f' if 'accuracy' in key else '.4f'}}"
        return stats

    def _result(self, *, final, interrupted) -> TrainResult:
        log = self.metrics.read()
        rates = [r["tokens_per_s"] for r in log[1:]] or [r["tokens_per_s"] for r in log]
        return TrainResult(out=self.out, final=final, step=self.position.step, losses=[r["loss"] for r in log],
                           val=self.last_val, interrupted=interrupted,
                           tokens_per_s=sum(rates) / max(len(rates), 1), peak_rss_mb=peak_rss_mb(),
                           samples=getattr(self, "last_samples", []))

    def close(self) -> None:
        if hasattr(getattr(self, "objective", None), "close"):
            self.objective.close()  # GRPO: its grading threads
        if hasattr(self, "trackers"):
            self.trackers.finish(None)  # an interrupted or failed run; after finish() a no-op
        if hasattr(self, "progress"):
            self.progress.close()
        if hasattr(self, "_collector"):
            self._collector.release()


class _Collector:
    """Set-up (importing transformers' model code, loading the model) makes ~0.5M long-lived objects
    and almost no garbage, yet triggers full collections that each walk all of them: 0.1-0.3 s
    apiece on a 2-core CPU, ~0.6 s before the first step and ~1 s more at the end, when the card
    and the loss curve allocate. So set-up runs with the cyclic collector off, and what it made is
    then frozen (gc.freeze: never walked again) until the session closes. A process that froze
    objects of its own keeps them frozen: nothing is frozen or unfrozen for it."""

    def __init__(self):
        self.was_enabled = gc.isenabled()
        self.froze = False

    @contextlib.contextmanager
    def during_setup(self):
        gc.disable()
        try:
            yield
        except BaseException:
            self._restore()
            raise
        if gc.get_freeze_count() == 0:
            gc.freeze()
            self.froze = True
        self._restore()

    def _restore(self) -> None:
        if self.was_enabled:
            gc.enable()

    def release(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False


def _optimizer(model, cfg):
    """AdamW on the trainable weights; no decay on norms and biases (1-D tensors). torch's fused
    kernel where it applies: the same update in one pass per tensor, where the default runs a
    dozen elementwise ops per tensor (SmolLM2's 135M fp32 weights on one core: 75 ms a step
    against 590; the results agree to fp32 rounding, 5e-7)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = fusable(decay + no_decay) or None  # None: torch's own default
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def fusable(params) -> bool:
    """Whether torch's fused AdamW takes these: plain floating tensors on one CPU or CUDA device
    (FSDP's sharded DTensors and other devices take the default loop)."""
    devices = {p.device.type for p in params}
    return (bool(params) and devices <= {"cpu", "cuda"} and len(devices) == 1
            and all(type(p.data) is torch.Tensor and p.is_floating_point() for p in params))


def _indent(text: str) -> str:
    return "".join("  " + ln + "\n" for ln in text.splitlines())


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"
