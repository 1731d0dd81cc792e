"""`tailor doctor [--json]`: check what this machine offers tailor (devices and the dtypes that
work on them, CPU flags, measured matmul and GEMV speed, versions, Hub token, caches, disk,
optional extras) and say what to fix. Exit status 0, or 1 when a warning-level problem is found."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
    parser.add_argument("--measure-seconds", type=float, default=0.1, metavar="S",
                        help="Time spent timing each kernel (default: 0.1; the whole check takes a few seconds).")


def run(args) -> int:
    from tailor import doctor

    found = doctor.report(measure_s=max(0.01, args.measure_seconds))
    print(json.dumps(found, indent=2) if args.json else summary(found))
    return 1 if any(p["level"] == "warning" for p in found["problems"]) else 0


def summary(r: dict) -> str:
    v, c = r["versions"], r["cpu"]
    lines = [f"tailor {r['tailor']} on {r['platform']}, Python {r['python']}",
             f"  torch {v['torch']}  transformers {v['transformers']}  peft {v['peft']}"
             + (f"  CUDA {v['cuda']}" if v["cuda"] else ""), "", "Devices"]
    for d in r["devices"]:
        extra = f", {d['memory_gb']} GB, compute {d['capability']}" if "memory_gb" in d else ""
        lines.append(f"  {d['type']:8} {d['name']}{extra}: bf16 {_yes(d['bf16'])}, fp16 {_yes(d['fp16'])}")
    flags = ", ".join(f for f, on in (c["flags"] or {}).items() if on) or "unknown"
    lines += [f"  CPU: {c['cores']} cores, torch uses {c['torch_threads']} threads; {c['capability']}; flags: {flags}",
              "", "Speed (matmul 512^3 in GFLOP/s; batch-1 GEMV over a 4096x4096 weight in GB/s and ms)"]
    for s in r["speed"]:
        if "error" in s:
            lines.append(f"  {s['device']:8} {s['dtype']:9} failed: {s['error']}")
        else:
            lines.append(f"  {s['device']:8} {s['dtype']:9} matmul {s['matmul_gflops']:8.1f}   "
                         f"GEMV {s['gemv_gbps']:7.1f} GB/s  {s['gemv_ms']:8.3f} ms")
    lines += ["", f"Hub token: {'present' if r['hub']['token'] else 'none'}"
              + ("  (HF_HUB_OFFLINE is set)" if r["hub"]["offline"] else ""), "Caches and disk"]
    for name, d in r["disk"].items():
        lines.append(f"  {name:12} {_gb(d['bytes']):>9} in {d['path']}  ({_gb(d['free_bytes'])} free)")
    lines.append("Optional extras: " + ", ".join(f"{n} {_yes(on)}" for n, on in r["extras"].items()))
    warnings = [p for p in r["problems"] if p["level"] == "warning"]
    notes = [p for p in r["problems"] if p["level"] != "warning"]
    lines += ["", "Problems" if warnings else "No problems found."]
    lines += [f"  ! {p['problem']}\n    fix: {p['fix']}" for p in warnings]
    if notes:
        lines += ["", "Notes"] + [f"  - {p['problem']}\n    {p['fix']}" for p in notes]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _gb(n: int) -> str:
    return f"{n / 1024 ** 3:.1f} GB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:.0f} MB"
