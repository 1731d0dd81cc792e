"""`tailor serve [REF ...]`: serve models behind an OpenAI-compatible HTTP API.

Each REF is a model folder, a LoRA adapter folder (served on top of its base, which is loaded
once however many adapters use it), a .gguf file, a hub id, or `default`. Clients pick one per
request with the `model` field; ids are the --name values, else `default`, a hub id as given, or a
local model's folder name (`RUN-final` / `RUN-checkpoint-N` for a training run's outputs): never a path.

With --index INDEX (every model) or --rag MODEL=INDEX (one model), a chat request's prompt holds
the top chunks of the index for its latest user turn, and the response names them (tailor.sources).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass
from typing import Literal

from tailor import config
from tailor.service.policy import Policy


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 exposes the server to the network; set --api-key then)."""
    port: int = 8000
    """Port to listen on."""
    api_key: list[str] | None = None
    """Require 'Authorization: Bearer KEY' on every request but /health (default: $TAILOR_API_KEY, else none).
    Repeat it for several keys: each key is a project that sees only its own files, jobs and fine-tunes
    (give 'KEY NAME' to name the project; one key alone is project `default`)."""
    api_keys: str | None = None
    """A file of 'KEY NAME' lines, one project per key (with or besides --api-key)."""
    dtype: str = "auto"
    """auto (on a CPU: the decode precision measured fastest on this CPU at first load, cached in $TAILOR_HOME/autotune
    and never slower than fp32 at batch 1; on a GPU: bf16, or fp16 without bf16), float32, bfloat16 or float16 (that dtype throughout)."""
    max_batch: int = 16
    """Most sequences decoded together per base model; more concurrent requests wait their turn."""
    max_queue: int = 256
    """Most sequences waiting for a slot per base model; past it, HTTP 429 with Retry-After."""
    max_n: int = 16
    """Most choices (`n`) one request may ask for; more is HTTP 400."""
    max_prompts: int = 16
    """Most prompts one /v1/completions request may hold; more is HTTP 400."""
    max_len: int | None = None
    """Longest prompt + completion in tokens (default: the model's own context length)."""
    quantize: Literal["int8"] | None = None
    """int8: weight-only int8 projections on a CPU (half their memory, ~96% of next tokens equal bf16's).
    Slower than bf16 once 4 or more sequences decode together, so for memory, not speed, here."""
    chat_template: str | None = None
    """For a model without a chat template: chatml (default), llama3, alpaca, or a .jinja file."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger ones get HTTP 413."""
    shutdown_timeout: float = 10.0
    """Seconds to let in-flight requests finish after SIGTERM before they are cancelled."""
    state: str | None = None
    """Folder of the fine-tuning service: uploaded files, jobs, their runs (default: $TAILOR_HOME/service)."""
    max_upload_mb: int = 512
    """Largest file accepted by POST /v1/files, in MB; larger ones get HTTP 413."""
    max_jobs: int = 1
    """Fine-tuning jobs trained at the same time; the others wait their turn, first come first served."""
    train_threads: int | None = None
    """CPU threads of each training job (default: every core but one, which stays the server's)."""
    limits: str | None = None
    """A YAML file of the tenant bounds below (max_job_steps: 5000 ...); flags given as well win over it."""
    job_env: list[str] | None = None
    """Pass this server environment variable to training jobs (repeat per NAME); by default they see no credentials."""
    job_stop_timeout: float = 120.0
    """Seconds a stopping server waits for each running job to save its checkpoint before killing it."""
    max_uploads: int = 4
    """File uploads streaming at once, server-wide; more is HTTP 429."""
    max_project_share: float = 0.5
    """The fraction of a model's running slots (--max-batch) one project may hold while another project waits."""
    max_loaded_models: int = 2
    """Published full fine-tunes (and checkpoints) kept loaded at once; others load on first use, the least recently used unloaded."""
    max_loaded_adapters: int = 32
    """Published LoRA adapters kept loaded at once on the served bases; others load on first use."""
    index: str | None = None
    """A document index (`tailor index`) for every model: each chat request's prompt gets the top chunks
    for its latest user turn. Fine-tunes served later use it too."""
    rag: list[str] | None = None
    """MODEL=INDEX: retrieve from INDEX for the served model id MODEL (repeat per model; wins over --index)."""
    rag_k: int = 4
    """Chunks retrieved per request, 0 to 32; a request may set its own with extra_body={"tailor": {"k": N}}."""
    rag_style: Literal["system", "user"] = "system"
    """Where the chunks go: a system message (system) or before the latest user turn (user)."""
    grader_url: str | None = None
    """An OpenAI-compatible server (e.g. https://host/v1) for score_model and label_model graders whose model
    is not served here; its key comes from $TAILOR_GRADER_API_KEY. Requests never name a URL themselves."""
    python_graders: int = 2
    """Python graders run at the same time, each in its own confined process (2 minutes, 2 GB each at most)."""
    metrics_port: int | None = None
    """Serve GET /metrics (Prometheus) on this port, without an API key, for scrapers on a private network; the main port then has no /metrics (default: /metrics on the main port, behind the key)."""
    metrics_host: str | None = None
    """Address of the --metrics-port listener (default: --host)."""
    webhook: list[str] | None = None
    """URL that gets every project's fine-tuning (and eval) events, signed with $TAILOR_WEBHOOK_SECRET or --webhook-secret-file (repeat it for several). Projects may also register their own under /v1/tailor/webhooks."""
    webhook_secret_file: str | None = None
    """A file holding the signing secret (whsec_...) of the --webhook endpoints (default: $TAILOR_WEBHOOK_SECRET)."""
    webhook_allow_network: list[str] | None = None
    """A network (CIDR, e.g. 10.0.0.0/8) that projects' webhook URLs may reach besides public addresses; repeat it for several. By default loopback, link-local (cloud metadata), private and reserved addresses are refused."""


def add_arguments(parser) -> None:
    parser.add_argument("refs", nargs="*", metavar="REF", default=None,
                        help="Models to serve (default: the embedded SmolLM2-135M-Instruct).")
    parser.add_argument("--name", action="append", dest="names", default=None, metavar="ID",
                        help="Model id for the REF in the same position (repeat once per REF; default: `default`, "
                             "the hub id, or the folder's name).")
    config.add_arguments(parser, ServeConfig, skip=("api_key", "rag", "job_env", "webhook", "webhook_allow_network"))
    docs = {**config.field_docs(ServeConfig), **config.field_docs(Policy)}
    for name, metavar in (("api_key", "KEY"), ("rag", "MODEL=INDEX"), ("job_env", "NAME"), ("webhook", "URL"),
                          ("webhook_allow_network", "CIDR")):
        parser.add_argument(config.flag(name), action="append", dest=name, default=argparse.SUPPRESS,
                            metavar=metavar, help=docs[name].replace("%", "%%"))
    tenants = parser.add_argument_group("what tenants of the fine-tuning service may ask for (also --limits FILE)")
    config.add_arguments(tenants, Policy, skip=("allow_option", "push_tokens"))
    tenants.add_argument("--allow-option", action="append", dest="allow_option", default=argparse.SUPPRESS,
                         metavar="KEY", help=docs["allow_option"].replace("%", "%%"))


def run(args) -> int:
    import logging

    import uvicorn
    from transformers.utils import logging as hf_logging

    from tailor.serve.app import Limits, create_app
    from tailor.serve.registry import Registry, model_ids

    from tailor.service.policy import policy_keys

    skip = ("command", "refs", "names", *policy_keys())
    cfg = config.build(ServeConfig, {k: v for k, v in vars(args).items() if k not in skip})
    bounds = config.build(Policy, _limits_file(cfg.limits), {k: v for k, v in vars(args).items() if k in policy_keys()})
    refs = args.refs or ["default"]
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from tailor.service import Service, keys

    # keys and the service first: a bad flag fails before the slow part, loading the models
    api_keys = keys.load(cfg.api_key, cfg.api_keys, os.environ.get("TAILOR_API_KEY"))
    per_model, every = open_retrievers(cfg, model_ids(refs, args.names))
    policy = _policy(cfg, bounds, api_keys)
    service = Service(cfg.state, max_upload_bytes=cfg.max_upload_mb * 1024 * 1024, max_jobs=cfg.max_jobs,
                      train_threads=cfg.train_threads, policy=policy, job_env=tuple(cfg.job_env or ()),
                      webhooks=webhook_options(cfg))
    service.worker.stop_timeout = cfg.job_stop_timeout
    registry = Registry.load(refs, args.names, dtype=cfg.dtype, max_batch=cfg.max_batch, max_len=cfg.max_len,
                             chat_template=cfg.chat_template, max_queue=cfg.max_queue, quantize=cfg.quantize,
                             max_share=cfg.max_project_share, max_loaded=cfg.max_loaded_models,
                             max_adapters=cfg.max_loaded_adapters)
    registry.use_retrievers(per_model, every)
    app = create_app(registry, api_key=api_keys, max_body=cfg.max_body_bytes, service=service,
                     limits=Limits(max_n=cfg.max_n, max_prompts=cfg.max_prompts), max_uploads=cfg.max_uploads,
                     graders_options=graders_options(cfg), metrics_route=cfg.metrics_port is None)
    for m in registry.models.values():
        rag = f", index {m.retriever.name!r}: top {m.retriever.k} chunks" if m.retriever else ""
        decode = getattr(m.engine.backend, "precision", None)
        decode = f", decode: {decode}" if decode else ""
        print(f"serving {m.id!r} (context {m.max_len} tokens{decode}{rag})", file=sys.stderr)
    if len(api_keys.projects) > 1:  # names only: a key is never printed
        print(f"projects (one per API key): {', '.join(api_keys.projects)}", file=sys.stderr)
    print(f"OpenAI-compatible API at http://{cfg.host}:{cfg.port}/v1", file=sys.stderr)
    if cfg.metrics_port is not None:
        from tailor.serve import metrics

        metrics.serve_separately(app.state.meter, cfg.metrics_host or cfg.host, cfg.metrics_port)
        print(f"Prometheus metrics at http://{cfg.metrics_host or cfg.host}:{cfg.metrics_port}/metrics (no key)",
              file=sys.stderr)
    # uvicorn drains requests on SIGTERM, then re-raises the signal to the previous handler:
    # make that a no-op so a requested shutdown exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = _server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                    timeout_graceful_shutdown=cfg.shutdown_timeout), registry.stop)
    server.run()
    return 0


def _server(config, stop_generation, margin_s: float = 0.5):
    """uvicorn's Server, plus: a request still generating when the graceful shutdown runs out is
    ended by its engine `margin_s` before uvicorn's deadline, so its client gets a proper last
    chunk (finish_reason "stop", then [DONE]) rather than a connection cut mid-stream."""
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit and config.timeout_graceful_shutdown is not None:
                delay = max(0.0, config.timeout_graceful_shutdown - margin_s)
                timer = threading.Timer(delay, stop_generation)
                timer.daemon = True  # an idle server exits at once, not when the timer fires
                timer.start()
            super().handle_exit(sig, frame)

    return Server(config)


def _limits_file(path: str | None) -> dict:
    """--limits FILE: the tenant bounds as YAML keys (the Policy fields); unknown keys are an error."""
    if not path:
        return {}
    from tailor.errors import UsageError
    from tailor.service.policy import policy_keys

    values = {k.replace("-", "_"): v for k, v in config.read_yaml(path).items()}
    unknown = sorted(set(values) - policy_keys())
    if unknown:
        raise UsageError(f"--limits {path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                         f"{', '.join(sorted(policy_keys()))}.")
    return values


def _policy(cfg: ServeConfig, bounds: Policy, api_keys) -> Policy:
    """The tenant bounds (flags over --limits), with each project's own Hub token from the keys file."""
    import dataclasses

    from tailor.errors import UsageError

    values = dataclasses.asdict(bounds)
    problems = [f"--{k.replace('_', '-')} must be at least 1 (got {v})" for k, v in values.items()
                if k.startswith("max_") and v is not None and v < 1]
    if not 0 < cfg.max_project_share <= 1:
        problems.append(f"--max-project-share must be above 0 and at most 1 (got {cfg.max_project_share})")
    if problems:
        raise UsageError("; ".join(problems) + ".")
    values["push_tokens"] = api_keys.hub_tokens
    return Policy(**values)


def graders_options(cfg: ServeConfig) -> dict:
    from tailor.errors import UsageError
    from tailor.graders.sandbox import Limits as PythonLimits
    from tailor.serve.sampler import ExternalSampler

    if cfg.python_graders < 1:
        raise UsageError(f"--python-graders is {cfg.python_graders}; give at least 1.")
    if cfg.grader_url and not cfg.grader_url.startswith(("http://", "https://")):
        raise UsageError(f"--grader-url {cfg.grader_url!r}: give an http(s) URL ending in /v1.")
    return {"external": ExternalSampler(cfg.grader_url) if cfg.grader_url else None,
            "python_limits": PythonLimits(max_concurrent=cfg.python_graders)}


def webhook_options(cfg: ServeConfig) -> dict:
    """The operator's webhook settings, for tailor.service.webhooks.Webhooks."""
    import ipaddress

    from tailor.errors import UsageError

    secret = os.environ.get("TAILOR_WEBHOOK_SECRET")
    if cfg.webhook_secret_file:
        try:
            secret = open(os.path.expanduser(cfg.webhook_secret_file)).read().strip()
        except OSError as exc:
            raise UsageError(f"--webhook-secret-file {cfg.webhook_secret_file}: cannot read it ({exc.strerror}).") \
                from exc
    nets = cfg.webhook_allow_network or []
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise UsageError(f"--webhook-allow-network {net!r}: not a network ({exc}); give a CIDR like "
                             "10.0.0.0/8.") from exc
    return {"operator_urls": cfg.webhook or [], "operator_secret": secret, "allow_networks": nets}


def open_retrievers(cfg: ServeConfig, ids: list[str]) -> tuple[dict, object]:
    """({model id: Retriever} from --rag, the --index Retriever or None), each index opened and
    its embedder loaded once, before the models: a bad flag or a missing index fails fast."""
    from pathlib import Path

    from tailor.errors import UsageError
    from tailor.rag.retrieve import Retriever, check_k

    check_k(cfg.rag_k, "--rag-k")
    wanted: dict[str, str] = {}
    for spec in cfg.rag or []:
        model_id, sep, path = spec.partition("=")
        if not sep or not model_id or not path:
            raise UsageError(f"--rag {spec!r}: give MODEL=INDEX, e.g. --rag {ids[0]}=docs-index.")
        if model_id not in ids:
            raise UsageError(f"--rag {spec!r}: no served model has the id {model_id!r}; "
                             f"the ids are {', '.join(ids)} (set them with --name).")
        if model_id in wanted:
            raise UsageError(f"--rag gives model {model_id!r} two indexes; give one.")
        wanted[model_id] = path
    opened: dict[Path, Retriever] = {}  # models that name the same index share it

    def open_(path: str) -> Retriever:
        key = Path(path).expanduser().resolve()
        if key not in opened:
            opened[key] = Retriever.open(key, k=cfg.rag_k, style=cfg.rag_style)
        return opened[key]

    per_model = {model_id: open_(path) for model_id, path in wanted.items()}
    return per_model, open_(cfg.index) if cfg.index else None
