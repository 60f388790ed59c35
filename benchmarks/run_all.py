"""Run every benchmark side by side in one session and rebuild BENCHMARKS.md from their reports.

    python benchmarks/run_all.py [--only train,eval] [--skip-run]

Each `benchmarks/bench_<name>.py` prints a markdown report and writes it to `benchmarks/results/<name>.md`
(with the command that produced it). This script runs them one after the other (never in parallel: the machine
has 2 cores and the comparisons inside each benchmark are measured side by side in one process), then
concatenates the reports under a header that records the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def machine() -> str:
    import torch

    cpus = os.cpu_count()
    return (f"{platform.processor() or platform.machine()}, {cpus} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--skip-run", action="store_true", help="only rebuild BENCHMARKS.md from results/")
    args = ap.parse_args()
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    failed = []
    if not args.skip_run:
        for name in names:
            print(f"== bench_{name}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")], cwd=ROOT)
            print(f"== bench_{name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
            if rc:
                failed.append(name)
    parts = [
        "# Benchmarks\n",
        "Figures from `benchmarks/`, each measured side by side in one run on the machine named in its section "
        "(a shared, noisy 2-core CPU unless said otherwise). Rebuild all: `make bench` "
        "(= `python benchmarks/run_all.py`); one: `python benchmarks/bench_<name>.py`.\n",
    ]
    for path in sorted((HERE / "results").glob("*.md")):
        parts.append(path.read_text().rstrip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
