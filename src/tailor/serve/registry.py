"""The models a server serves, by id. Each base model is loaded once, with one engine; LoRA
adapters on that base are registered with its engine and chosen per request, so a batch can
mix the base and several adapters."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tailor.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    id: str
    engine: object  # tailor.infer.engine.Engine
    tokenizer: object
    adapter: int
    stop_ids: list[int]
    created: int = field(default_factory=lambda: int(time.time()))
    warning: str | None = None

    @property
    def max_len(self) -> int:
        return self.engine.max_len

    def card(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "tailor"}


@dataclass
class _Base:
    engine: object
    model: object
    next_adapter: int = 1


class Registry:
    def __init__(self):
        self.models: dict[str, ServedModel] = {}
        self.engines: list = []

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    @classmethod
    def load(cls, refs: list[str], names: list[str] | None = None, *, dtype: str = "auto",
             device: str | None = None, max_batch: int = 16, max_len: int | None = None,
             chat_template: str | None = None) -> Registry:
        """Load every reference; adapters share their base's weights and engine."""
        names = list(names or [])
        if len(names) > len(refs):
            raise UsageError(f"{len(names)} --name values for {len(refs)} models; give at most one name per model.")
        ids = [names[i] if i < len(names) else ref.rstrip("/") for i, ref in enumerate(refs)]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise UsageError(f"Model id(s) {', '.join(dupes)} given twice; set distinct ids with --name.")
        reg = cls()
        bases: dict[Path, _Base] = {}
        opts = dict(dtype=dtype, device=device, max_batch=max_batch, max_len=max_len)
        for ref, model_id in zip(refs, ids):
            reg.models[model_id] = reg._load_one(ref, model_id, bases, opts, chat_template)
        return reg

    def _load_one(self, ref, model_id, bases, opts, chat_template) -> ServedModel:
        from tailor import models
        from tailor.data.templates import ensure_chat_template
        from tailor.infer import loading

        src = models.resolve(ref)
        tokenizer = models.load_tokenizer(ref)
        warning = ensure_chat_template(tokenizer, chat_template)
        if warning:
            log.warning("%s: %s", model_id, warning)
        if src.kind != "adapter":
            folder = models.local_folder(ref)
            base = self._base(folder, bases, tokenizer, opts)
            return ServedModel(model_id, base.engine, tokenizer, 0,
                               loading.stop_ids(tokenizer, [folder], base.model), warning=warning)
        base_folder = models.local_folder(models.adapter_base(src.path))
        lora = loading.read_lora(src.path)
        stops = [src.path, base_folder]
        if lora is not None:
            base = self._base(base_folder, bases, tokenizer, opts)
            if getattr(base.engine.backend, "lora_capable", False):
                adapter_id = base.next_adapter
                base.engine.backend.add_lora(adapter_id, lora.pairs)
                base.next_adapter += 1
                return ServedModel(model_id, base.engine, tokenizer, adapter_id,
                                   loading.stop_ids(tokenizer, stops, base.model), warning=warning)
        log.warning("%s: adapter is not a plain LoRA; serving it merged into its own copy of the base", model_id)
        model = loading.merged_adapter_model(src.path, base_folder, tokenizer, opts["dtype"], opts["device"])
        engine = self._engine(model, tokenizer, opts)
        return ServedModel(model_id, engine, tokenizer, 0, loading.stop_ids(tokenizer, stops, model), warning=warning)

    def _base(self, folder: Path, bases: dict, tokenizer, opts) -> _Base:
        from tailor.infer import loading

        key = Path(folder).resolve()
        if key not in bases:
            model = loading.load_hf_model(key, opts["dtype"], opts["device"])
            bases[key] = _Base(self._engine(model, tokenizer, opts), model)
        return bases[key]

    def _engine(self, model, tokenizer, opts):
        from tailor.infer import loading
        from tailor.infer.engine import Engine

        backend = loading.make_backend(model, loading.context_length(model.config, opts["max_len"]))
        engine = Engine(backend, tokenizer, opts["max_batch"])
        self.engines.append(engine)
        return engine
