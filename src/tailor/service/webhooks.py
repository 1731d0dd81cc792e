"""Webhooks: when a fine-tuning job ends (or an eval run, see `emit`), a signed POST to each
endpoint that should hear of it, in OpenAI's shape, retried with exponential backoff, with every
attempt in the store's delivery log.

Endpoints are the operator's (`tailor serve --webhook URL`, one secret for all, every project's
events) and each project's own (created through /v1/tailor/webhooks with a secret made here:
they get that project's events only). Sending runs on its own threads: a job's end only writes
the delivery rows, so a slow or dead receiver never holds up a job.

The payload is OpenAI's thin event, `{"object": "event", "id": "evt_...", "type":
"fine_tuning.job.succeeded", "created_at": ..., "data": {"id": "ftjob-..."}}`; the receiver
fetches the object by its id.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tailor.service import webhook_http
from tailor.service.errors import invalid, not_found
from tailor.service.store import Store, new_id
from tailor.service.webhook_http import Policy, Refused

log = logging.getLogger(__name__)

JOB_EVENTS = {"succeeded": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
              "cancelled": "fine_tuning.job.cancelled"}
EVAL_RUN_EVENTS = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}
EVAL_EVENTS = tuple(EVAL_RUN_EVENTS.values())  # OpenAI spells "canceled" with one l here
EVENT_TYPES = (*JOB_EVENTS.values(), *EVAL_EVENTS)
MAX_ENDPOINTS = 16  # per project


@dataclass
class Retry:
    """Attempt n+1 waits base x factor^(n-1) (capped), with 10% jitter: 5 s, 20 s, 80 s, 5 min,
    21 min, 85 min, 5.7 h, then 12 h, until `attempts` (12 by default: about three days, as
    OpenAI and the Standard Webhooks spec retry)."""

    base_s: float = 5.0
    factor: float = 4.0
    cap_s: float = 12 * 3600.0
    attempts: int = 12

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * self.factor ** (attempt - 1)) * random.uniform(0.9, 1.1)


class Webhooks:
    def __init__(self, store: Store, *, operator_urls: list[str] | tuple = (), operator_secret: str | None = None,
                 allow_networks: list[str] | tuple = (), retry: Retry | None = None, senders: int = 4):
        """`operator_urls` get every project's events, signed with `operator_secret`;
        `allow_networks` (CIDRs) are what tenants' endpoints may reach besides public addresses."""
        if operator_urls and not operator_secret:
            raise ValueError("--webhook needs a signing secret: set $TAILOR_WEBHOOK_SECRET or --webhook-secret-file")
        if operator_secret:
            webhook_http.secret_key(operator_secret)  # a bad secret fails at start, not at the first event
        for url in operator_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--webhook {url!r}: give an http:// or https:// URL")
        self.store, self.retry = store, retry or Retry()
        self.operator = [{"id": f"operator-{i + 1}", "url": url} for i, url in enumerate(operator_urls)]
        self._operator_secret = operator_secret
        self.tenant_policy = Policy(allow_networks)
        self._operator_policy = Policy(everything=True)  # the operator's own URLs may be anywhere
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._senders, self._pool = senders, None
        self._sending: set[str] = set()
        self._lock = threading.Lock()

    # ---- endpoints a project registers ------------------------------------------------------

    def create(self, project: str, req: dict) -> dict:
        url = req.get("url")
        if not isinstance(url, str) or not url:
            raise invalid("Missing required parameter: 'url'.", "url", "missing_required_parameter")
        if len(url) > 2048:
            raise invalid("The url is longer than 2048 characters.", "url")
        try:
            self.tenant_policy.check_url(url)
        except Refused as exc:
            raise invalid(f"Invalid url: {exc}.", "url", "invalid_url") from exc
        events = req.get("events")
        if events is not None and (not isinstance(events, list) or not events
                                   or any(e not in EVENT_TYPES for e in events)):
            raise invalid(f"'events' must be a non-empty list of: {', '.join(EVENT_TYPES)} (or left out for all).",
                          "events")
        if len(self.store.all("webhooks", project=project)) >= MAX_ENDPOINTS:
            raise invalid(f"A project may register at most {MAX_ENDPOINTS} webhook endpoints; delete one first.", "url")
        body = {"id": new_id("we_"), "object": "webhook_endpoint", "url": url, "events": events,
                "created_at": int(time.time()), "status": "enabled", "_secret": webhook_http.new_secret()}
        self.store.put("webhooks", body, project=project)
        return {**public(body), "secret": body["_secret"]}  # the only time the secret is shown

    def endpoint(self, project: str, wid: str) -> dict:
        body = self.store.get("webhooks", wid, project=project)
        if body is None:
            raise not_found("webhook endpoint", wid, "webhook_id")
        return body

    def listing(self, project: str) -> dict:
        rows = [public(r) for r in self.store.all("webhooks", project=project)]
        return {"object": "list", "data": rows, "has_more": False, "first_id": rows[0]["id"] if rows else None,
                "last_id": rows[-1]["id"] if rows else None}

    def delete(self, project: str, wid: str) -> dict:
        self.endpoint(project, wid)
        self.store.delete("webhooks", wid, project=project)
        return {"id": wid, "object": "webhook_endpoint", "deleted": True}

    def deliveries(self, project: str, wid: str, *, after: str | None = None, limit: int = 20) -> dict:
        from tailor.service.files import page

        self.endpoint(project, wid)
        if not 1 <= limit <= 100:
            raise invalid(f"Invalid limit {limit}; use 1 to 100.", "limit")
        rows, more = self.store.page("deliveries", parent=wid, after=after, limit=limit)
        return page([public(r) for r in rows], more)

    # ---- events -------------------------------------------------------------------------------

    def job_ended(self, job: dict) -> None:
        """A job reached succeeded, failed or cancelled: the worker and the cancel call say so."""
        kind = JOB_EVENTS.get(job.get("status"))
        if kind is not None:
            self.emit(job["_project"], kind, job["id"])

    def eval_run_ended(self, run: dict, project: str) -> None:
        """An eval run reached completed, failed or canceled (the eval runner's on_run_end)."""
        kind = EVAL_RUN_EVENTS.get(run.get("status"))
        if kind is not None:
            self.emit(project, kind, run["id"])

    def emit(self, project: str, event_type: str, object_id: str) -> dict | None:
        """Queue `event_type` about `object_id` (a job id, an eval run id) for the operator's
        endpoints and `project`'s own. Returns the event, or None when no endpoint wants it.
        Cheap and safe to call from any thread (evals call it when a run ends)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        targets = [(e["id"], None) for e in self.operator]
        targets += [(e["id"], project) for e in self.store.all("webhooks", project=project)
                    if e["status"] == "enabled" and (e["events"] is None or event_type in e["events"])]
        if not targets:
            return None
        event = {"object": "event", "id": new_id("evt_"), "type": event_type, "created_at": int(time.time()),
                 "data": {"id": object_id}}
        payload = json.dumps(event, separators=(",", ":"))
        now = time.time()
        with self.store.transaction():
            for endpoint_id, owner in targets:
                self.store.put("deliveries", {
                    "id": new_id("whd_"), "object": "webhook.delivery", "endpoint_id": endpoint_id,
                    "event_id": event["id"], "event_type": event_type, "webhook_id": new_id("msg_"),
                    "created_at": int(now), "status": "pending", "attempts": [], "_payload": payload,
                    "_next_at": now}, project=owner or "_operator", parent=endpoint_id)
        self._wake.set()
        return event

    # ---- sending ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._pool = ThreadPoolExecutor(self._senders, thread_name_prefix="tailor-webhook")
            self._thread = threading.Thread(target=self._loop, name="tailor-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; pending deliveries stay in the store and go out after the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._send_due()
            except Exception:  # the store or a bug: try again shortly, never die
                log.exception("webhook pass failed")
                wait = 5.0
            self._wake.wait(wait)
            self._wake.clear()

    def _send_due(self) -> float:
        """Hand every due delivery to a sender; seconds until the next one is due."""
        now, soonest = time.time(), 3600.0
        for d in self.store.all("deliveries", where={"status": "pending"}):
            if d["_next_at"] > now:
                soonest = min(soonest, d["_next_at"] - now)
                continue
            with self._lock:
                if d["id"] in self._sending:
                    continue
                self._sending.add(d["id"])
            self._pool.submit(self._attempt, d["id"])
        return max(0.01, soonest)

    def _attempt(self, did: str) -> None:
        try:
            d = self.store.get("deliveries", did)
            if d is not None and d["status"] == "pending":
                self._record(d, *self._send(d))
        except Exception:
            log.exception("webhook delivery %s failed", did)
        finally:
            with self._lock:
                self._sending.discard(did)
            self._wake.set()

    def _send(self, d: dict) -> tuple[int | None, str | None, bool]:
        """(HTTP status or None, error, final: no retry helps)."""
        target = self._target(d)
        if target is None:
            return None, "the endpoint was deleted or disabled", True
        url, secret, policy = target
        ts, body = int(time.time()), d["_payload"].encode()
        headers = {"content-type": "application/json", "user-agent": webhook_http.USER_AGENT,
                   "webhook-id": d["webhook_id"], "webhook-timestamp": str(ts),
                   "webhook-signature": webhook_http.sign(secret, d["webhook_id"], ts, body)}
        try:
            status = webhook_http.post(url, body, headers, policy)
        except Refused as exc:
            return None, str(exc), True
        except Exception as exc:  # connection refused, timeout, TLS: worth another try
            return None, f"{type(exc).__name__}: {exc}"[:500], False
        return status, None if 200 <= status < 300 else f"HTTP {status}", status == 410

    def _target(self, d: dict):
        for e in self.operator:
            if e["id"] == d["endpoint_id"]:
                return e["url"], self._operator_secret, self._operator_policy
        e = self.store.get("webhooks", d["endpoint_id"])
        if e is None or e["status"] != "enabled":
            return None
        return e["url"], e["_secret"], self.tenant_policy

    def _record(self, d: dict, status: int | None, error: str | None, final: bool) -> None:
        attempts = d["attempts"] + [{"at": int(time.time()), "status_code": status, "error": error}]
        fields = {"attempts": attempts}
        if error is None:
            fields["status"] = "succeeded"
        elif final or len(attempts) >= self.retry.attempts:
            fields["status"] = "failed"
            if status == 410:  # Gone: the Standard Webhooks spec says to stop sending there
                self.store.update("webhooks", d["endpoint_id"], status="disabled")
        else:
            fields["_next_at"] = time.time() + self.retry.delay(len(attempts))
        self.store.update("deliveries", d["id"], **fields)
        if error is not None:
            log.warning("webhook %s to %s: %s (attempt %d)", d["event_type"], d["endpoint_id"], error, len(attempts))


def public(body: dict) -> dict:
    return {k: v for k, v in body.items() if not k.startswith("_")}
