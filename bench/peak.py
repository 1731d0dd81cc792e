"""The machine's matmul peak, measured in this run: torch.mm on 2048^3, bf16 and fp32.
Prints one JSON line: {"bf16_tflops": ..., "fp32_tflops": ...}."""

import json
import time

import torch


def tflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):  # best of reps: the peak, not the average under noise
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


if __name__ == "__main__":
    print(json.dumps({"bf16_tflops": tflops(torch.bfloat16), "fp32_tflops": tflops(torch.float32)}))
