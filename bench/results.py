"""bench/RESULTS.md: the latest full run on each CPU kind (Intel AMX, AVX512-BF16, ...) side by
side, since a figure holds only for the kind of machine it was measured on.

Each run records its machine (CPU model, kind and flags, cores, threads, versions) with its
figures. A run that is not --quick is remembered in bench/results/<kind>.json, part by part
(train, demo, generate, data, service, structured, dpo, grpo: a partial run replaces only the parts it ran), and the
page is rendered from every kind remembered there. The previous RESULTS.md moves to HISTORY.md.
A --quick run renders its own page alone (bench/.work/RESULTS-quick.md)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

import dpo_results
import grpo_results
import tables
from targets import fmt, target_rows as _sft_and_decode_rows

HERE = Path(__file__).resolve().parent
STORE = HERE / "results"
# the keys of a run's figures that each part of the bench fills
PARTS = {"train": ("train", "base_loss", "n_params", "configs", "model_shape", "mean_tokens"), "demo": ("demo",),
         "generate": ("generate",), "data": ("data",), "service": ("service",), "structured": ("structured",),
         "dpo": ("dpo", "dpo_configs"), "grpo": ("grpo", "grpo_configs")}
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

_fmt = fmt  # bench/run.py's name for it


def target_rows(found: dict) -> list[tuple[str, str, str, str]]:
    """Every target of one run (or one kind's latest parts): training, decode, serving, structured
    outputs (bench/targets.py), DPO and GRPO (their own modules)."""
    return _sft_and_decode_rows(found) + dpo_results.target_rows(found) + grpo_results.target_rows(found)


def machine() -> dict:
    import torch

    from tailor import cpu

    return {"cpu": cpu.name(), "kind": cpu.kind(), "flags": sorted(cpu.flags() or ()), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads()}


def n_params(model: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model) / "model.safetensors"), "pt") as f:
        total = 0
        for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            n = 1
            for s in f.get_slice(k).get_shape():
                n *= s
            total += n
    return total


def model_shape(model: str) -> dict:
    """What the attention term of the model FLOPs needs: layers and attention width."""
    cfg = json.loads((Path(model) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"layers": cfg["num_hidden_layers"], "attention_width": cfg["num_attention_heads"] * head_dim}


# -- one run's page --------------------------------------------------------------------------

def _machine_line(info: dict, peak: dict | None) -> str:
    flags = set(info.get("flags") or ())
    shown = ", ".join(f for f in SHOWN_FLAGS if f in flags) if info.get("flags") else "not recorded"
    text = (f"{info['cpu']} ({info.get('kind', 'kind not recorded')}; flags: {shown}), {info['cores']} cores, "
            f"{info['threads']} torch threads, torch {info['torch']}, Python {info['python']}")
    if peak:
        text += (f"; measured matmul peak (torch.mm 2048^3) bf16 {peak['bf16_tflops']:.2f} TFLOP/s, "
                 f"fp32 {peak['fp32_tflops']:.2f} TFLOP/s")
    return text


def details(found: dict) -> list[str]:
    """Every detail section of one run (or one kind's latest parts)."""
    lines = []
    if found.get("train"):
        lines += ["### Training: tailor vs TRL SFTTrainer", "",
                  "Configs: shape (short ~150 tokens, long ~1,000), batch (4, or 16 = micro-batch 4 x accumulation 4), "
                  "method. Figures are per round, in round order.", "", *tables.training(found), ""]
        mfu = tables.utilisation(found)
        lines += [*mfu, ""] if mfu else []
        lines += [tables.SETTINGS, ""]
    if found.get("dpo"):
        lines += ["### DPO: tailor vs TRL DPOTrainer", "", *dpo_results.table(found), "", dpo_results.SETTINGS, ""]
    if found.get("grpo"):
        lines += ["### GRPO: tailor vs TRL GRPOTrainer", "", *grpo_results.table(found), "", grpo_results.SETTINGS, ""]
    if found.get("demo"):
        d = found["demo"]
        lines += [f"`make demo`'s training (`tailor train examples/pirate-lora.yaml`, command start to exit): "
                  f"{d['seconds']:.0f} s for {d['steps']} steps, final validation loss {fmt(d['final_val_loss'], '.3f')}, "
                  f"peak RSS {d['peak_rss_mb']:,.0f} MB.", ""]
    if found.get("generate"):
        lines += ["### Decode and serving", "", *tables.decode(found["generate"]), ""]
    if found.get("data"):
        t, o = found["data"]["trl"], found["data"]["tailor"]
        lines += ["### Data preparation (20,000 chats, SmolLM2 template, assistant masks, no cache), one round", "",
                  f"TRL {t['examples_per_s']:,.0f} examples/s, tailor {o['examples_per_s']:,.0f} examples/s "
                  f"({o['examples_per_s'] / t['examples_per_s']:.2f}x).", ""]
    if found.get("service"):
        lines += ["### Fine-tuning service (`tailor serve`, bench/service_latency.py), one round", "",
                  "```", found["service"]["table"], "```", ""]
    if found.get("structured"):
        lines += ["### Structured outputs (bench/structured_speed.py)", "", *tables.structured(found["structured"]), ""]
    return lines


def render(found: dict, command: str) -> str:
    """One run alone (a --quick run's page)."""
    lines = [f"# tailor benchmark results ({found['info']['date']})", "",
             f"Machine: {_machine_line(found['info'], found.get('peak'))}. Command: `{command}` "
             f"({found['rounds']} round(s), {found.get('minutes', 0):.0f} min).", "",
             "## Targets; each round's ratio, tailor / peer", "",
             "| target | config | per round | met? |", "|---|---|---|---|",
             *(f"| {t} | {c} | {text} | {m} |" for t, c, text, m in target_rows(found)), "", *details(found),
             "Raw figures of every run: bench/.work/rows.json. Analysis of the misses: bench/ANALYSIS.md. "
             "Earlier results: bench/HISTORY.md."]
    return "\n".join(lines)


# -- the latest run per CPU kind -------------------------------------------------------------

def slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def remember(found: dict, parts: set[str], command: str, store: Path = STORE) -> Path:
    """Record this run's parts as its CPU kind's latest (other parts of that kind stay)."""
    path = store / f"{slug(found['info']['kind'])}.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    for part in parts:
        if all(k in found for k in PARTS[part][:1]):
            kept[part] = {**{k: found[k] for k in PARTS[part] if k in found}, "info": found["info"],
                          "peak": found.get("peak"), "rounds": found["rounds"], "command": command}
    store.mkdir(parents=True, exist_ok=True)
    _atomic(path, json.dumps(kept, indent=1) + "\n")
    return path


def stored(store: Path = STORE) -> dict[str, dict]:
    """CPU kind -> its latest figures, merged from its parts as one run's would be (info and peak of
    the training part, else the newest part; `dates` says when each part ran)."""
    kinds = {}
    for path in sorted(store.glob("*.json")):
        parts = json.loads(path.read_text())
        if not parts:
            continue
        newest = max(parts.values(), key=lambda p: p["info"]["date"])
        lead = parts.get("train", newest)
        found = {"info": lead["info"], "peak": lead.get("peak"), "rounds": lead["rounds"],
                 "dates": {name: p["info"]["date"] for name, p in parts.items()},
                 "commands": sorted({p.get("command", "") for p in parts.values()} - {""})}
        for name, p in parts.items():
            found.update({k: p[k] for k in PARTS[name] if k in p})
        if "source" in parts.get("train", {}):
            found["source"] = parts["train"]["source"]
        kinds[lead["info"].get("kind") or path.stem] = found
    return kinds


def render_page(kinds: dict[str, dict]) -> str:
    """Every CPU kind's latest figures: machines and targets side by side, then each kind's details."""
    names = list(kinds)
    lines = ["# tailor benchmark results: the latest full run on each CPU kind", "",
             "A figure holds only for the CPU kind it was measured on. Each column is that kind's latest run "
             "(bench/results/<kind>.json); a kind with no run here has none since per-kind results began "
             "(earlier pages: bench/HISTORY.md).", "",
             "| machine | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, get in (("CPU", lambda f: _machine_line(f["info"], f.get("peak"))),
                       ("run", lambda f: ", ".join(f"{p} {d}" for p, d in f["dates"].items())),
                       ("command", lambda f: "; ".join(f"`{c}`" for c in f["commands"]) or f.get("source", "")),
                       ("rounds", lambda f: str(f["rounds"]))):
        lines.append(f"| {label} | " + " | ".join(get(kinds[n]) for n in names) + " |")
    rows: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for name in names:
        for target, config, text, met in target_rows(kinds[name]):
            rows.setdefault((target, config), {})[name] = (text, met)
    lines += ["", "## Targets; each round's ratio, tailor / peer, per CPU kind", "",
              "| target | config | " + " | ".join(f"{n} per round | met? ({n})" for n in names) + " |",
              "|---|---|" + "---|---|" * len(names)]
    for (target, config), got in rows.items():
        cells = " | ".join(" | ".join(got.get(n, ("not run", "n/a"))) for n in names)
        lines.append(f"| {target} | {config} | {cells} |")
    for name in names:
        lines += ["", f"## {name}: {kinds[name]['info']['cpu']}", ""]
        if kinds[name].get("source"):
            lines += [kinds[name]["source"], ""]
        lines += details(kinds[name])
    lines += ["Raw figures of the last run: bench/.work/rows.json; of each kind's latest: bench/results/. "
              "Analysis of the misses: bench/ANALYSIS.md. Earlier results: bench/HISTORY.md."]
    return "\n".join(lines)


def write(out: Path, text: str, history: Path | None) -> None:
    """Atomic writes; the RESULTS.md being replaced goes on top of HISTORY.md first."""
    if history is not None and out.is_file():
        old = out.read_text()
        past = history.read_text() if history.is_file() else "# Earlier benchmark results (newest first)\n"
        head, _, rest = past.partition("\n")
        _atomic(history, f"{head}\n\n{old.rstrip()}\n\n{rest.lstrip()}")
    _atomic(out, text + "\n")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
