"""GET /metrics: the server's Prometheus metrics, in the text format, through prometheus_client.

Names follow vLLM's where the concept is the same, under `tailor:` instead of `vllm:`
(`tailor:num_requests_running`, `tailor:time_to_first_token_seconds`, ...), labelled with the
served model's id as `model_name`. Each app has its own CollectorRegistry (never the global
one). What the engines hold is read when a scrape asks, from the requests' own fields: the
decode loop only calls the two timing hooks below, at a request's first token and at its end.

The route is on the main port, behind the API key; with several projects a key's scrape shows
only the models that project may use, and none of the operator's job metrics. `--metrics-port`
serves everything on a port of its own, without a key, for scrapers on a private network.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tailor.service.keys import project

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)
OPERATOR_ONLY = ("tailor:fine_tuning_",)  # families a tenant's scrape never shows
_current: ContextVar["Meter | None"] = ContextVar("tailor_meter", default=None)


def watch(served, requests) -> None:
    """Time `requests` (engine Requests of one HTTP request to `served`) for /metrics: called by
    serve.stream before they are submitted. Nothing happens outside an app with metrics."""
    meter = _current.get()
    if meter is not None:
        meter.watch(served, requests)


class Meter:
    def __init__(self, models, service=None):
        """`models`: the app's serve.registry.Registry; `service`: the fine-tuning Service or None."""
        self.models, self.service = models, service
        self.prom = CollectorRegistry()
        label = ["model_name"]
        self.ttft = Histogram("tailor:time_to_first_token_seconds", "Time from a request's arrival at the engine "
                              "to its first token.", label, buckets=TTFT_BUCKETS, registry=self.prom)
        self.e2e = Histogram("tailor:e2e_request_latency_seconds", "Time from a request's arrival at the engine to "
                             "its end.", label, buckets=E2E_BUCKETS, registry=self.prom)
        self.prompt_tokens = Counter("tailor:prompt_tokens", "Prompt tokens prefilled.", label, registry=self.prom)
        self.generation_tokens = Counter("tailor:generation_tokens", "Tokens generated.", label, registry=self.prom)
        self.success = Counter("tailor:request_success", "Requests finished, by finish reason (stop, length, "
                               "cancelled, error).", label + ["finished_reason"], registry=self.prom)
        self.rate_limited = Counter("tailor:rate_limited_requests", "Requests answered HTTP 429 (the engine's "
                                    "queue was full, or a limit was reached).", registry=self.prom)
        self._inflight: dict[int, tuple[str, object]] = {}  # engine request id -> (model id, Request)
        self._lock = threading.Lock()
        self.prom.register(_Live(self))
        self.jobs = _JobSteps(service.store) if service is not None else None

    # ---- the hooks the engine's events pass through ---------------------------------------

    def watch(self, served, requests) -> None:
        model, arrived = served.id, time.perf_counter()
        with self._lock:
            if len(self._inflight) > 4096:
                self._prune()
            for req in requests:
                self._inflight[req.id] = (model, req)
        for req in requests:
            req.on_event = self._timed(model, req, arrived, req.on_event)

    def _timed(self, model: str, req, arrived: float, deliver):
        first = True

        def on_event(event):
            nonlocal first
            if first and (event.token is not None or event.finish_reason):
                first = False
                if event.token is not None:  # prefilled: its prompt is processed, its first token out
                    self.ttft.labels(model).observe(time.perf_counter() - arrived)
                    self.prompt_tokens.labels(model).inc(len(req.prompt))
            if event.finish_reason:
                self.e2e.labels(model).observe(time.perf_counter() - arrived)
                self.generation_tokens.labels(model).inc(len(req.tokens))
                self.success.labels(model, event.finish_reason).inc()
                with self._lock:
                    self._inflight.pop(req.id, None)
            if deliver is not None:
                deliver(event)
        return on_event

    def inflight(self) -> list[tuple[str, object]]:
        with self._lock:
            self._prune()
            return list(self._inflight.values())

    def _prune(self) -> None:
        """Forget requests that are done, or cancelled before a slot was theirs: after a 429 the
        engine never had the rest of that HTTP request's choices, so no final event comes for them."""
        for key in [k for k, (_, req) in self._inflight.items() if req.done or (req.cancelled and req.slot is None)]:
            del self._inflight[key]

    # ---- exposition -----------------------------------------------------------------------

    def text(self, visible: set[str] | None = None) -> bytes:
        """The scrape. `visible`: only these model ids, and no operator-only family (a tenant's
        scrape on a server with several projects); None: everything."""
        if visible is None:
            return generate_latest(self.prom)
        return generate_latest(_Only(self.prom, visible))


class _Live:
    """What is read at scrape time: requests running and waiting, KV-cache use, jobs."""

    def __init__(self, meter: Meter):
        self.meter = meter

    def collect(self):
        models = self.meter.models
        served = dict(models.models)  # the registry swaps in a new dict when a model is added
        running = GaugeMetricFamily("tailor:num_requests_running", "Requests decoding (their prompt prefilled).",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("tailor:num_requests_waiting", "Requests waiting for a free slot.",
                                    labels=["model_name"])
        counts = {m: [0, 0] for m in served}
        held: dict[int, int] = {}  # id(engine) -> positions its running requests hold
        for model, req in self.meter.inflight():
            if req.done:
                continue
            is_running = req.slot is not None
            counts.setdefault(model, [0, 0])[0 if is_running else 1] += 1
            engine = getattr(served.get(model), "engine", None)
            if is_running and engine is not None:
                held[id(engine)] = held.get(id(engine), 0) + len(req.prompt) + len(req.tokens)
        for model, (r, w) in counts.items():
            running.add_metric([model], r)
            waiting.add_metric([model], w)
        yield running
        yield waiting
        yield self._kv_cache(served, held)
        if self.meter.jobs is not None:
            yield from self.meter.jobs.collect()

    @staticmethod
    def _kv_cache(served: dict, held: dict) -> GaugeMetricFamily:
        """Per engine (a base model and the adapters on it share one): the fraction of its
        max_batch x max_len token positions that running requests hold. Labelled with the id of
        the engine's base model (or its first model)."""
        family = GaugeMetricFamily("tailor:kv_cache_usage_perc", "KV-cache use: positions held by running requests "
                                   "over the engine's max_batch x max_len (1 is full).", labels=["model_name"])
        engines: dict[int, tuple[str, object, int]] = {}  # id(engine) -> (label, engine, adapter)
        for model_id, m in served.items():
            key = id(m.engine)
            if key not in engines or (m.adapter == 0 and engines[key][2] != 0):
                engines[key] = (model_id, m.engine, m.adapter)
        for key, (model_id, engine, _) in engines.items():
            family.add_metric([model_id], held.get(key, 0) / max(1, engine.max_batch * engine.max_len))
        return family


class _JobSteps:
    """Fine-tuning jobs by status, and the training steps they report (a counter since this
    server started; `rate()` of it is the step rate). Steps are counted from the store's new
    metrics events only, so a scrape costs what happened since the last one."""

    def __init__(self, store):
        self.store, self.steps = store, 0
        self._seq = store.last_seq("events")
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            rows, self._seq = self.store.since("events", self._seq)
            self.steps += sum(1 for e in rows if e.get("type") == "metrics" and "train_loss" in (e.get("data") or {}))
            steps = self.steps
        by_status = GaugeMetricFamily("tailor:fine_tuning_jobs", "Fine-tuning jobs, by status.", labels=["status"])
        counts = self.store.count_by("jobs", "status")
        for status in ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        total = CounterMetricFamily("tailor:fine_tuning_steps", "Optimizer steps the fine-tuning jobs reported.")
        total.add_metric([], steps)
        yield total


class _Only:
    """A view of a registry with only some models' series, and no operator-only family."""

    def __init__(self, registry, visible: set[str]):
        self.registry, self.visible = registry, visible

    def collect(self):
        for family in self.registry.collect():
            if family.name.startswith(OPERATOR_ONLY):
                continue
            family.samples = [s for s in family.samples if s.labels.get("model_name", "") in self.visible
                              or "model_name" not in s.labels]
            yield family


# ---- wiring --------------------------------------------------------------------------------


def install(app, models, service=None, *, projects: int = 1, route: bool = True) -> Meter:
    """Give `app` a Meter (app.state.meter): the middleware that lets requests find it and
    counts 429s, and, with `route`, GET /metrics behind the app's key guard. `projects`: how
    many projects the keys stand for (more than one: each scrape shows its project's models)."""
    meter = Meter(models, service)
    app.state.meter = meter
    app.add_middleware(_Middleware, meter=meter)
    if route:
        def metrics(request: Request):  # a def: the store's counts run on a worker thread, not the event loop
            visible = None if projects <= 1 else set(models.visible(project(request)))
            return Response(meter.text(visible), media_type=CONTENT_TYPE_LATEST)

        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    return meter


class _Middleware:
    """Puts the app's Meter where serve.stream's requests find it, and counts 429 answers."""

    def __init__(self, app, meter: Meter):
        self.app, self.meter = app, meter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = _current.set(self.meter)

        async def counted(message):
            if message["type"] == "http.response.start" and message["status"] == 429:
                self.meter.rate_limited.inc()
            await send(message)
        try:
            await self.app(scope, receive, counted)
        finally:
            _current.reset(token)


def serve_separately(meter: Meter, host: str, port: int):
    """GET /metrics (every family, no key) on its own port, from a daemon thread; returns the
    uvicorn Server (its `should_exit` stops it)."""
    import uvicorn
    from prometheus_client import make_asgi_app

    server = uvicorn.Server(uvicorn.Config(_only_metrics(make_asgi_app(registry=meter.prom)), host=host, port=port,
                                           log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, name="tailor-metrics", daemon=True).start()
    return server


def _only_metrics(inner):
    """The metrics app at /metrics (and /), a 404 elsewhere."""
    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] in ("/metrics", "/"):
            return await inner(scope, receive, send)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"not found: the metrics are at /metrics\n"})
    return app
