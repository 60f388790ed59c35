"""Benchmark: the trainer's cross-entropy (forward + backward) against full logits, by chunk size and vocabulary.

    python benchmarks/bench_loss.py [--reps 5] [--threads 1]

The loss of one optimizer step of the trainer benchmark (bench_train.py): 2048 positions (8 x 256), hidden 256,
bf16 autocast, at vocabulary 8192 (the benchmark model) and 32000 (Llama-2's). Rows:
- full logits: what the HF model + Trainer do: [N, V] logits (bf16 matmul), upcast to fp32, `F.cross_entropy`,
  autograd backward through both;
- cptlab `linear_cross_entropy` at several `loss_chunk` sizes (positions per chunk of fp32 logits).
Interleaved (every row once per repetition), median of `--reps`; a fresh process, one torch thread by default.
Writes benchmarks/results/loss.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

N, H = 2048, 256
CHUNKS = (64, 128, 256, 512, 1024)


def full_logits_loss(hidden, weight, labels, chunk=None):
    import torch.nn.functional as F

    return F.cross_entropy((hidden @ weight.t()).float(), labels, reduction="sum")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the trainer turns on keep_host_memory on CPU)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "loss.md")
    args = ap.parse_args()
    import torch

    from cptlab.host_memory import keep_host_memory

    kept = not args.default_malloc and keep_host_memory()

    from cptlab.train.loss import linear_cross_entropy

    torch.set_num_threads(args.threads)
    rows = [("full logits + F.cross_entropy (HF)", full_logits_loss, None)]
    rows += [(f"cptlab, loss_chunk {c}" + (" (default)" if c == 256 else ""), linear_cross_entropy, c) for c in CHUNKS]
    load0 = os.getloadavg()[0]
    results: dict[tuple[int, str], list[float]] = {}
    values: dict[tuple[int, str], float] = {}
    for vocab in (8192, 32000):
        g = torch.Generator().manual_seed(0)
        h0 = torch.randn(N, H, generator=g)
        w0 = torch.randn(vocab, H, generator=g) * 0.05
        y = torch.randint(0, vocab, (N,), generator=g)
        for rep in range(args.reps + 1):  # the first repetition warms up (allocator, oneDNN kernels)
            for name, fn, chunk in rows:
                h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = fn(h, w, y, chunk)
                loss.backward()
                dt = time.perf_counter() - t0
                if rep:
                    results.setdefault((vocab, name), []).append(dt)
                values[(vocab, name)] = loss.item()
    load1 = os.getloadavg()[0]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Trainer loss: chunked linear cross-entropy vs full logits",
        "",
        f"`python benchmarks/bench_loss.py --reps {args.reps} --threads {args.threads}"
        f"{' --default-malloc' if args.default_malloc else ''}` — {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared; 1-minute load average {load0:.1f} before, {load1:.1f} after), "
        f"{args.threads} torch thread(s), torch {torch.__version__}; {when}.",
        "",
        f"Forward + backward of the loss of one trainer-benchmark step: {N:,} positions, hidden {H}, bf16 autocast "
        f"(matmuls in bf16, softmax in fp32); host allocator: "
        f"{'keep_host_memory (as the trainer sets it on CPU)' if kept else 'glibc default'}. "
        f"Median of {args.reps} interleaved repetitions, milliseconds.",
        "",
        "| loss | vocab 8192 (ms) | vs full logits | vocab 32000 (ms) | vs full logits |",
        "|---|---:|---:|---:|---:|",
    ]
    full = rows[0][0]
    for name, _, _ in rows:
        cells = []
        for vocab in (8192, 32000):
            ms = statistics.median(results[(vocab, name)]) * 1000
            base = statistics.median(results[(vocab, full)]) * 1000
            cells += [f"{ms:,.0f}", f"{base / ms:.2f}×"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst = max(abs(values[(v, n)] / values[(v, full)] - 1) for v in (8192, 32000) for n, _, _ in rows)
    lines += [
        "",
        f"Same loss values: the largest relative difference from the full-logits loss is {worst:.1e} (the "
        "chunked loss sums per-chunk fp32 NLLs; bf16 logits either way).",
        "Memory: full logits hold [N, V] bf16 logits, their fp32 copy and its gradient (≈ 10 bytes × N × V: "
        f"{10 * N * 8192 / 2**20:.0f} MB at vocab 8192, {10 * N * 32000 / 2**20:.0f} MB at 32000); cptlab holds one "
        "chunk of fp32 logits and its bf16 gradient (6 × loss_chunk × V bytes) and the fp32 gradient of the output "
        "matrix.",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
