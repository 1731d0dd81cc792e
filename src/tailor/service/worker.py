"""The worker: runs queued jobs, at most `max_jobs` at a time, each in its own process group
running `tailor train` (the one training loop, through the same launcher as the CLI). Projects
take turns: the next job comes from the project with the fewest running jobs (then the one that
waited longest since its last start), first come first served within a project, so one
project's queue never starves another's first job.

The server process stays the only writer of the store: it watches each run's folder
(metrics.jsonl, eval.jsonl, checkpoint-*/) and turns what appears into events and checkpoint
rows, reading each file from where its last read stopped. Every status change is a
compare-and-set, so a cancel or pause that races a start wins. Cancel sends SIGTERM, so the run
stops at a step boundary; a job asked to cancel ends `cancelled` however its process exits. A
process that dies on its own, or a job past the operator's step or time bound, ends `failed`
with a reason that never shows a server path."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tailor.service import jobs, procs, reports
from tailor.service.policy import Policy
from tailor.service.store import Store, new_id

log = logging.getLogger(__name__)
# publish(ref, model_id, owner): serve the folder `ref` as `model_id` (raises when it cannot)
Publisher = Callable[[str, str, str], None]


class _Tail:
    """The new complete lines of a growing JSONL file since the last read: the offset is kept,
    a line still being written waits for the next read, and a file that was replaced (a resumed
    run rewrites it) is read again from its start."""

    def __init__(self, path: Path):
        self.path, self.offset, self.inode = path, 0, None

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.inode, self.offset = st.st_ino, 0
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn line (a crash mid-write); the steps after it still count
        return out


@dataclass
class _Run:
    job_id: str
    project: str
    proc: subprocess.Popen
    folder: Path
    last_step: int = 0
    first_step: int = 0  # the step this process started from (for the finish estimate)
    last_eval: int = 0
    seen: set = field(default_factory=set)
    started: float = field(default_factory=time.time)
    ran_before: float = 0.0  # seconds this job trained in earlier processes (pauses, restarts)
    limit: tuple[str, str] | None = None  # (code, message) once the job passed an operator bound

    def __post_init__(self):
        self.metrics, self.evals = _Tail(self.out / "metrics.jsonl"), _Tail(self.out / "eval.jsonl")

    @property
    def out(self) -> Path:
        return self.folder / "out"

    def seconds(self) -> float:
        return self.ran_before + time.time() - self.started


def default_train_threads(cores: int | None = None) -> int:
    """Every core but one: the one left is the server's, so chat stays responsive while a job
    trains on the CPU (on a GPU the training threads only feed it, and one core is plenty)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


class Worker:
    def __init__(self, store: Store, *, max_jobs: int = 1, publish: Publisher | None = None, poll: float = 0.25,
                 train_threads: int | None = None, policy: Policy | None = None, job_env: tuple[str, ...] = (),
                 stop_timeout: float = 120.0):
        self.store, self.max_jobs, self.publish, self.poll = store, max_jobs, publish, poll
        self.train_threads = train_threads or default_train_threads()
        self.policy = policy or Policy()
        self.job_env = tuple(job_env)
        self.stop_timeout = stop_timeout  # how long a stopping server waits for each job's checkpoint
        self.runs: dict[str, _Run] = {}
        self._last_start: dict[str, float] = {}  # project -> when its last job started (round-robin)
        self.on_end: Callable[[dict], None] | None = None  # told of each job that succeeded, failed or was cancelled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tailor-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; running jobs are interrupted (they checkpoint) and stay `running`, so
        the next start on the same state resumes them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join((timeout or self.stop_timeout) + 5)
            self._thread = None

    def _loop(self) -> None:
        # The training processes are started from this one long-lived thread: PR_SET_PDEATHSIG
        # fires when the *thread* that forked a child exits.
        try:
            self.recover()
        except Exception:
            log.exception("resuming interrupted jobs failed")
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad job must not stop the worker for the others
                log.exception("worker tick failed")
            self._stop.wait(self.poll)
        for run in self.runs.values():
            run.proc.send_signal(signal.SIGTERM)  # each stops after its step, with a checkpoint
        deadline = time.time() + self.stop_timeout
        for run in self.runs.values():
            try:
                run.proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                log.warning("job %s did not stop within %.0f s; killing it", run.job_id, self.stop_timeout)
            procs.kill_group(run.proc.pid)  # whatever is left of its group (torchrun ranks)

    def recover(self) -> None:
        """At start: a job left `running` by a server that died has no process now (any that
        survived, such as torchrun ranks on a system without PDEATHSIG, are killed first). It
        starts again, from its newest checkpoint when it saved one (exact resume)."""
        from tailor.train import checkpoint

        for job in self.store.all("jobs", where={"status": "running"}):
            folder = self.store.root / "jobs" / job["id"]
            if procs.kill_leftovers(folder):
                log.warning("killed processes a previous server left running for %s", job["id"])
            if job.get("_cancel") or job.get("_pause"):
                self._stopped(job, "cancelled" if job.get("_cancel") else "paused")
                continue
            ckpt = checkpoint.latest(folder / "out")
            said = (f"The server restarted; resuming the job from its newest checkpoint ({ckpt.name})" if ckpt
                    else "The server restarted; starting the job again")
            jobs.event(self.store, job, said, level="warn")
            self._launch_or_fail(job, recovering=True)

    def tick(self) -> None:
        for run in list(self.runs.values()):
            try:
                self._watch(run)
            except Exception as exc:  # this run's trouble is its own: end it, go on with the rest
                log.exception("watching %s failed", run.job_id)
                self._abandon(run, exc)
        while len(self.runs) < self.max_jobs:
            job = self.next_job()
            if job is None:
                break
            self._launch_or_fail(job)

    def next_job(self) -> dict | None:
        """The queued job to start next: from the project with the fewest running jobs, then
        the one whose last start is oldest; oldest first within the project."""
        queued = self.store.all("jobs", where={"status": "queued"})
        if not queued:
            return None
        running: dict[str, int] = {}
        for run in self.runs.values():
            running[run.project] = running.get(run.project, 0) + 1
        first: dict[str, dict] = {}
        for job in queued:  # oldest first, so the first seen is the project's next
            first.setdefault(job["_project"], job)
        project = min(first, key=lambda p: (running.get(p, 0), self._last_start.get(p, 0.0), first[p]["created_at"]))
        return first[project]

    def _launch_or_fail(self, job: dict, *, recovering: bool = False) -> None:
        try:
            self._launch(job, recovering=recovering)
        except Exception as exc:  # fail this job, never block the queue behind it
            log.exception("could not start %s", job["id"])
            code = "invalid_training_file" if isinstance(exc, FileNotFoundError) else "server_error"
            self._fail(job, f"The job could not start: {_words(exc)}", code)

    # ---- one run -------------------------------------------------------------------------

    def _launch(self, job: dict, *, recovering: bool = False) -> None:
        """Claim a queued job (compare-and-set: a cancel or pause that got there first wins),
        prepare its folder, and start its process: from its newest checkpoint if it has one
        (after a pause or a crash), else from its config."""
        if not recovering:
            job = self.store.transition("jobs", job["id"], ("queued",), status="running", _pid=None, _signalled=False)
            if job is None:
                return
            jobs.event(self.store, job, "Fine-tuning job started")
        self._last_start[job["_project"]] = time.time()
        folder = self.store.root / "jobs" / job["id"]
        args = self.prepare(job, folder)
        job = self.store.get("jobs", job["id"])
        if job.get("_cancel") or job.get("_pause"):  # asked while the folder was prepared: no process at all
            return self._stopped(job, "cancelled" if job.get("_cancel") else "paused")
        self._start(job, folder, args)

    def prepare(self, job: dict, folder: Path) -> list[str]:
        """The job's folder and the arguments of its `tailor train`: resume from the newest
        checkpoint, or a config naming the job's own copies of its files."""
        from tailor.train import checkpoint

        if checkpoint.latest(folder / "out") is not None:
            return ["--resume", str(folder / "out")]
        folder.mkdir(parents=True, exist_ok=True)
        cfg = dict(job["_train"])
        # The job trains on its own copy: deleting the upload cannot break a running job.
        cfg["data"] = self._copy_file(job["training_file"], folder / "train.jsonl")
        if job.get("validation_file"):
            cfg["val"] = self._copy_file(job["validation_file"], folder / "val.jsonl")
        cfg["out"] = str(folder / "out")
        cfg["model"] = _trainable_base(cfg["model"], folder / "base")
        import yaml

        (folder / "job.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return [str(folder / "job.yaml")]

    def child_env(self, project: str | None = None) -> dict[str, str]:
        """A training process's environment: the safe allowlist (service/procs.py) plus the
        operator's --job-env names, thread pools bounded to --train-threads, and only this
        project's own Hub token, when the operator gave it one."""
        token = (self.policy.push_tokens or {}).get(project) if project else None
        return procs.job_env(self.train_threads, extra=self.job_env, hub_token=token)

    def _start(self, job: dict, folder: Path, args: list[str]) -> None:
        proc = procs.spawn(args, self.child_env(job["_project"]), folder / "train.log")
        self.store.update("jobs", job["id"], _pid=proc.pid)
        # What an earlier process of this job already reported is not reported twice.
        events = [e["data"] for e in self.store.all("events", parent=job["id"]) if e["type"] == "metrics"]
        run = _Run(job["id"], job["_project"], proc, folder, ran_before=job.get("_seconds", 0.0))
        run.last_step = run.first_step = max((d["step"] for d in events if "train_loss" in d), default=0)
        run.last_eval = max((d["step"] for d in events if "train_loss" not in d), default=0)
        run.seen = {Path(c["_path"]).name for c in self.store.all("checkpoints", parent=job["id"])}
        self.runs[job["id"]] = run

    def _copy_file(self, fid: str, target: Path) -> str:
        src = self.store.blob_path("files", fid)
        if src is None:
            raise FileNotFoundError(f"file {fid} was deleted before the job started")
        shutil.copyfile(src, target)
        return str(target)

    def _watch(self, run: _Run) -> None:
        job = self.store.get("jobs", run.job_id)
        if run.limit is None:
            run.limit = self._past_limit(run)
        if (job.get("_cancel") or job.get("_pause") or run.limit) and not job.get("_signalled"):
            run.proc.send_signal(signal.SIGTERM)  # the loop stops at the next step boundary
            job = self.store.update("jobs", run.job_id, _signalled=True)
        self._new_metrics(run, job)
        self._new_checkpoints(run, job)
        rc = run.proc.poll()
        if rc is not None:
            self._new_metrics(run, job)
            self._new_checkpoints(run, job)
            del self.runs[run.job_id]
            procs.kill_group(run.proc.pid)  # nothing of its group outlives the job
            job = self.store.update("jobs", run.job_id, _seconds=run.seconds())
            try:
                self._finish(run, job, rc)
            except Exception as exc:  # e.g. disk full while saving results: failed, never `running`
                log.exception("finishing %s failed", run.job_id)
                self._fail(job, f"The job's results could not be saved: {_words(exc)}", "server_error")

    def _past_limit(self, run: _Run) -> tuple[str, str] | None:
        """The operator's bounds on one job: optimizer steps and wall-clock hours."""
        p = self.policy
        if run.last_step > p.max_job_steps:
            return ("job_step_limit_exceeded", f"The job passed {p.max_job_steps} training steps, the most this server "
                    "allows per job (its operator's --max-job-steps). Use fewer epochs or set max_steps.")
        if run.seconds() > p.max_job_hours * 3600:
            return ("job_time_limit_exceeded", f"The job trained for more than {p.max_job_hours:g} hours, the most "
                    "this server allows per job (its operator's --max-job-hours).")
        return None

    def _abandon(self, run: _Run, exc: Exception) -> None:
        self.runs.pop(run.job_id, None)
        procs.kill_group(run.proc.pid)
        job = self.store.get("jobs", run.job_id)
        if job is not None:
            self._fail(job, f"The server lost track of the job: {_words(exc)}", "server_error")

    def _new_metrics(self, run: _Run, job: dict) -> None:
        total = job["_train"].get("max_steps")  # known up front only when the job sets max_steps
        first = run.last_step
        for r in run.metrics.read():
            if r["step"] <= run.last_step:
                continue
            run.last_step = r["step"]
            data = {"step": r["step"], "train_loss": r["loss"], "total_steps": total,
                    "train_mean_token_accuracy": None, "valid_loss": None, "valid_mean_token_accuracy": None,
                    **{f"train_{k}": r[k] for k in reports.PREFERENCE if k in r},
                    **reports.reinforcement_data(r, "train")}
            words = reports.preference_words(r) + reports.reward_words(r, "train")
            jobs.event(self.store, job, f"Step {r['step']}{f'/{total}' if total else ''}: training loss="
                       f"{r['loss']:.4f}" + words, type_="metrics", data=data)
            self.store.update("jobs", run.job_id, trained_tokens=r.get("tokens_seen"))
        if total and run.last_step > first:
            per_step = (time.time() - run.started) / max(1, run.last_step - run.first_step)
            eta = int(time.time() + per_step * (total - run.last_step))
            self.store.update("jobs", run.job_id, estimated_finish=eta)
        for r in run.evals.read():
            if r["step"] <= run.last_eval or not {"val_loss", "val_reward_mean"} & r.keys():
                continue
            run.last_eval = r["step"]
            if "val_reward_mean" in r:
                jobs.event(self.store, job, f"Step {r['step']}" + reports.reward_words(r, "val").replace(",", ":", 1),
                           type_="metrics", data={"step": r["step"], **reports.reinforcement_data(r, "val")})
                continue
            data = {"step": r["step"], "valid_loss": r["val_loss"], "valid_mean_token_accuracy": r.get("val_accuracy"),
                    **{f"valid_{k}": r[f"val_{k}"] for k in reports.PREFERENCE if f"val_{k}" in r}}
            said = (reports.preference_words(r, "val_") if "val_rewards_margin" in r
                    else f", token accuracy={r.get('val_accuracy', 0):.3f}")
            jobs.event(self.store, job, f"Step {r['step']}: validation loss={r['val_loss']:.4f}{said}",
                       type_="metrics", data=data)

    def _new_checkpoints(self, run: _Run, job: dict) -> None:
        from tailor.train import checkpoint

        kept = {p.name: p for p in checkpoint.complete(run.out)}
        for name, path in kept.items():
            if name in run.seen:
                continue
            run.seen.add(name)
            meta = checkpoint.read_meta(path)
            step = meta["step"]
            losses = meta.get("losses") or [None]
            val = meta.get("val") or {}
            body = {"id": new_id("ftckpt-"), "object": "fine_tuning.job.checkpoint", "created_at": int(time.time()),
                    "fine_tuned_model_checkpoint": f"{job['_model_name']}:ckpt-step-{step}",
                    "fine_tuning_job_id": job["id"], "step_number": step,
                    "metrics": {"step": step, "train_loss": losses[-1], "train_mean_token_accuracy": None,
                                "valid_loss": val.get("val_loss"),
                                "valid_mean_token_accuracy": val.get("val_accuracy")},
                    "_path": str(path)}
            with self.store.transaction():
                self.store.put("checkpoints", body, project=job["_project"], parent=job["id"])
                jobs.event(self.store, job, f"Checkpoint created at step {step}")
        # OpenAI lists the checkpoints that are kept; rotated-away ones leave the listing too
        for row in self.store.all("checkpoints", parent=job["id"]):
            if Path(row["_path"]).name not in kept:
                self.store.delete("checkpoints", row["id"])

    def _finish(self, run: _Run, job: dict, rc: int) -> None:
        final = run.out / "final"
        if run.limit is not None:
            self._fail(job, run.limit[1], run.limit[0])
        elif rc == 0 and final.is_dir():
            self._succeed(run, job, final)
        elif job.get("_cancel") or job.get("_pause"):
            self._stopped(job, "cancelled" if job.get("_cancel") else "paused")
        else:
            names = {str(run.folder / "train.jsonl"): job["training_file"],
                     str(run.folder / "val.jsonl"): job.get("validation_file") or "the validation file"}
            self._fail(job, *_failure(run.folder / "train.log", rc, names))

    def _fail(self, job: dict, message: str, code: str) -> None:
        message = scrub(message)
        with self.store.transaction():
            done = self.store.transition("jobs", job["id"], jobs.ACTIVE, status="failed", finished_at=int(time.time()),
                                         error={"code": code, "message": message, "param": None})
            if done is not None:
                jobs.event(self.store, job, f"Fine-tuning job failed: {message}", level="error")
        if done is not None:
            self._ended(job["id"])

    def _stopped(self, job: dict, status: str) -> None:
        """A job whose process stopped because it was asked to: cancelled, or paused (it keeps
        its checkpoints, and `resume` queues it again)."""
        fields = {"finished_at": int(time.time())} if status == "cancelled" else {"_pause": False}
        with self.store.transaction():
            done = self.store.transition("jobs", job["id"], ("running",), status=status, _signalled=False, **fields)
            if done is not None:
                jobs.event(self.store, job, f"Fine-tuning job {status}")
        if done is not None:
            self._ended(job["id"])

    def _succeed(self, run: _Run, job: dict, final: Path) -> None:
        from tailor.service import files

        csv_bytes = reports.metrics_csv(_read_jsonl(run.out / "metrics.jsonl"), _read_jsonl(run.out / "eval.jsonl"))
        result = files.store_bytes(self.store, job["_project"], "step_metrics.csv", "fine-tune-results", csv_bytes)
        name = job["_model_name"]
        with self.store.transaction():
            self.store.update("jobs", job["id"], _final=str(final), result_files=[result["id"]])
            jobs.event(self.store, job, f"New fine-tuned model created: {name}")
        self.publish_job(self.store.get("jobs", job["id"]))
        with self.store.transaction():
            done = self.store.transition("jobs", job["id"], ("running",), status="succeeded",
                                         finished_at=int(time.time()), fine_tuned_model=name)
            if done is not None:
                jobs.event(self.store, job, "The job has successfully completed")
        if done is not None:
            self._ended(job["id"])

    def _ended(self, job_id: str) -> None:
        """Tell `on_end` (the webhooks) of a job that has just stopped, when it reached a final status."""
        job = self.store.get("jobs", job_id)
        if self.on_end is not None and job["status"] in jobs.FINAL:
            try:
                self.on_end(job)
            except Exception:  # a notification never fails a job
                log.exception("could not queue the webhooks of %s", job_id)

    def publish_job(self, job: dict) -> None:
        """Serve a finished job's model and its kept checkpoints (at success, and at every start)."""
        if self.publish is None:
            return
        targets = [(job["_final"], job["_model_name"])]
        targets += [(c["_path"], c["fine_tuned_model_checkpoint"]) for c in self.store.all("checkpoints",
                                                                                               parent=job["id"])]
        for ref, model_id in targets:
            try:
                self.publish(ref, model_id, job["_project"])
            except Exception as exc:  # the model is trained and saved; say why it is not served
                log.exception("could not serve %s", model_id)
                jobs.event(self.store, job, f"{model_id} could not be served: {_words(exc)}", level="warn")


def _trainable_base(ref: str, target: Path) -> str:
    """A LoRA adapter (a previous fine-tune) trains on as the full model it stands for: folded
    into its base once, in the job's folder, so the new job's LoRA goes on top of the old one."""
    from tailor import models

    if models.resolve(ref).kind != "adapter":
        return ref
    if not (target / "config.json").is_file():
        from tailor.train.lora import merge

        merge(ref, target)
    return str(target)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line still being written; read it on the next pass
    return out


# An absolute (or ~) path, not a URL's and not a fraction's "1/12": what scrub() takes out.
_PATH = re.compile(r"(?<![\w.:/~])[~/][^\s'\"`,;()\[\]{}<>]*")


def scrub(text: str) -> str:
    """A message a tenant will read, with every server path cut to its last part: the job's own
    files are named by their file ids before this, and nothing else of the disk shows."""
    return _PATH.sub(lambda m: Path(m.group(0)).name or "…", text)


def _words(exc: BaseException) -> str:
    """An exception in words safe to show a tenant (an OSError's reason, not its path)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return scrub(str(exc)) or type(exc).__name__


def _failure(log_path: Path, rc: int, names: dict[str, str]) -> tuple[str, str]:
    """The reason a run failed, from what it printed: tailor's own error message when there is one,
    with the job's copies of its files named by their file ids."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        lines = []
    for i, ln in enumerate(lines):
        if ln.startswith("tailor train: "):  # a TailorError: the user's to fix, with the fix
            text = "\n".join([ln[len("tailor train: "):]] + lines[i + 1:i + 6])
            data_problem = "line " in text or any(path in text for path in names)
            for path, fid in names.items():
                text = text.replace(path, fid)
            code = "invalid_training_file" if data_problem else "invalid_request"
            return text[:2000], code
    tail = "\n".join(lines[-5:])
    why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
    return (f"The training process ended unexpectedly ({why})" + (f": {tail}" if tail else ""))[:2000], "server_error"
