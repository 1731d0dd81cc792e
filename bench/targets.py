"""Every target of the performance issues, each as (target, config, per-round figures, met?), from
one run's figures (bench/.work/rows.json). A ratio always compares figures measured in the same
run, round by round; "met?" is yes when every round meets it, no when none does, mixed otherwise."""

from __future__ import annotations

LOSS_TOLERANCE = 0.02  # tailor's held-out loss within 2% of the peer's
LEARNED = 0.9  # "clearly below the base model": at most 90% of its held-out loss
MFU_TARGET = 0.5  # model FLOPs at least half the measured bf16 matmul peak
SERVE_TARGETS = {"1": 1.0, "8": 2.0, "16": 2.0}  # tailor serve / llama-cpp-python's server, tokens/s


def fmt(v, spec=",.4g") -> str:
    return "n/a" if v is None else format(v, spec)


def per_round(pairs, spec=".2f") -> tuple[str, list[float]]:
    """'a/b' ratios per round as text, and the ratios."""
    ratios = [a / b for a, b in pairs if a and b]
    return " / ".join(format(r, spec) + "x" for r in ratios) or "n/a", ratios


def met(values: list, ok) -> str:
    if not values:
        return "n/a"
    good = [ok(v) for v in values]
    return "yes" if all(good) else ("no" if not any(good) else "mixed")


def rows_of(found, config, tool):
    return sorted((r for r in found.get("train", []) if r["config"] == config and r["tool"] == tool),
                  key=lambda r: r["round"])


def by_round(found, config, key):
    """[(tailor's value, TRL bf16's value)] per round of one config."""
    ours, peer = rows_of(found, config, "tailor"), rows_of(found, config, "trl-bf16")
    return [(a.get(key), b.get(key)) for a, b in zip(ours, peer)]


def trained_configs(found) -> list[dict]:
    return [c for c in found.get("configs", []) if rows_of(found, c["name"], "tailor")]


# -- model FLOPs utilisation -----------------------------------------------------------------

def flops_per_token(found, config: dict) -> float | None:
    """Model FLOPs per trained-on token: 6N for full fine-tuning (forward, activation and weight
    gradients), 4N for LoRA (no weight gradients for the frozen base), plus attention: 12 x
    layers x attention width x the mean attended context (half the mean example, causal), the
    forward's 4 and the backward's 8. N counts every weight a matmul reads once (a tied
    embedding is the output head's matmul). Needs the model's shape (found["model_shape"])."""
    shape, n = found.get("model_shape"), found.get("n_params")
    mean = (found.get("mean_tokens") or {}).get(config["shape"])
    if not shape or not n or not mean:
        return None
    attention = 12 * shape["layers"] * shape["attention_width"] * mean / 2
    return (6 if config["method"] == "full" else 4) * n + attention


def mfu(found, config: dict, tokens_per_s: float | None) -> float | None:
    per_token = flops_per_token(found, config)
    peak = (found.get("peak") or {}).get("bf16_tflops")
    if per_token is None or not peak or not tokens_per_s:
        return None
    return per_token * tokens_per_s / (peak * 1e12)


# -- the targets -----------------------------------------------------------------------------

def target_rows(found: dict) -> list[tuple[str, str, str, str]]:
    out = []
    configs = trained_configs(found)
    names = [c["name"] for c in configs]
    for name in names:
        text, ratios = per_round(by_round(found, name, "tokens_per_s"))
        out.append(("training tokens/s >= 5x TRL-bf16", name, text, met(ratios, lambda r: r >= 5)))
    for c in configs:
        got = [mfu(found, c, r["tokens_per_s"]) for r in rows_of(found, c["name"], "tailor")]
        got = [g for g in got if g is not None]
        peer = [mfu(found, c, r["tokens_per_s"]) for r in rows_of(found, c["name"], "trl-bf16")]
        text = " / ".join(f"{g:.0%}" for g in got) or "n/a"
        if any(p is not None for p in peer):
            text += " (TRL-bf16: " + " / ".join(f"{p:.0%}" for p in peer if p is not None) + ")"
        out.append(("training MFU >= 50% of the measured bf16 matmul peak", c["name"], text,
                    met(got, lambda m: m >= MFU_TARGET)))
    for name in names:
        text, ratios = per_round(by_round(found, name, "peak_rss_mb"))
        out.append(("peak RSS <= 0.5x TRL-bf16", name, text, met(ratios, lambda r: r <= 0.5)))
    for name in names:
        diffs = [a / b - 1 for a, b in by_round(found, name, "val_loss") if a and b]
        out.append(("held-out loss within 2% of TRL-bf16 (equal tokens)", name,
                    " / ".join(f"{d:+.1%}" for d in diffs) or "n/a", met(diffs, lambda d: abs(d) <= LOSS_TOLERANCE)))
    base = found.get("base_loss", {})
    for c in [c for c in configs if base.get(c["shape"])]:
        fracs = {t: [r["val_loss"] / base[c["shape"]] for r in rows_of(found, c["name"], t)] for t in ("tailor", "trl-bf16")}
        text = ", ".join(f"{t} " + " / ".join(f"{f:.2f}x" for f in fs) for t, fs in fracs.items())
        out.append((f"(section 1) the data is learned: held-out loss <= {LEARNED}x the base model's "
                    f"({base[c['shape']]:.3f})", c["name"], text, met(fracs["tailor"] + fracs["trl-bf16"],
                                                                     lambda f: f <= LEARNED)))
    firsts = [r["first_step_s"] for name in names[:1] for r in rows_of(found, name, "tailor")]
    if firsts:  # the first config's rounds; round 2 on has a warm data cache
        warm = firsts[1:] or firsts
        peer = " / ".join(fmt(r["first_step_s"], ".1f") + " s" for r in rows_of(found, names[0], "trl-bf16"))
        out.append(("time to first step <= 10 s (warm cache: round 2 on)", names[0],
                    f"{' / '.join(fmt(s, '.1f') + ' s' for s in firsts)} (TRL-bf16: {peer})",
                    met([s for s in warm if s is not None], lambda s: s <= 10)))
    return out + decode_targets(found.get("generate")) + structured_targets(found.get("structured"))


def structured_targets(st: dict | None) -> list[tuple[str, str, str, str]]:
    """Structured outputs: decode with a JSON schema's grammar at most 10% slower (bench/structured_speed.py)."""
    out = []
    for batch in (1, 8) if st else ():
        row = st[f"batch{batch}"]
        wall, cpu = row["wall"]["overhead"], row["cpu"]["overhead"]
        out.append(("JSON-schema decode overhead <= 10%", f"batch {batch}", f"wall {wall:+.1%}, CPU time {cpu:+.1%}",
                    met([wall], lambda o: o <= 0.1)))
    return out



def tps(runs: list[dict]) -> list[float]:
    return [r["tokens_per_s"] for r in runs]


def best_hf(gen: dict) -> tuple[str, list[float]]:
    """HF generate's faster dtype (by mean over rounds) and its per-round tokens/s."""
    means = {k: sum(tps(gen[k])) / len(gen[k]) for k in ("hf-fp32", "hf-bf16") if gen.get(k)}
    best = max(means, key=means.get)
    return best, tps(gen[best])


def serve_rounds(gen: dict, server: str = "tailor") -> list[dict]:
    """Per round, client count -> {"tokens_per_s", "ttft_p50_s", ...} for one server. Reads both
    bench/serve_load.py's figures and those of runs before it (tailor alone, tokens/s only)."""
    serve = gen.get("serve") or {}
    if "servers" in serve:
        return (serve["servers"].get(server) or {}).get("rounds", [])
    if server != "tailor":
        return []
    rounds = serve.get("rounds") or ([serve["clients"]] if serve.get("clients") else [])
    return [{n: {"tokens_per_s": v} for n, v in r.items()} for r in rounds]


def decode_targets(gen: dict | None) -> list[tuple[str, str, str, str]]:
    if not gen:
        return []
    out = []
    label = gen.get("tailor_label", "tailor")
    if gen.get("hf-fp32") or gen.get("hf-bf16"):
        hf_name, hf = best_hf(gen)
        text, ratios = per_round(list(zip(tps(gen["tailor"]), hf)))
        out.append((f"batch-1 decode >= 3x best HF generate ({hf_name})", label, text, met(ratios, lambda r: r >= 3)))
    pairs = [("tailor", "llama-f16", f"{label} vs llama.cpp f16")]
    if gen.get("tailor-flags"):
        pairs.append(("tailor-flags", "llama-q8_0", f"tailor {gen['flags']} vs llama.cpp q8_0"))
    for mine, peer, what in pairs:
        if gen.get(peer) and gen.get(mine):
            text, ratios = per_round(list(zip(tps(gen[mine]), tps(gen[peer]))))
            out.append(("batch-1 decode >= llama.cpp, same precision class", what, text, met(ratios, lambda r: r >= 1)))
    ours = serve_rounds(gen)
    if ours and all("8" in r and "1" in r for r in ours):
        text, ratios = per_round([(r["8"]["tokens_per_s"], r["1"]["tokens_per_s"]) for r in ours])
        out.append(("server tokens/s at 8 clients >= 3x 1 client", "tailor serve", text, met(ratios, lambda r: r >= 3)))
    peer = serve_rounds(gen, "llama-cpp")
    for n, target in SERVE_TARGETS.items():
        pairs = [(a[n]["tokens_per_s"], b[n]["tokens_per_s"]) for a, b in zip(ours, peer) if n in a and n in b]
        if pairs:
            text, ratios = per_round(pairs)
            out.append((f"serving tokens/s >= {target:g}x llama-cpp-python's server ({gen['serve'].get('gguf', '')} GGUF)",
                        f"{n} client{'s' if n != '1' else ''}", text, met(ratios, lambda r, t=target: r >= t)))
    return out
