"""The models a server serves, by id. Each base model is loaded once, with one engine; LoRA
adapters on that base are registered with its engine and chosen per request, so a batch can
mix the base and several adapters.

Models the fine-tuning service publishes (fine-tunes and their checkpoints) are known at once
but loaded on first use: a model that needs its own engine (a full fine-tune) joins a
least-recently-used set of at most `max_loaded` such engines, and adapters a set of at most
`max_adapters`, evicting only what no request is using. So a restart with many published
models starts in seconds, and memory holds what is in use, not everything ever trained.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tailor.errors import UsageError

log = logging.getLogger(__name__)
_RUN_OUTPUT = re.compile(r"(final|checkpoint-\d+)")  # the folders `tailor train --out RUN` writes


@dataclass
class ServedModel:
    id: str
    engine: object  # tailor.infer.engine.Engine
    tokenizer: object
    adapter: int
    stop_ids: list[int]
    created: int = field(default_factory=lambda: int(time.time()))
    warning: str | None = None
    owned_by: str = "tailor"
    project: str | None = None  # a fine-tune belongs to the project that made it; None: served to all
    retriever: object = None  # a tailor.rag.retrieve.Retriever: chunks of its index go into each prompt

    def visible_to(self, project: str | None) -> bool:
        return self.project is None or self.project == project

    @property
    def max_len(self) -> int:
        return self.engine.max_len

    def card(self) -> dict:
        card = {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}
        if self.retriever is not None:  # the index's folder name, never its path
            r = self.retriever
            card["tailor"] = {"rag": {"index": r.name, "chunks": r.chunks, "k": r.k, "style": r.style}}
        return card


@dataclass
class Published:
    """A model the service made: listed and found at once, loaded when first asked for."""

    id: str
    ref: str
    owned_by: str = "tailor"
    project: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def visible_to(self, project: str | None) -> bool:
        return self.project is None or self.project == project

    def card(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


class Unavailable(Exception):
    """A published model cannot be loaded now (every loaded slot is busy, or memory is short)."""


@dataclass
class _Base:
    engine: object
    model: object
    next_adapter: int = 1


class Registry:
    def __init__(self, *, max_loaded: int = 2, max_adapters: int = 32):
        self.models: dict[str, ServedModel] = {}
        self.engines: list = []
        self.refs: dict[str, str] = {}  # model id -> the reference it was loaded from
        self.published: dict[str, Published] = {}
        self.max_loaded, self.max_adapters = max_loaded, max_adapters
        self._pinned: set[int] = set()  # id() of the engines of models given on the command line
        self._engine_lru: OrderedDict[int, object] = OrderedDict()  # on-demand engines, oldest use first
        self._adapter_lru: OrderedDict[str, None] = OrderedDict()  # published adapter ids on pinned engines
        self._load_lock = threading.Lock()
        self._started = False
        self.retriever = None  # what models added while running (fine-tunes) retrieve from: --index
        # what add() needs to load more models into the same engines: bases, options, template
        self._later = ({}, dict(dtype="auto", device=None, max_batch=16, max_len=None, max_queue=None), None)

    def get(self, model_id: str, project: str | None = ...) -> ServedModel | None:
        """The model, or None when there is none by that id that `project` may see (no project
        given: any model; requests always give theirs). A published model not loaded yet is
        loaded now, which takes seconds: from a request, call this off the event loop unless
        `loaded(model_id)`. Raises Unavailable when it cannot be loaded now."""
        m = self.models.get(model_id)
        if m is None:
            entry = self.published.get(model_id)
            if entry is None or not (project is ... or entry.visible_to(project)):
                return None
            m = self._load_published(entry)
        if not (project is ... or m.visible_to(project)):
            return None
        self._touch(m)
        return m

    def loaded(self, model_id: str) -> bool:
        return model_id in self.models or model_id not in self.published

    def knows(self, model_id: str, project: str | None) -> bool:
        """Whether `project` may use `model_id`, without loading anything."""
        m = self.models.get(model_id) or self.published.get(model_id)
        return m is not None and m.visible_to(project)

    def visible(self, project: str | None) -> dict:
        """The models `project` may see (each has .card()): those served to all, and its own
        fine-tunes, loaded or not."""
        out = {k: m for k, m in self.published.items() if m.visible_to(project)}
        out.update({k: m for k, m in self.models.items() if m.visible_to(project)})
        return out

    def use_retrievers(self, per_model: dict, default=None) -> None:
        """Retrieval for each model id (`per_model`: id -> Retriever, from --rag), else `default`
        (--index), which models added later, the fine-tunes, get too."""
        unknown = sorted(set(per_model) - set(self.models))
        if unknown:
            raise UsageError(f"--rag names model(s) {', '.join(unknown)}, which are not served; "
                             f"the served ids are {', '.join(self.models)}.")
        self.retriever = default
        for model_id, m in self.models.items():
            m.retriever = per_model.get(model_id, default)

    def start(self) -> None:
        self._started = True
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    @classmethod
    def load(cls, refs: list[str], names: list[str] | None = None, *, dtype: str = "auto",
             device: str | None = None, max_batch: int = 16, max_len: int | None = None,
             chat_template: str | None = None, max_queue: int | None = None,
             quantize: str | None = None, max_share: float = 1.0, max_loaded: int = 2,
             max_adapters: int = 32) -> Registry:
        """Load every reference; adapters share their base's weights and engine. `max_queue`
        bounds each engine's waiting requests (None: unbounded); `max_share` is the fraction of
        an engine's running slots one project may hold while another waits; `max_loaded` and
        `max_adapters` bound the published models loaded at once (see `publish`)."""
        ids = model_ids(refs, names)
        reg = cls(max_loaded=max_loaded, max_adapters=max_adapters)
        bases: dict[Path, _Base] = {}
        opts = dict(dtype=dtype, device=device, max_batch=max_batch, max_len=max_len, max_queue=max_queue,
                    quantize=quantize, max_share=max_share)
        reg._later = (bases, opts, chat_template)
        for ref, model_id in zip(refs, ids):
            reg.models[model_id] = reg._load_one(ref, model_id, bases, opts, chat_template)
            reg.refs[model_id] = ref
        reg._pinned = {id(e) for e in reg.engines}
        return reg

    def publish(self, ref: str, model_id: str, *, owned_by: str = "tailor", project: str | None = None) -> Published:
        """Serve a trained model from now on, to `project` only when one is given; it loads on
        first use (`get`)."""
        entry = Published(model_id, ref, owned_by, project)
        self.published = {**self.published, model_id: entry}
        self.refs = {**self.refs, model_id: ref}
        return entry

    # ---- published models: loaded on first use, least recently used evicted ------------------

    def _load_published(self, entry: Published) -> ServedModel:
        with self._load_lock:
            if entry.id in self.models:  # another request loaded it meanwhile
                return self.models[entry.id]
            self._make_room(entry.ref)
            m = self.add(entry.ref, entry.id, owned_by=entry.owned_by, project=entry.project)
            m.created = entry.created
            if id(m.engine) in self._pinned:
                if m.adapter:
                    self._adapter_lru[m.id] = None
                    self._evict_adapters()
            else:
                self._engine_lru[id(m.engine)] = m.engine
            log.info("loaded %s on first use", entry.id)
            return m

    def _touch(self, m: ServedModel) -> None:
        if id(m.engine) in self._engine_lru:
            self._engine_lru.move_to_end(id(m.engine))
        if m.id in self._adapter_lru:
            self._adapter_lru.move_to_end(m.id)

    def _make_room(self, ref: str) -> None:
        """Evict idle on-demand engines until one more fits the count and the memory."""
        need = _weights_bytes(ref)
        while self._engine_lru and (len(self._engine_lru) >= self.max_loaded or need > _available_bytes()):
            idle = next((e for e in self._engine_lru.values() if e.busy == 0), None)
            if idle is None:
                raise Unavailable(f"all {len(self._engine_lru)} loaded fine-tunes are answering requests; retry shortly")
            self._evict_engine(idle)
        if need > _available_bytes():
            raise Unavailable("the server has not enough free memory to load this model now; retry later")

    def _evict_engine(self, engine) -> None:
        self._engine_lru.pop(id(engine), None)
        gone = [k for k, m in self.models.items() if m.engine is engine]
        self.models = {k: m for k, m in self.models.items() if m.engine is not engine}
        bases = self._later[0]
        for key in [k for k, b in bases.items() if b.engine is engine]:
            del bases[key]
        self.engines = [e for e in self.engines if e is not engine]
        engine.stop()
        log.info("unloaded %s (least recently used)", ", ".join(gone))

    def _evict_adapters(self) -> None:
        while len(self._adapter_lru) > self.max_adapters:
            victim = next((k for k in self._adapter_lru if not self.models[k].engine.holds(self.models[k].adapter)),
                          None)
            if victim is None:
                return  # every one is in use: the set shrinks as they finish
            m = self.models[victim]
            del self._adapter_lru[victim]
            self.models = {k: v for k, v in self.models.items() if k != victim}
            m.engine.backend.remove_lora(m.adapter)

    def add(self, ref: str, model_id: str, *, owned_by: str = "tailor", project: str | None = None) -> ServedModel:
        """Serve one more model while running (a fine-tune that just finished), to `project`
        only when one is given: an adapter joins its base's engine if that base is loaded;
        anything else gets an engine, started now if the registry is running."""
        n_engines = len(self.engines)
        m = self._load_one(ref, model_id, *self._later)
        m.owned_by, m.project, m.retriever = owned_by, project, self.retriever
        if self._started:
            for engine in self.engines[n_engines:]:
                engine.start()
        # swap in new dicts rather than insert: request handlers may be iterating the old ones
        self.models, self.refs = {**self.models, model_id: m}, {**self.refs, model_id: ref}
        return m

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
        load_dtype, plan = self._precision(base_folder, opts)
        model = loading.merged_adapter_model(src.path, base_folder, tokenizer, load_dtype, opts["device"])
        engine = self._engine(model, tokenizer, opts, plan)
        return ServedModel(model_id, engine, tokenizer, 0, loading.stop_ids(tokenizer, stops, model), warning=warning)

    def _base(self, folder: Path, bases: dict, tokenizer, opts) -> _Base:
        from tailor.infer import loading

        key = Path(folder).resolve()
        if key not in bases:
            load_dtype, plan = self._precision(key, opts)
            model = loading.load_hf_model(key, load_dtype, opts["device"])
            loading.fit_embeddings(model, tokenizer)  # the chatml fallback may have added tokens
            bases[key] = _Base(self._engine(model, tokenizer, opts, plan), model)
        loading.fit_embeddings(bases[key].model, tokenizer, shared=True)  # refuses ids past its table
        return bases[key]

    @staticmethod
    def _precision(folder: Path, opts):
        """(load dtype, plan) of an engine over the model in `folder` (infer.loading.engine_precision)."""
        from tailor.infer import loading

        return loading.engine_precision(folder, opts["dtype"], opts["device"], opts.get("quantize"))

    def _engine(self, model, tokenizer, opts, plan=None):
        from tailor.infer import loading
        from tailor.infer.engine import Engine

        backend = loading.make_backend(model, loading.context_length(model.config, opts["max_len"]),
                                       opts.get("quantize"), plan)
        loading.release_hf_weights(model, backend)
        engine = Engine(backend, tokenizer, opts["max_batch"], opts.get("max_queue"), opts.get("max_share", 1.0))
        self.engines.append(engine)
        return engine


def _weights_bytes(ref: str) -> int:
    """What loading `ref` may take: its weight files on disk (an adapter's base is counted only
    if it is not loaded; an upper bound when the server loads bf16 from fp32 files)."""
    path = Path(ref)
    if not path.is_dir():
        return 0
    if (path / "adapter_config.json").is_file():
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(f.stat().st_size
                                                                          for f in path.glob("*.bin"))


def _available_bytes() -> int:
    from tailor import cpu

    return cpu.available_memory()


def model_ids(refs: list[str], names: list[str] | None = None) -> list[str]:
    """The id of each served model: its --name, else a name that never shows a path (clients
    see ids in /v1/models). Derived ids that collide get -2, -3, ... in order."""
    names = list(names or [])
    if len(names) > len(refs):
        raise UsageError(f"{len(names)} --name values for {len(refs)} models; give at most one name per model.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"Model id(s) {', '.join(dupes)} given twice; set distinct ids with --name.")
    taken, ids = set(names), list(names)
    for ref in refs[len(names):]:
        stem = default_id(ref)
        model_id, k = stem, 2
        while model_id in taken:
            model_id, k = f"{stem}-{k}", k + 1
        taken.add(model_id)
        ids.append(model_id)
    return ids


def default_id(ref: str) -> str:
    """`default` and hub ids as given; a local folder by its name (a .gguf file by its stem), and
    a run's `final` or `checkpoint-N` folder by the run's name plus that suffix."""
    path = Path(ref).expanduser()
    if ref == "default" or not path.exists():  # anything else that is not local is a hub id
        return ref
    path = path.resolve()
    name = path.stem if path.is_file() else path.name
    if _RUN_OUTPUT.fullmatch(name) and path.parent.name:
        name = f"{path.parent.name}-{name}"
    return name
