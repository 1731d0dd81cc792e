"""The fine-tuning service as one object: the store, the worker, and the two hooks it needs
from whoever serves models (find a served model's reference; serve a new model). It knows no
HTTP; the server's routes call these methods and turn ServiceError into OpenAI's envelope."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tailor.errors import UsageError
from tailor.service import files, jobs
from tailor.service.errors import ServiceError
from tailor.service.keys import DEFAULT_PROJECT
from tailor.service.policy import Policy
from tailor.service.store import Store
from tailor.service.webhooks import Webhooks
from tailor.service.worker import Publisher, Worker

# What every unknown or forbidden model reference gets, whatever exists on the server's disk.
_NO_MODEL = "The model `{}` does not exist or you do not have access to it."

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class Service:
    def __init__(self, root: str | os.PathLike | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_jobs: int = 1, lookup: Callable[[str, str], str | None] | None = None,
                 publish: Publisher | None = None, train_threads: int | None = None,
                 policy: Policy | None = None, job_env: tuple[str, ...] = (), webhooks: dict | None = None):
        """`lookup(model_id, project)` gives the reference behind a model id that project may
        use (or None); `publish(ref, model_id, owner)` starts serving a trained model;
        `train_threads` bounds each training process's CPU threads (default: every core but the
        server's one); `policy` is what tenants may ask for; `job_env` names server environment
        variables a job's process may see besides the safe ones (service/procs.py); `webhooks`:
        keyword arguments of service.webhooks.Webhooks (the operator's endpoints and secret, the
        networks tenants' endpoints may reach, the retry schedule)."""
        if max_jobs < 1 or max_upload_bytes < 1:
            raise UsageError(f"--max-jobs ({max_jobs}) and --max-upload-mb must be at least 1.")
        if train_threads is not None and train_threads < 1:
            raise UsageError(f"--train-threads is {train_threads}; give at least 1 (default: cores - 1).")
        self.store = Store(root)
        self.max_upload_bytes = max_upload_bytes
        self.policy = policy or Policy()
        self.lookup = lookup or (lambda model_id, project: None)
        self.worker = Worker(self.store, max_jobs=max_jobs, publish=publish, train_threads=train_threads,
                             policy=self.policy, job_env=job_env)
        try:
            self.webhooks = Webhooks(self.store, **(webhooks or {}))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self.worker.on_end = self.webhooks.job_ended

    def start(self) -> None:
        for job in self.store.all("jobs", where={"status": "succeeded"}):
            self.worker.publish_job(job)  # a restarted server serves every model it made before
        self.worker.start()  # which first resumes the jobs a previous server left running
        self.webhooks.start()  # deliveries a previous server left pending go out too

    def stop(self) -> None:
        self.worker.stop()
        self.webhooks.stop()

    # ---- files ---------------------------------------------------------------------------

    def upload(self, filename: str, purpose: str, tmp: Path, project: str = DEFAULT_PROJECT) -> dict:
        """Keep a streamed upload: `tmp` is a file from `store.temp_blob()`, moved or removed here."""
        quota = files.Quota(self.policy.max_project_files, self.policy.max_project_storage_mb * 1024 * 1024)
        return files.public(files.upload(self.store, project, filename, purpose, tmp,
                                         max_bytes=self.max_upload_bytes, quota=quota))

    def upload_bytes(self, filename: str, purpose: str, data: bytes, project: str = DEFAULT_PROJECT) -> dict:
        """`upload` for bytes in memory (the library's own callers and tests)."""
        f, tmp = self.store.temp_blob()
        with f:
            f.write(data)
        return self.upload(filename, purpose, tmp, project)

    def file(self, fid: str, project: str = DEFAULT_PROJECT) -> dict:
        return files.public(files.get(self.store, project, fid))

    def file_content(self, fid: str, project: str = DEFAULT_PROJECT) -> Path:
        return files.content(self.store, project, fid)

    def delete_file(self, fid: str, project: str = DEFAULT_PROJECT) -> dict:
        return files.delete(self.store, project, fid)

    def list_files(self, project: str = DEFAULT_PROJECT, **query) -> dict:
        return files.listing(self.store, project, **query)

    # ---- jobs ----------------------------------------------------------------------------

    def create_job(self, req: dict, project: str = DEFAULT_PROJECT) -> dict:
        return jobs.public(jobs.create(self.store, project, req, lambda m: self.resolve_model(m, project),
                                       self.policy))

    def job(self, jid: str, project: str = DEFAULT_PROJECT) -> dict:
        return jobs.public(jobs.get(self.store, project, jid))

    def list_jobs(self, project: str = DEFAULT_PROJECT, **query) -> dict:
        return jobs.listing(self.store, project, **query)

    def cancel_job(self, jid: str, project: str = DEFAULT_PROJECT) -> dict:
        job = jobs.cancel(self.store, project, jid)
        if job["status"] == "cancelled":  # a queued or paused job; a running one ends in the worker
            self.webhooks.job_ended(job)
        return jobs.public(job)

    def pause_job(self, jid: str, project: str = DEFAULT_PROJECT) -> dict:
        return jobs.public(jobs.pause(self.store, project, jid))

    def resume_job(self, jid: str, project: str = DEFAULT_PROJECT) -> dict:
        return jobs.public(jobs.resume(self.store, project, jid))

    def events(self, jid: str, project: str = DEFAULT_PROJECT, **query) -> dict:
        return jobs.events(self.store, project, jid, **query)

    def checkpoints(self, jid: str, project: str = DEFAULT_PROJECT, **query) -> dict:
        return jobs.checkpoints(self.store, project, jid, **query)

    # ---- models --------------------------------------------------------------------------

    def resolve_model(self, model: str, project: str) -> tuple[str, str]:
        """(reference to train from, base name for fine_tuned_model) for a job's `model`. A
        tenant may name a model the server serves, its own project's `ft:` models and
        checkpoints, or (with --allow-hub-models) a hub id; never a path. Every other reference
        gets the same error, whatever exists on disk."""
        if model.startswith("ft:"):
            return self._fine_tuned(model, project)
        ref = self.lookup(model, project)
        if ref is not None:
            return ref, model
        if self.policy.allow_hub_models and _hub_id(model):
            return model, model
        raise ServiceError(_NO_MODEL.format(model), param="model", code="model_not_found")

    def _fine_tuned(self, model: str, project: str) -> tuple[str, str]:
        for job in self.store.all("jobs", project=project, where={"status": "succeeded"}):
            base = job["_model_name"].split(":")[1]
            if job["_model_name"] == model:
                return job["_final"], base
            for c in self.store.all("checkpoints", parent=job["id"]):
                if c["fine_tuned_model_checkpoint"] == model:
                    return c["_path"], base
        raise ServiceError(_NO_MODEL.format(model), param="model", code="model_not_found")


def _hub_id(model: str) -> bool:
    """`owner/name` that names a hub repo, not something on this machine: a reference that is a
    local path (relative to the server's folder too) is refused like any unknown one."""
    from tailor import models

    try:
        return models.resolve(model).kind == "hub" and _hub_available(model)
    except Exception:  # noqa: BLE001 - any failure is "unknown", with the same words
        return False


def _hub_available(repo_id: str) -> bool:
    """A hub id can train when its snapshot is cached, or the hub answers (the job downloads it)."""
    from huggingface_hub import try_to_load_from_cache

    from tailor import models

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or models._hub_reachable()
