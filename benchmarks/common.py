"""Helpers shared by the benchmark scripts (not a benchmark itself: run_all.py runs bench_*.py only)."""

from __future__ import annotations

import time


def matmul_peak(threads: int, dtype_name: str, n: int = 1024, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n x n x n matmul over `seconds` with `threads` torch threads (the MFU reference)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best
