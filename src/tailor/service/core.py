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
from tailor.service.store import Store
from tailor.service.webhooks import Webhooks
from tailor.service.worker import Publisher, Worker

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class Service:
    def __init__(self, root: str | os.PathLike | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_jobs: int = 1, lookup: Callable[[str], str | None] | None = None,
                 publish: Publisher | None = None, train_threads: int | None = None, webhooks: dict | None = None):
        """`lookup(model_id)` gives the reference behind a served model id (or None);
        `publish(ref, model_id, owner)` starts serving a trained model; `train_threads` bounds
        each training process's CPU threads (default: every core but the server's one);
        `webhooks`: keyword arguments of service.webhooks.Webhooks (the operator's endpoints and
        secret, the networks tenants' endpoints may reach, the retry schedule)."""
        if max_jobs < 1 or max_upload_bytes < 1:
            raise UsageError(f"--max-jobs ({max_jobs}) and --max-upload-mb must be at least 1.")
        if train_threads is not None and train_threads < 1:
            raise UsageError(f"--train-threads is {train_threads}; give at least 1 (default: cores - 1).")
        self.store = Store(root)
        self.max_upload_bytes = max_upload_bytes
        self.lookup = lookup or (lambda model_id: None)
        self.worker = Worker(self.store, max_jobs=max_jobs, publish=publish, train_threads=train_threads)
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

    def upload(self, filename: str, purpose: str, data: bytes, project: str = DEFAULT_PROJECT) -> dict:
        return files.public(files.upload(self.store, project, filename, purpose, data,
                                         max_bytes=self.max_upload_bytes))

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
        return jobs.public(jobs.create(self.store, project, req, lambda m: self.resolve_model(m, project)))

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
        """(reference to train from, base name for fine_tuned_model) for a job's `model`: a
        previous fine-tune of this project (`ft:...`), a served model id, or any reference."""
        if model.startswith("ft:"):
            return self._fine_tuned(model, project)
        ref = self.lookup(model)
        if ref is not None:
            return ref, model
        from tailor import models
        from tailor.errors import TailorError

        try:
            src = models.resolve(model)
            if src.kind == "hub" and not _hub_available(model):
                raise TailorError(f"{model} is not in the local Hugging Face cache and the hub cannot be reached.")
        except TailorError as exc:
            raise ServiceError(f"The model `{model}` does not exist or you do not have access to it. {exc}",
                               param="model", code="model_not_found") from exc
        return model, Path(model).name if src.kind in ("folder", "adapter", "gguf") else model

    def _fine_tuned(self, model: str, project: str) -> tuple[str, str]:
        for job in self.store.all("jobs", project=project, where={"status": "succeeded"}):
            base = job["_model_name"].split(":")[1]
            if job["_model_name"] == model:
                return job["_final"], base
            for c in self.store.all("checkpoints", parent=job["id"]):
                if c["fine_tuned_model_checkpoint"] == model:
                    return c["_path"], base
        raise ServiceError(f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")


def _hub_available(repo_id: str) -> bool:
    """A hub id can train when its snapshot is cached, or the hub answers (the job downloads it)."""
    from huggingface_hub import try_to_load_from_cache

    from tailor import models

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or models._hub_reachable()
