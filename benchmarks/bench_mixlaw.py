"""Benchmark: fitting the D-CPT mixture law on 500 points (target: under 5 seconds on this CPU).

    python benchmarks/bench_mixlaw.py

Points are generated from known parameters with 0.5% multiplicative noise: one model size (form fixed-N,
10 ratios x 50 token counts) and five model sizes (form full, 10 ratios x 10 token counts x 5 N). Timed: the fit
alone (grid of starting points + L-BFGS-B runs) and the fit with the leave-out refits that `cptlab mixlaw fit`
does by default (each interior ratio held out in turn). Median of 3 repetitions. Writes
benchmarks/results/mixlaw.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cptlab.diagnose.mixlaw_fit import fit_law, predict_params  # noqa: E402
from cptlab.diagnose.mixlaw_points import make_points  # noqa: E402

RATIOS = [0.0, 0.05, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0]
TRUE = {
    "fixed-N": {"E": 1.8, "B": 60.0, "eta": 0.4, "beta": 0.3, "C": 0.25, "gamma": 0.6, "epsilon": 0.05},
    "full": {"E": 1.5, "A": 400.0, "alpha": 0.35, "B": 60.0, "eta": 0.4, "beta": 0.3, "C": 0.25, "gamma": 0.6,
             "epsilon": 0.05},
}
REPEATS = 3


def points(form: str, seed: int = 0):
    Ns = [1e6] if form == "fixed-N" else [1e6, 3e6, 1e7, 3e7, 1e8]
    n_D = 50 if form == "fixed-N" else 10
    N, D, r = np.meshgrid(np.array(Ns), np.geomspace(1e7, 1e9, n_D), np.array(RATIOS))
    N, D, r = N.ravel(), D.ravel(), r.ravel()
    y = predict_params(TRUE[form], form, "domain", N, D, r)
    y = y * (1 + 0.005 * np.random.default_rng(seed).standard_normal(y.size))
    return make_points(N, D, r, y, source=f"synthetic-{form}")


def timed(fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    rows = []
    ok = True
    for form in ("fixed-N", "full"):
        pts = points(form)
        t_fit, fit = timed(lambda: fit_law(pts, "domain", heldout=False))
        t_all, fit_h = timed(lambda: fit_law(pts, "domain"))
        r = np.linspace(0, 1, 101)
        err = max(float(np.max(np.abs(fit.predict(n, d, r) / predict_params(TRUE[form], form, "domain", n, d, r)
                                      - 1))) for n in np.unique(pts.N) for d in (1e7, 1e8, 1e9))
        ok &= t_fit < 5.0
        rows.append((form, len(pts), t_fit, t_all, len(fit_h.heldout_by_ratio), fit.r2, fit_h.heldout_error, err))
    lines = [
        "## Mixture law (D-CPT) fit",
        "",
        "`python benchmarks/bench_mixlaw.py` — target: a fit on 500 points in under 5 s. "
        f"Median of {REPEATS} runs; {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(shared), Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Points from known parameters × (1 + 0.5% noise); L-BFGS-B on the Huber loss of log-loss from a grid of "
        "starting points (best kept). \"with leave-out\" adds one refit per held-out interior ratio.",
        "",
        "| form | points | fit (s) | fit + leave-out refits (s) | refits | R² | held-out error | max prediction error "
        "vs true law |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for form, n, t_fit, t_all, refits, r2, held, err in rows:
        lines.append(f"| {form} | {n} | {t_fit:.2f} | {t_all:.2f} | {refits} | {r2:.4f} | {100 * held:.2f}% | "
                     f"{100 * err:.2f}% |")
    lines += ["", f"Target met (fit < 5 s for both forms): {'yes' if ok else 'NO'}.", ""]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "mixlaw.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
