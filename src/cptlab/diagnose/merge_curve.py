"""The interpolation curve base → adapted: which α to keep.

Given, for each α of a grid (0 = the base model, 1 = the adapted one), the loss on the target domain(s) and on
general data (nats per token, lower is better):

* the **Pareto front**: the α whose (general loss, target loss) no other α beats on both at once (≤ on both,
  < on one) — the α worth considering at all;
* the **budget α**: among the α whose general loss exceeds the base's by at most `budget` nats/token, the one
  with the lowest target loss (ties: the smaller α). A budget of 0.01 nats/token is about +1 % general
  perplexity (exp(0.01) − 1).
"""

from __future__ import annotations

import math
from typing import Sequence


def pareto_front(general: Sequence[float], target: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates minimised), in input order."""
    if len(general) != len(target):
        raise ValueError(f"{len(general)} general losses but {len(target)} target losses")
    out = []
    for i, (g, t) in enumerate(zip(general, target)):
        dominated = any(gj <= g and tj <= t and (gj < g or tj < t)
                        for j, (gj, tj) in enumerate(zip(general, target)) if j != i)
        if not dominated:
            out.append(i)
    return out


def curve_summary(alphas: Sequence[float], target_loss: Sequence[float], general_loss: Sequence[float],
                  budget: float, base_general: float | None = None, base_target: float | None = None) -> dict:
    """Pareto-front α, budget α and the points as a table (losses, perplexity changes vs the base).

    `base_general` / `base_target` default to the values at α = 0 (which must then be in `alphas`).
    """
    if not (len(alphas) == len(target_loss) == len(general_loss)) or not alphas:
        raise ValueError("alphas, target_loss and general_loss must be non-empty and of one length")
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    a = [float(alphas[i]) for i in order]
    t = [float(target_loss[i]) for i in order]
    g = [float(general_loss[i]) for i in order]
    if base_general is None or base_target is None:
        if 0.0 not in a:
            raise ValueError("no α = 0 point: give base_general and base_target")
        i0 = a.index(0.0)
        base_general = g[i0] if base_general is None else base_general
        base_target = t[i0] if base_target is None else base_target
    front = pareto_front(g, t)
    within = [i for i in range(len(a)) if g[i] - base_general <= budget + 1e-12]
    budget_i = min(within, key=lambda i: (t[i], a[i])) if within else None
    best_i = min(range(len(a)), key=lambda i: (t[i], a[i]))
    points = [{"alpha": a[i], "target_loss": t[i], "general_loss": g[i],
               "general_ppl_change_pct": (math.exp(g[i] - base_general) - 1) * 100,
               "target_ppl_change_pct": (math.exp(t[i] - base_target) - 1) * 100,
               "pareto": i in front, "within_budget": i in within} for i in range(len(a))]
    return {"budget": budget, "base_general_loss": base_general, "base_target_loss": base_target,
            "pareto_alphas": [a[i] for i in front],
            "budget_alpha": a[budget_i] if budget_i is not None else None,
            "best_target_alpha": a[best_i], "points": points}
