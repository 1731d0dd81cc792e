"""`tailor doctor`: what this machine offers tailor, measured, and what to fix.

`report()` returns one dict (the `--json` output; its top-level keys are KEYS): the devices and
whether bf16 and fp16 compute works on each, the CPU's flags and threads, measured matmul and
batch-1 GEMV speed per dtype, library versions, Hub token presence (never its value), cache
sizes and free disk, the optional extras installed, and `problems`: each with a `fix`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import time
from pathlib import Path

KEYS = ("tailor", "python", "platform", "versions", "devices", "cpu", "speed", "hub", "disk", "extras", "problems")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
# name -> (how to tell it is there, what it is for, how to install it)
EXTRAS = {
    "llama_cpp": ("module llama_cpp", "GGUF round-trip checks and the llama.cpp bench peer",
                  "make gguf (or pip install 'tailor[gguf]')"),
    "chromium": ("program chromium + chromedriver", "the dashboard's browser tests",
                 "apt-get install chromium chromium-driver"),
    "tensorboard": ("module tensorboard", "tailor train --report-to tensorboard", "pip install 'tailor[tensorboard]'"),
    "trackio": ("module trackio", "tailor train --report-to trackio", "pip install 'tailor[trackio]'"),
    "wandb": ("module wandb", "tailor train --report-to wandb", "pip install 'tailor[wandb]'"),
    "mlflow": ("module mlflow", "tailor train --report-to mlflow", "pip install 'tailor[mlflow]'"),
}
LOW_DISK_BYTES = 5 * 1024 ** 3
SUPPORTED = {"transformers": (5, 6)}  # pyproject's range of major versions: [low, high)


def report(*, measure_s: float = 0.12) -> dict:
    """Everything `tailor doctor` shows. `measure_s`: seconds spent timing each kernel."""
    import torch

    out = {"tailor": _version("tailor"), "python": platform.python_version(),
           "platform": f"{platform.system()} {platform.machine()}", "versions": versions()}
    out["devices"] = devices()
    out["cpu"] = cpu()
    # each device in float32 and in each half precision that works there
    out["speed"] = [speed(d["type"], dtype, measure_s) for d in out["devices"]
                    for dtype, works in (("float32", True), ("bfloat16", d["bf16"]), ("float16", d["fp16"])) if works]
    out["hub"] = hub()
    out["disk"] = disk()
    out["extras"] = {name: installed(name) for name in EXTRAS}
    out["problems"] = problems(out, torch)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import torch

    return {"torch": torch.__version__, "transformers": _version("transformers"), "peft": _version("peft"),
            "tailor": _version("tailor"), "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}


def devices() -> list[dict]:
    """Each compute device, with whether bf16 and fp16 matmuls run there (tried, not assumed)."""
    import torch

    found = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        found.append({"type": f"cuda:{i}", "name": p.name, "memory_gb": round(p.total_memory / 1024 ** 3, 1),
                      "capability": f"{p.major}.{p.minor}", "bf16": _works(f"cuda:{i}", torch.bfloat16),
                      "fp16": _works(f"cuda:{i}", torch.float16)})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append({"type": "mps", "name": "Apple GPU (Metal)", "bf16": _works("mps", torch.bfloat16),
                      "fp16": _works("mps", torch.float16)})
    found.append({"type": "cpu", "name": _cpu_name(), "bf16": _works("cpu", torch.bfloat16),
                  "fp16": _works("cpu", torch.float16)})
    return found


def _works(device: str, dtype) -> bool:
    import torch

    try:
        a = torch.ones(64, 64, device=device, dtype=dtype)
        return bool(torch.isfinite(a @ a).all().item()) and float((a @ a)[0, 0]) == 64.0
    except Exception:  # not implemented on this device, or a driver error: it does not work
        return False


def _cpu_name() -> str:
    from tailor import cpu as cpu_info

    return cpu_info.name()


def cpu() -> dict:
    import torch

    flags = _cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    from tailor import cpu as cpu_info

    return {"name": _cpu_name(), "kind": cpu_info.kind(), "cores": cores, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "flags": {f: f in flags for f in CPU_FLAGS} if flags is not None else None,
            "fast_bf16": bool(flags and ("amx_bf16" in flags or "avx512_bf16" in flags))}


def _cpu_flags() -> frozenset[str] | None:
    from tailor import cpu as cpu_info

    return cpu_info.flags()


def speed(device: str, dtype_name: str, budget_s: float) -> dict:
    """Measured throughput of a 512x512x512 matmul (GFLOP/s: compute) and of a batch-1 GEMV
    over a 4096x4096 weight (GB/s of weight read: what decoding one sequence is bound by)."""
    import torch

    dtype = getattr(torch, dtype_name)
    out = {"device": device, "dtype": dtype_name}
    try:
        a = torch.randn(512, 512, device=device).to(dtype)
        w = torch.randn(4096, 4096, device=device).to(dtype)
        x = torch.randn(1, 4096, device=device).to(dtype)
        secs = _time(lambda: a @ a, device, budget_s)
        out["matmul_gflops"] = round(2 * 512 ** 3 / secs / 1e9, 1)
        secs = _time(lambda: torch.nn.functional.linear(x, w), device, budget_s)
        out["gemv_gbps"] = round(w.numel() * w.element_size() / secs / 1e9, 1)
        out["gemv_ms"] = round(secs * 1e3, 3)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _time(fn, device: str, budget_s: float) -> float:
    """Seconds per call: one warm-up call, then calls until `budget_s` has passed (at least one)."""
    import torch

    if device.startswith("cuda"):
        sync = torch.cuda.synchronize
    elif device == "mps":
        sync = torch.mps.synchronize
    else:
        sync = lambda: None  # noqa: E731 (CPU calls return when done)
    fn()
    sync()
    n, start, elapsed = 0, time.perf_counter(), 0.0
    while elapsed < budget_s:
        fn()
        sync()
        n, elapsed = n + 1, time.perf_counter() - start
    return elapsed / n


def hub() -> dict:
    """Whether a Hugging Face token is configured (its value is never read out) and offline mode."""
    try:
        from huggingface_hub import get_token

        token = get_token() is not None
    except Exception:
        token = False
    return {"token": token, "offline": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")}


def disk() -> dict:
    from huggingface_hub import constants

    from tailor.models import tailor_home

    places = {"tailor_home": tailor_home(), "hf_cache": Path(constants.HF_HUB_CACHE)}
    out = {}
    for name, path in places.items():
        out[name] = {"path": str(path), "bytes": _size(path) if path.exists() else 0,
                     "free_bytes": shutil.disk_usage(_existing(path)).free}
    return out


def _size(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def installed(name: str) -> bool:
    if name == "chromium":
        return bool(shutil.which("chromium") or shutil.which("chromium-browser")) and bool(shutil.which("chromedriver"))
    return importlib.util.find_spec(EXTRAS[name][0].split()[-1]) is not None


def problems(found: dict, torch) -> list[dict]:
    """What stands in tailor's way here, each with what to do about it: `warning` for what
    breaks or slows tailor, `info` for what is merely missing or worth knowing."""
    out = []

    def add(what, fix, level="warning"):
        out.append({"level": level, "problem": what, "fix": fix})

    gpus = [d for d in found["devices"] if d["type"].startswith("cuda")]
    if not gpus and shutil.which("nvidia-smi") and torch.version.cuda is None:
        add("An NVIDIA driver is installed, but this torch is a CPU-only build.",
            "Install a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu128).")
    if not gpus and torch.version.cuda is not None and shutil.which("nvidia-smi"):
        add("torch is a CUDA build and nvidia-smi exists, but torch sees no GPU.",
            "Run nvidia-smi; check CUDA_VISIBLE_DEVICES and that the driver supports CUDA " + torch.version.cuda + ".")
    for d in gpus:
        if not d["bf16"]:
            add(f"{d['name']} ({d['type']}) cannot compute in bf16.",
                "Nothing to do: --dtype auto trains in fp16 with loss scaling there.", "info")
    for s in found["speed"]:
        if "error" in s:
            add(f"Timing {s['dtype']} on {s['device']} failed: {s['error']}",
                "Update torch and the device driver; tailor picks another dtype with --dtype auto.")
    if not found["cpu"]["fast_bf16"] and not gpus:
        add("This CPU has neither AVX512-BF16 nor AMX, so bf16 is emulated and slower than fp32 here.",
            "Keep --dtype auto (float32 on this CPU); a CPU with AMX or a GPU trains several times faster.", "info")
    by = {(s["device"], s["dtype"]): s for s in found["speed"] if "error" not in s}
    for (device, dtype), s in by.items():
        fp32 = by.get((device, "float32"))
        if dtype != "float32" and fp32 and s["matmul_gflops"] < 0.25 * fp32["matmul_gflops"]:
            add(f"{dtype} matmuls on {device} run at {s['matmul_gflops']} GFLOP/s, under a quarter of float32's "
                f"{fp32['matmul_gflops']}: emulated, not native.",
                f"Do not force --dtype {dtype} on {device}; --dtype auto avoids it.", "info")
    threads, cores = found["cpu"]["torch_threads"], found["cpu"]["cores"]
    if threads < cores and found["cpu"]["omp_num_threads"]:
        add(f"torch uses {threads} of {cores} cores (OMP_NUM_THREADS={found['cpu']['omp_num_threads']}).",
            "Unset OMP_NUM_THREADS or raise it, unless other work needs those cores.")
    out += _version_problems(found["versions"])
    for name, place in found["disk"].items():
        if place["free_bytes"] < LOW_DISK_BYTES:
            add(f"Only {place['free_bytes'] / 1024 ** 3:.1f} GB free where {name} is ({place['path']}).",
                "Free space there, or point the cache elsewhere ($TAILOR_HOME, $HF_HOME).")
    if not found["hub"]["token"]:
        add("No Hugging Face token: gated models cannot download and tailor push / --push-to-hub cannot upload.",
            "Run `hf auth login` or set HF_TOKEN (only needed for gated models and pushing).", "info")
    for name, there in found["extras"].items():
        if not there:
            what, use, how = EXTRAS[name]
            add(f"Optional: {name} is not installed ({use}).", how, "info")
    return out


def _version_problems(v: dict) -> list[dict]:
    out = []
    major = int((v.get("transformers") or "0").split(".")[0])
    lo, hi = SUPPORTED["transformers"]
    if not lo <= major < hi:
        out.append({"level": "warning", "fix": f"pip install 'transformers>={lo},<{hi}'",
                    "problem": f"transformers {v.get('transformers')} is outside tailor's range (>={lo},<{hi})."})
    if v.get("peft") is None:
        out.append({"level": "warning", "problem": "peft is not installed: LoRA training and adapters need it.",
                    "fix": "pip install 'peft>=0.17'"})
    return out
