"""`tailor serve [REF ...]`: serve models behind an OpenAI-compatible HTTP API.

Each REF is a model folder, a LoRA adapter folder (served on top of its base, which is loaded
once however many adapters use it), a .gguf file, a hub id, or `default`. Clients pick one per
request with the `model` field; ids are the --name values, else `default`, a hub id as given, or a
local model's folder name (`RUN-final` / `RUN-checkpoint-N` for a training run's outputs): never a path.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass

from tailor import config


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
    """auto (bf16 where the hardware is fast at it, fp16 on a CUDA GPU without bf16, else fp32), float32, bfloat16 or float16."""
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


def add_arguments(parser) -> None:
    parser.add_argument("refs", nargs="*", metavar="REF", default=None,
                        help="Models to serve (default: the embedded SmolLM2-135M-Instruct).")
    parser.add_argument("--name", action="append", dest="names", default=None, metavar="ID",
                        help="Model id for the REF in the same position (repeat once per REF; default: `default`, "
                             "the hub id, or the folder's name).")
    config.add_arguments(parser, ServeConfig, skip=("api_key",))
    parser.add_argument("--api-key", action="append", dest="api_key", default=argparse.SUPPRESS, metavar="KEY",
                        help=config.field_docs(ServeConfig)["api_key"])


def run(args) -> int:
    import logging

    import uvicorn
    from transformers.utils import logging as hf_logging

    from tailor.serve.app import Limits, create_app
    from tailor.serve.registry import Registry

    skip = ("command", "refs", "names")
    cfg = config.build(ServeConfig, {k: v for k, v in vars(args).items() if k not in skip})
    refs = args.refs or ["default"]
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from tailor.service import Service, keys

    # keys and the service first: a bad flag fails before the slow part, loading the models
    api_keys = keys.load(cfg.api_key, cfg.api_keys, os.environ.get("TAILOR_API_KEY"))
    service = Service(cfg.state, max_upload_bytes=cfg.max_upload_mb * 1024 * 1024, max_jobs=cfg.max_jobs,
                      train_threads=cfg.train_threads)
    registry = Registry.load(refs, args.names, dtype=cfg.dtype, max_batch=cfg.max_batch, max_len=cfg.max_len,
                             chat_template=cfg.chat_template, max_queue=cfg.max_queue)
    app = create_app(registry, api_key=api_keys, max_body=cfg.max_body_bytes, service=service,
                     limits=Limits(max_n=cfg.max_n, max_prompts=cfg.max_prompts))
    for m in registry.models.values():
        print(f"serving {m.id!r} (context {m.max_len} tokens)", file=sys.stderr)
    if len(api_keys.projects) > 1:  # names only: a key is never printed
        print(f"projects (one per API key): {', '.join(api_keys.projects)}", file=sys.stderr)
    print(f"OpenAI-compatible API at http://{cfg.host}:{cfg.port}/v1", file=sys.stderr)
    # uvicorn drains requests on SIGTERM, then re-raises the signal to the previous handler:
    # make that a no-op so a requested shutdown exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                timeout_graceful_shutdown=cfg.shutdown_timeout)
    return 0
