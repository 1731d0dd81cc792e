"""What this CPU is: its model name, its feature flags, and the kind of machine that makes it
for tailor's speed (Intel AMX, AVX512-BF16, AVX-512, AVX2). Read once from /proc/cpuinfo;
`tailor doctor`, the engine's measured decode precision (tailor.infer.autotune) and the bench
all describe the machine through here, so a figure and the choice it drove name the same CPU."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# The flags that change which kernels are fast, in the order `kind` tries them.
KINDS = (("amx_bf16", "Intel AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def name() -> str:
    """The CPU's model name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C"), or the platform's guess."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def flags() -> frozenset[str] | None:
    """The first processor's feature flags (x86 "flags", ARM "Features"); None where unknown."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return None


def kind() -> str:
    """The CPU kind a speed figure holds for: "Intel AMX", "AVX512-BF16", "AVX-512", "AVX2" or the
    machine's architecture."""
    found = flags() or frozenset()
    return next((label for flag, label in KINDS if flag in found), platform.machine() or "unknown")


def has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU runs bf16 matmuls natively (several times fp32's speed)."""
    found = flags() or frozenset()
    return "amx_bf16" in found or "avx512_bf16" in found


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (the kernel's estimate of what can be used without
    swapping), in bytes; unbounded where there is no /proc."""
    return _meminfo("MemAvailable:")


def total_memory() -> int:
    """MemTotal from /proc/meminfo, in bytes; unbounded where there is no /proc."""
    return _meminfo("MemTotal:")


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def last_level_cache() -> int:
    """The largest cache one core sees, in bytes (Linux sysfs); 32 MiB where unknown."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (entry / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 << 20)
