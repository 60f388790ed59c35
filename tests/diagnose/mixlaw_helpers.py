"""Synthetic mixture-law data from known parameters (shared by the mixlaw tests and the benchmark)."""

from __future__ import annotations

import numpy as np

from cptlab.diagnose.mixlaw_fit import predict_params
from cptlab.diagnose.mixlaw_points import make_points

RATIOS = [0.0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0]
TRUE = {
    "domain": {"E": 1.8, "B": 60.0, "eta": 0.4, "beta": 0.3, "C": 0.25, "gamma": 0.6, "epsilon": 0.05},
    "general": {"E": 2.2, "B": 40.0, "eta": 0.3, "beta": 0.28, "C": 0.1, "gamma": 0.7, "epsilon": 0.08},
}
TRUE_FULL = {
    "domain": {"E": 1.5, "A": 400.0, "alpha": 0.35, **{k: v for k, v in TRUE["domain"].items() if k != "E"}},
    "general": {"E": 1.9, "A": 300.0, "alpha": 0.33, **{k: v for k, v in TRUE["general"].items() if k != "E"}},
}
N0 = 1e6


def synthetic(target: str, noise: float = 0.002, seed: int = 0, Ns=(N0,), n_D: int = 8, ratios=RATIOS,
              D_range=(2e6, 2e7)):
    """Points on a grid ratio x D (x N) from the true law, times (1 + noise * standard normal)."""
    form = "full" if len(Ns) > 1 else "fixed-N"
    params = TRUE_FULL[target] if form == "full" else TRUE[target]
    N, D, r = np.meshgrid(np.asarray(Ns, float), np.geomspace(*D_range, n_D), np.asarray(ratios, float))
    N, D, r = N.ravel(), D.ravel(), r.ravel()
    y = predict_params(params, form, target, N, D, r)
    y = y * (1 + noise * np.random.default_rng(seed).standard_normal(y.size))
    return make_points(N, D, r, y, source="synthetic"), params, form


def write_csv(path, pts) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("N,D,r,loss\n")
        for i in range(len(pts)):
            f.write(",".join(repr(float(v)) for v in (pts.N[i], pts.D[i], pts.r[i], pts.loss[i])) + "\n")
