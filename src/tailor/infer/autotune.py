"""The precision the engine decodes in on this CPU, chosen by measuring it, once per CPU.

Which precision decodes fastest depends on the CPU, not on a flag it has: on an AMD EPYC with
AVX512-BF16, fp16 weights through torch's reduced-precision GEMV stream faster than bf16 in
oneDNN's layout, which beats fp32 by 2x; on an Intel Xeon with AMX, bf16's batch-1
matrix-vector product reads weights at a quarter of fp32's speed while its batched matmuls are
several times faster. So with `--dtype auto` on a CPU the engine times, at first load, decode steps of a model with the
real shapes (random weights, enough layers to outgrow the cache) in each candidate plan, at one
row (one sequence decoding) and at ROWS rows (a batch of sequences decoding, or a prompt being
prefilled: either way every weight meets several rows), and takes:

- among the plans as fast as the fastest at one row (within 3%, the measurement's noise), the
  fastest at ROWS rows. fp32 is a candidate, so one sequence never decodes slower than in fp32;
- `fp32+bf16` and `fp16+bf16` keep two weight copies: fp32 or fp16 for one row, bf16 for more
  (fp16's fast GEMV is slow as a GEMM: a prompt's prefill took 4x bf16's). They run their
  one-row twin's very kernels, so they count as fast as it at one row, and are candidates only
  while both copies fit in a quarter of the available memory.

The timings are cached in $TAILOR_HOME/autotune/, one file per CPU model and flags, torch
version, threads (and whether OpenMP's threads spin) and model shapes; later loads read them
(delete the folder to measure again). `--dtype float32` or `--dtype bfloat16` skips all this and
is what it says.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
VERSION = 1  # bumped when what is measured changes, so older caches are measured again
CONTEXT = 128  # tokens already in the cache while a decode step is timed (a chat turn)
ROWS = 8  # "several rows": 8 sequences decoding at once, or an 8-token piece of a prompt
ROUNDS, REPS = 4, 4  # rounds alternate between the plans; the best round counts (noise is one-sided)
NEAR = 1.03  # "as fast at one row": within 3% of the fastest
KEEP = 1.25  # plans timed at ROWS rows: within this of the fastest at one row (one round's noise)


@dataclass(frozen=True)
class Plan:
    """How the engine's forward holds its weights and runs a step (see infer.llama.LlamaForward)."""

    name: str
    weights: str  # the matmul weights' dtype
    residual: str  # the residual stream's, the KV cache's and attention's dtype
    pack: bool = True  # bf16 weights in oneDNN's blocked layout
    single: str | None = None  # a second weight copy for one-row steps (fp32+bf16, fp16+bf16)
    quantize: str | None = None

    @property
    def load_dtype(self) -> str:
        """The dtype to load the Hugging Face model in: fp32 when any part runs in fp32."""
        return "float32" if "float32" in (self.weights, self.residual, self.single) else self.weights

    def forward(self, model, max_len: int):
        from tailor.infer.llama import LlamaForward

        fw = LlamaForward(model, max_len, getattr(torch, self.weights), residual=getattr(torch, self.residual),
                          single=getattr(torch, self.single) if self.single else None, pack=self.pack)
        if self.quantize == "int8":
            from tailor.infer.quant import quantize_forward

            quantize_forward(fw)
        fw.plan = self
        return fw


def candidates(quantize: str | None) -> list[Plan]:
    if quantize == "int8":  # int8 weights either way; what differs is the activations' dtype
        return [Plan("int8", "bfloat16", "bfloat16", pack=False, quantize="int8"),
                Plan("int8-fp32", "float32", "float32", pack=False, quantize="int8")]
    from tailor.infer.llama import _onednn_ok

    # fp16 weights run torch's reduced-precision GEMV (fp32 accumulation), which streams weights
    # faster than bf16's on some CPUs; the residual stays fp32, so only matmul inputs are rounded
    plans = [Plan("fp32", "float32", "float32"), Plan("bf16", "bfloat16", "bfloat16"),
             Plan("fp16", "float16", "float32")]
    if _onednn_ok():  # oneDNN's packed layout is one bf16 kernel, torch's own matmul the other
        plans.append(Plan("bf16-unpacked", "bfloat16", "bfloat16", pack=False))
    plans += [Plan("fp32+bf16", "bfloat16", "float32", single="float32"),  # two copies: one row in
              Plan("fp16+bf16", "bfloat16", "float32", single="float16")]  # fp32/fp16, more in bf16
    return plans


@dataclass
class Choice:
    plan: Plan
    estimates: dict  # plan name -> {"1": ms per step of one row, "8": of ROWS rows} for the whole model
    measured_now: bool
    path: Path

    def describe(self) -> str:
        from tailor import cpu

        est, rows = self.estimates, str(ROWS)
        mine = est[self.plan.name]
        others = ", ".join(f"{n} {e['1']:.1f}" for n, e in est.items() if n != self.plan.name)
        fp32 = est.get("fp32", {}).get("1")
        text = (f"decode precision {self.plan.name} on {cpu.name()} ({cpu.kind()}), "
                f"{'measured now' if self.measured_now else 'measured before'}: {mine['1']:.1f} ms per token "
                f"decoding one sequence (others: {others})" + (f", {mine['1'] / fp32:.2f}x fp32's time" if fp32 else ""))
        if rows in mine:
            others = ", ".join(f"{n} {e[rows]:.1f}" for n, e in est.items() if n != self.plan.name and rows in e)
            text += f"; {mine[rows]:.1f} ms per step of {ROWS} rows (others: {others or 'not timed'})"
        return text + f"; cached in {self.path}"


def choose(config, *, quantize: str | None = None) -> Choice:
    """The plan for an engine over a model of `config` on this CPU (measured once, then cached)."""
    plans = candidates(quantize)
    path = _cache_path(config, quantize)
    times = _read(path, plans)
    measured_now = times is None
    if times is None:
        t = time.perf_counter()
        times = measure(config, plans, ROWS)
        _write(path, {"key": _key(config, quantize), "times": times, "seconds": round(time.perf_counter() - t, 1)})
    estimates = {p.name: {b: t["head_ms"] + config.num_hidden_layers * t["layer_ms"] for b, t in times[p.name].items()}
                 for p in plans}  # a plan dropped while measuring has no estimate at ROWS rows
    allowed = [p for p in plans if p.single is None or _both_copies_fit(config)]
    choice = Choice(decide(allowed, estimates), estimates, measured_now, path)
    # the first time on a CPU is news (and took seconds); later loads say it at debug level
    log.log(logging.INFO if measured_now else logging.DEBUG, choice.describe())
    return choice


def decide(plans: list[Plan], estimates: dict) -> Plan:
    """Among the plans within NEAR of the fastest at one row, the fastest at ROWS rows. A
    two-copy plan runs its twin's kernels for one row (fp16+bf16: fp16's), so it is as fast as
    that twin there, whatever noise the separate timings caught."""
    one = {p.name: estimates[p.name]["1"] for p in plans}
    for p in plans:
        twin = _twin(p, plans)
        if twin is not None:
            one[p.name] = min(one[p.name], one[twin.name])
    best = min(one.values())  # fp32 is a plan: this is at most fp32's
    near = [p for p in plans if one[p.name] <= best * NEAR]
    return min(near, key=lambda p: (estimates[p.name].get(str(ROWS), float("inf")), one[p.name]))


def _twin(plan: Plan, plans: list[Plan]) -> Plan | None:
    """The one-copy plan whose kernels a two-copy plan runs for one row (fp16+bf16: fp16)."""
    if plan.single is None:
        return None
    return next((q for q in plans if q.single is None and q.weights == plan.single and q.residual == plan.residual),
                None)


# -- measuring -------------------------------------------------------------------------------

def measure(config, plans: list[Plan], batch: int) -> dict:
    """plan name -> {"1": {head_ms, layer_ms}, "<batch>": ...}: the output head's time and one
    decoder layer's share of a decode step, alternating between the plans round after round and
    keeping each one's best round. The model measured has the real shapes and enough layers that
    their weights outgrow the CPU's last-level cache twice over (a decode step streams its weights
    from memory; one layer alone would sit in cache and favour other kernels). Batch 1 first; a
    plan more than twice the best there after one round is dropped, and only plans that may still
    be chosen (KEEP of the best at batch 1) are timed at `batch` rows (that many sequences)."""
    layers = _layers_to_measure(config)
    model = _model(config, layers)
    forwards = {p.name: p.forward(model, CONTEXT + 2) for p in plans}
    del model
    # the steps attend over CONTEXT cached positions; what the cache holds (zeros) costs the same
    # as real keys, and a prefill of each slot would take longer than the timing itself
    out: dict = {name: {} for name in forwards}
    live = list(forwards)
    for b in sorted({1, batch}):
        best = {name: [float("inf"), float("inf")] for name in live}
        for r in range(ROUNDS):
            for name in live:
                head, step = _time_step(forwards[name], b, config.hidden_size)
                best[name] = [min(best[name][0], head), min(best[name][1], step / layers)]
            if r == 0 and b == 1:
                fastest = min(_total(config, t) for t in best.values())
                live = [n for n in live if _total(config, best[n]) <= 2 * fastest]
        for name in best:  # a plan dropped after one round keeps that round's figure
            out[name][str(b)] = {"head_ms": round(best[name][0] * 1e3, 4), "layer_ms": round(best[name][1] * 1e3, 4)}
        fastest = min(_total(config, best[n]) for n in live)
        kept = {n for n in live if _total(config, best[n]) <= KEEP * fastest}
        twins = {p.name: _twin(p, plans) for p in plans}
        live = [n for n in live if n in kept or (twins[n] is not None and twins[n].name in kept)]
    return out


def _layers_to_measure(config) -> int:
    """Layers whose bf16 weights fill twice the last-level cache (at least one, at most the model's)."""
    from tailor import cpu

    per_layer = 2 * _layer_params(config)
    return max(1, min(config.num_hidden_layers, -(-2 * cpu.last_level_cache() // per_layer)))


def _total(config, head_layer) -> float:
    return head_layer[0] + config.num_hidden_layers * head_layer[1]


def _time_step(fw, b: int, hidden: int) -> tuple[float, float]:
    """(seconds of the output head, seconds of the decode step without it) for `b` sequences."""
    x = torch.randn(b, hidden).to(fw.residual)
    head = _per_call(lambda: fw._logits(x))
    fw._logits = _no_head  # the step's layers alone (an instance attribute shadows the method)
    try:
        layer = _per_call(lambda: fw.decode(list(range(b)), [1] * b, [CONTEXT] * b))
    finally:
        del fw._logits
    return head, layer


def _no_head(x):
    return x


def _per_call(fn) -> float:
    with torch.inference_mode():
        fn()
        t = time.perf_counter()
        for _ in range(REPS):
            fn()
        return (time.perf_counter() - t) / REPS


def _model(config, layers: int):
    """The model's architecture with `layers` decoder layers and random weights (seeded: the same
    numbers every time, so no run meets denormals another does not)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = layers
    for attr in ("layer_types", "max_window_layers"):  # per-layer lists must match the layers kept
        if isinstance(getattr(cfg, attr, None), list):
            setattr(cfg, attr, getattr(cfg, attr)[:layers])
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    finally:
        torch.random.set_rng_state(state)


# -- the cache -------------------------------------------------------------------------------

def _key(config, quantize: str | None) -> dict:
    from tailor import cpu

    shape = {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                   "num_attention_heads", "num_key_value_heads", "head_dim",
                                                   "vocab_size", "tie_word_embeddings", "attention_bias")}
    return {"version": VERSION, "cpu": cpu.name(), "flags": sorted(cpu.flags() or ()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # spinning or not
            "shape": shape, "rows": ROWS, "quantize": quantize}


def _cache_path(config, quantize: str | None) -> Path:
    from tailor.models import tailor_home

    digest = hashlib.sha256(json.dumps(_key(config, quantize), sort_keys=True).encode()).hexdigest()[:16]
    return tailor_home() / "autotune" / f"decode-{digest}.json"


def _read(path: Path, plans: list[Plan]) -> dict | None:
    """The cached timings, or None when missing, unreadable or not covering every plan."""
    try:
        times = json.loads(path.read_text())["times"]
        if all("1" in times.get(p.name, {}) for p in plans):
            return times
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write(path: Path, record: dict) -> None:
    """Atomically; a cache that cannot be written only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the decode measurement in %s: %s", path, exc)


def _layer_params(config) -> int:
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return h * head_dim * (2 * heads + 2 * kv) + 3 * h * inter


def _both_copies_fit(config) -> bool:
    """fp32 and bf16 weights (plus oneDNN's packed copy; fp16+bf16 takes less) in at most a quarter
    of the available memory."""
    from tailor import cpu

    params = config.num_hidden_layers * _layer_params(config) + config.vocab_size * config.hidden_size
    return params * (4 + 2 + 2) <= cpu.available_memory() / 4
