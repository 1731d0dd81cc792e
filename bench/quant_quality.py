"""Weight-only int8 (tailor.infer.quant) against bf16, on the real default model:

  quality  - bf16 vs int8 logits over rendered chats (examples/pirate.jsonl): top-1 agreement
             (% of positions with the same argmax) and the loss delta (mean NLL int8 - bf16),
             on every next-token position and on the assistant's tokens alone;
  kernels  - one projection at SmolLM2-135M's decode shapes (M = 1, 4, 8): bf16 Dense (oneDNN),
             Int8Dense (_weight_int8pack_mm), dequantise + F.linear, fbgemm dynamic int8
             (quantises activations too, so it is a reference, not a candidate for weight-only);
  decode   - the engine at batch 1, bf16 vs quantize_forward'ed (64 greedy tokens): tokens/s;
  step     - one decode step's projections at M=1 (every layer's qkv, o, gate_up, down, then
             lm_head): ms/token, bf16 Dense vs Int8Dense.

    .venv/bin/python bench/quant_quality.py [--only quality,kernels,step,decode] [--chats 40] [--reps 7] [--threads N]

The machine is shared: A and B alternate inside each repetition and medians are reported.
Prints one JSON line per measurement. The engine wiring (`--quantize int8`) is not used here:
quality swaps the HF model's nn.Linear modules for Int8Dense wrappers.
"""

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from tailor.infer.llama import Dense
from tailor.infer.quant import Int8Dense, quantize_weight

ROOT = Path(__file__).resolve().parent.parent


class _Int8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.int8 = Int8Dense(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())

    def forward(self, x):
        return self.int8(x)


class _DynamicInt8Linear(torch.nn.Module):
    """fbgemm's dynamic int8 linear: activations are quantised too (per tensor, per call)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.fn = _fbgemm(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x):
        y = self.fn(x.reshape(-1, x.shape[-1])).to(x.dtype).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _swap_linears(model, wrap=_Int8Linear) -> int:
    """Every nn.Linear (projections and lm_head) -> `wrap`; embeddings stay as they are."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for name, mod in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, wrap(mod))
    return len(targets)


def _chats(tokenizer, n: int):
    from tailor.data.formats import read
    from tailor.data.render import render_conversation

    convs = read(ROOT / "examples" / "pirate.jsonl").conversations[:n]
    return [render_conversation(tokenizer, c) for c in convs]


@torch.inference_mode()
def _scores(model, chats):
    """Per position (next-token argmax, NLL, trained?) over all chats, concatenated."""
    top, nll, trained = [], [], []
    for ids, labels in chats:
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(ids[1:])
        top.append(logits.argmax(-1))
        nll.append(F.cross_entropy(logits, target, reduction="none"))
        trained.append(torch.tensor(labels[1:]) != -100)
    return torch.cat(top), torch.cat(nll), torch.cat(trained)


def _fake_q8_0(model) -> None:
    """llama.cpp's q8_0 in simulation: a scale per block of 32 weights along K (finer than one
    per row), weights rounded and stored back as bf16. A reference point, not a tailor path."""
    with torch.no_grad():
        for mod in list(model.modules()):
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.float()
                blocks = w.view(w.shape[0], -1, 32)
                scale = (blocks.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12).half().float()
                q = (blocks / scale).round().clamp(-127, 127) * scale
                mod.weight = torch.nn.Parameter(q.view_as(w).to(mod.weight.dtype))  # unties lm_head


def _compare(a, b, mask) -> dict:
    same = (a[0] == b[0]).float()
    return {"top1_agreement_pct": round(100 * same.mean().item(), 2),
            "top1_agreement_assistant_pct": round(100 * same[mask].mean().item(), 2),
            "loss_delta": round((b[1] - a[1]).mean().item(), 4),
            "loss_delta_assistant": round((b[1][mask] - a[1][mask]).mean().item(), 4)}


def quality(model_ref: str, n_chats: int) -> None:
    """int8 against bf16, beside two yardsticks: bf16 against fp32 (the noise bf16 itself adds)
    and a q8_0-style block quantisation against bf16 (what llama.cpp's q8_0 costs)."""
    import copy

    from tailor import models
    from tailor.infer.loading import load_hf_model

    tokenizer = models.load_tokenizer(model_ref)
    model = load_hf_model(models.local_folder(model_ref), "float32", "cpu")
    chats = _chats(tokenizer, n_chats)
    fp32 = _scores(model, chats)
    model = model.to(torch.bfloat16)
    bf16 = _scores(model, chats)
    q8 = copy.deepcopy(model)
    _fake_q8_0(q8)
    q8_0 = _scores(q8, chats)
    del q8
    dyn = None
    if _fbgemm(torch.ones(16, 32)) is not None:
        dyn_model = copy.deepcopy(model)
        _swap_linears(dyn_model, _DynamicInt8Linear)
        dyn = _scores(dyn_model, chats)
        del dyn_model
    swapped = _swap_linears(model)
    int8 = _scores(model, chats)
    mask = bf16[2]
    print(json.dumps({
        "what": "int8_quality", "model": model_ref, "chats": len(chats), "positions": int(mask.numel()),
        "assistant_positions": int(mask.sum()), "linears_int8": swapped,
        "nll": {"fp32": round(fp32[1].mean().item(), 4), "bf16": round(bf16[1].mean().item(), 4),
                "int8": round(int8[1].mean().item(), 4), "q8_0_sim": round(q8_0[1].mean().item(), 4)},
        "int8_vs_bf16": _compare(bf16, int8, mask), "bf16_vs_fp32": _compare(fp32, bf16, mask),
        "int8_vs_fp32": _compare(fp32, int8, mask), "q8_0_sim_vs_bf16": _compare(bf16, q8_0, mask),
        "fbgemm_dynamic_int8_vs_bf16": dyn and _compare(bf16, dyn, mask)}), flush=True)


def _median_us(fns: dict, calls: int, reps: int) -> dict:
    """Median microseconds per call of each fn, the fns alternating inside every repetition."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                f()
            times[k].append((time.perf_counter() - t) / calls * 1e6)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


# SmolLM2-135M: hidden 576, 9 heads + 3 kv heads of 64, intermediate 1536, vocab 49152, 30 layers
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
N_LAYERS = 30


def _fbgemm(w: torch.Tensor):
    q, s = quantize_weight(w)
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated: fine for a reference row
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros(len(s), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    except (RuntimeError, AttributeError):
        return None
    return lambda x: torch.ops.quantized.linear_dynamic(x.float(), packed)


def _candidates(w: torch.Tensor, x: torch.Tensor) -> dict:
    bf16, int8, fb = Dense(w), Int8Dense(w), _fbgemm(w)
    q, s = int8.weight, int8.scale.to(torch.bfloat16)
    fns = {"bf16_dense": lambda: bf16(x), "int8_dense": lambda: int8(x),
           "dequant_linear": lambda: F.linear(x, q.to(torch.bfloat16)) * s}
    if fb is not None:
        fns["fbgemm_dynamic_int8"] = lambda: fb(x)
    return fns


@torch.inference_mode()
def kernels(reps: int) -> None:
    """Each projection alone. Its weight stays in cache between calls, which flatters the small
    ones: `step` streams every weight from memory, as decode does."""
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16) * 0.05
        for m in (1, 4, 8):
            fns = _candidates(w, torch.randn(m, k, dtype=torch.bfloat16))
            calls = max(3, int(300 * 576 * 576 / (n * k)))
            print(json.dumps({"what": "int8_kernel_us", "proj": name, "n": n, "k": k, "m": m,
                              **_median_us(fns, calls, reps)}), flush=True)


@torch.inference_mode()
def step(reps: int) -> None:
    """Projections of one decode token; attention, norms and Python are not counted."""
    torch.manual_seed(0)
    ws = [torch.randn(*SHAPES[p], dtype=torch.bfloat16) * 0.05 for _ in range(N_LAYERS)
          for p in ("qkv", "o", "gate_up", "down")] + [torch.randn(*SHAPES["lm_head"], dtype=torch.bfloat16) * 0.05]
    inputs = {k: torch.randn(1, k, dtype=torch.bfloat16) for k in (576, 1536)}

    def run(denses):
        def go():
            for d in denses:
                d(inputs[d.weight.shape[1]])
        return go

    bf16 = [Dense(w) for w in ws]
    int8 = [Int8Dense(w) for w in ws]
    res = _median_us({"bf16": run(bf16), "int8": run(int8)}, 5, reps)
    head = _median_us({"bf16": run(bf16[-1:]), "int8": run(int8[-1:])}, 10, reps)
    mb = {"bf16": sum(d.weight.nbytes for d in bf16) / 2**20, "int8": sum(d.nbytes for d in int8) / 2**20}
    print(json.dumps({"what": "int8_decode_step_projections", "threads": torch.get_num_threads(),
                      "bf16_ms_per_token": round(res["bf16"] / 1000, 2),
                      "int8_ms_per_token": round(res["int8"] / 1000, 2),
                      "speedup": round(res["bf16"] / res["int8"], 2),
                      "lm_head_ms": {k: round(v / 1000, 2) for k, v in head.items()},
                      "weights_mib": {k: round(v, 1) for k, v in mb.items()}}), flush=True)


def decode(model_ref: str, reps: int, new: int = 64, prompt_len: int = 50) -> None:
    """The engine at batch 1 (bench/run_tailor_generate.py's work: greedy, 64 new tokens after a
    50-token prompt), bf16 against the same engine after quantize_forward, alternating."""
    from tailor.infer.loading import load_engine
    from tailor.infer.sampling import SamplingParams

    bf16 = load_engine(model_ref, dtype="bfloat16", max_batch=1).engine
    if not hasattr(bf16.backend, "layers"):
        print(json.dumps({"what": "int8_engine_decode", "skipped": "the HF fallback forward, not tailor's"}))
        return
    int8 = load_engine(model_ref, dtype="bfloat16", max_batch=1, quantize="int8").engine  # quantize_forward'ed
    ids = torch.randint(100, 40000, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_new_tokens=new, temperature=0, stop_token_ids=[])

    def tok_s(engine):
        t = time.perf_counter()
        n = sum(1 for e in engine.generate(ids, params) if e.token is not None)
        return n / (time.perf_counter() - t)

    tok_s(bf16), tok_s(int8)  # warm-up
    runs = [(tok_s(bf16), tok_s(int8)) for _ in range(reps)]
    # agreement on a real chat: a random prompt's next tokens are near-ties from the start
    chat = bf16.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the sea and ships."}],
                                              add_generation_prompt=True, tokenize=True, return_dict=False)
    a, b = ([e.token for e in engine.generate(list(chat), params) if e.token is not None] for engine in (bf16, int8))
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(json.dumps({"what": "int8_engine_decode", "threads": torch.get_num_threads(),
                      "bf16_tok_s": round(statistics.median(r[0] for r in runs), 1),
                      "int8_tok_s": round(statistics.median(r[1] for r in runs), 1),
                      "median_speedup": round(statistics.median(b / a for a, b in runs), 2),
                      "greedy_tokens_before_first_difference": agree, "of": len(a)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--only", default="quality,kernels,step,decode")
    ap.add_argument("--chats", type=int, default=40)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for kernels/step (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = set(a.only.split(","))
    if "quality" in parts:
        quality(a.model, a.chats)
    if "kernels" in parts:
        kernels(a.reps)
    if "step" in parts:
        step(a.reps)
    if "decode" in parts:
        decode(a.model, a.reps)


if __name__ == "__main__":
    main()
