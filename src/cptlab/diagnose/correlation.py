"""Correlation between a domain's similarity to the pretraining corpus and its change in perplexity.

Adaptation Odyssey (arXiv 2410.05581): the more similar a domain is to the pretraining corpus, the less continued
pretraining on it helps (or the more it hurts). Across domains, `correlate(x, y, z)` gives

* Pearson's r and Spearman's ρ (Pearson's r of the ranks; ties get their average rank) with the two-sided p-values
  of scipy (t distribution with n − 2 degrees of freedom),
* a seeded percentile bootstrap confidence interval for each: `n_boot` resamples of the domains with replacement
  (numpy `default_rng(seed)`); a resample in which x or y is constant has no correlation and is left out (the
  number used is reported),
* the partial correlation of x and y controlling for z (the starting perplexity, a known confounder: domains with a
  high starting perplexity have more to gain): r_xy·z = (r_xy − r_xz·r_yz) / √((1 − r_xz²)(1 − r_yz²)), i.e. the
  correlation of the residuals of x and y after a linear fit on z; Spearman's partial is the same on ranks. Its
  p-value uses a t distribution with n − 3 degrees of freedom.

With fewer than 3 points (or a constant variable) the numbers are None: there is nothing to correlate.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MIN_POINTS = 3


def rankdata(a: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy.stats.rankdata's 'average')."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=float)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    xm, ym = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.dot(xm, xm)) * float(np.dot(ym, ym)))
    if den == 0.0 or not math.isfinite(den):
        return None
    return float(np.clip(np.dot(xm, ym) / den, -1.0, 1.0))


def _p_value(r: float | None, df: int) -> float | None:
    """Two-sided p-value of a correlation r with `df` degrees of freedom (t = r·√(df / (1 − r²)))."""
    from scipy import stats

    if r is None or df < 1:
        return None
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt(df / (1.0 - r * r))
    return float(2.0 * stats.t.sf(abs(t), df))


def _partial(rxy: float | None, rxz: float | None, ryz: float | None) -> float | None:
    if rxy is None or rxz is None or ryz is None:
        return None
    den = (1.0 - rxz * rxz) * (1.0 - ryz * ryz)
    if den <= 0.0:
        return None
    return float(np.clip((rxy - rxz * ryz) / math.sqrt(den), -1.0, 1.0))


def pearson(x, y) -> float | None:
    return _pearson(np.asarray(x, float), np.asarray(y, float)) if len(x) >= 2 else None


def spearman(x, y) -> float | None:
    return _pearson(rankdata(x), rankdata(y)) if len(x) >= 2 else None


def partial_correlation(x, y, z, method: str = "pearson") -> float | None:
    """Correlation of x and y controlling for z (on ranks for method="spearman")."""
    x, y, z = (np.asarray(v, float) for v in (x, y, z))
    if method == "spearman":
        x, y, z = rankdata(x), rankdata(y), rankdata(z)
    elif method != "pearson":
        raise ValueError(f"method {method!r}: pearson or spearman")
    if len(x) < MIN_POINTS:
        return None
    return _partial(_pearson(x, y), _pearson(x, z), _pearson(y, z))


def bootstrap_ci(x, y, stat, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 z=None) -> dict:
    """Percentile bootstrap interval of `stat(x, y[, z])` over resamples of the points (seeded)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    zz = None if z is None else np.asarray(z, float)
    n = len(x)
    if n < MIN_POINTS or n_boot < 1:
        return {"low": None, "high": None, "level": level, "resamples": 0, "seed": seed}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    values = []
    for row in idx:
        v = stat(x[row], y[row]) if zz is None else stat(x[row], y[row], zz[row])
        if v is not None and math.isfinite(v):
            values.append(v)
    if not values:
        return {"low": None, "high": None, "level": level, "resamples": 0, "seed": seed}
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "level": level, "resamples": len(values), "seed": seed}


def correlate(x: Sequence[float], y: Sequence[float], z: Sequence[float] | None = None,
              labels: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson and Spearman correlation of x and y with bootstrap CIs, and (given z) the partial correlations.

    Points where x, y (or z) is None/NaN are left out first; `n` counts the points used and `dropped` names the
    others. Returns a JSON-able dict; see the module docstring for the definitions."""
    labels = list(labels) if labels is not None else [str(i) for i in range(len(x))]
    if not (len(x) == len(y) == len(labels)) or (z is not None and len(z) != len(x)):
        raise ValueError("x, y, z and labels must have the same length")
    keep, dropped = [], []
    for i in range(len(x)):
        vals = [x[i], y[i]] + ([z[i]] if z is not None else [])
        if all(v is not None and math.isfinite(float(v)) for v in vals):
            keep.append(i)
        else:
            dropped.append(labels[i])
    xs = np.array([float(x[i]) for i in keep])
    ys = np.array([float(y[i]) for i in keep])
    zs = np.array([float(z[i]) for i in keep]) if z is not None else None
    n = len(keep)
    out: dict = {"n": n, "labels": [labels[i] for i in keep], "dropped": dropped,
                 "bootstrap": {"n_boot": n_boot, "seed": seed, "level": level, "method": "percentile"}}
    ok = n >= MIN_POINTS
    r = pearson(xs, ys) if ok else None
    rho = spearman(xs, ys) if ok else None
    out["pearson"] = {"r": r, "p": _p_value(r, n - 2), "ci": bootstrap_ci(xs, ys, pearson, n_boot, seed, level)}
    out["spearman"] = {"rho": rho, "p": _p_value(rho, n - 2),
                       "ci": bootstrap_ci(xs, ys, spearman, n_boot, seed, level)}
    if zs is not None:
        rp = partial_correlation(xs, ys, zs, "pearson") if n >= MIN_POINTS + 1 else None
        rs = partial_correlation(xs, ys, zs, "spearman") if n >= MIN_POINTS + 1 else None
        out["partial"] = {
            "pearson": {"r": rp, "p": _p_value(rp, n - 3)},
            "spearman": {"rho": rs, "p": _p_value(rs, n - 3)},
            "control": "starting perplexity",
        }
    return out


def describe(result: dict, x_name: str, y_name: str) -> str:
    """One plain sentence about a correlation result, from its numbers."""
    n = result["n"]
    rho = result["spearman"]["rho"]
    if rho is None:
        return f"{y_name} vs {x_name}: too few domains to correlate (n = {n})."
    ci = result["spearman"]["ci"]
    strength = "strong" if abs(rho) >= 0.7 else "moderate" if abs(rho) >= 0.4 else "weak"
    sign = "negative" if rho < 0 else "positive"
    text = (f"{y_name} vs {x_name}: Spearman ρ = {rho:+.2f} ({strength} {sign}, n = {n}")
    if ci["low"] is not None:
        text += f", {int(round(ci['level'] * 100))}% bootstrap CI {ci['low']:+.2f} to {ci['high']:+.2f}"
    p = result["spearman"]["p"]
    if p is not None:
        text += f", p = {p:.2g}"
    text += ")"
    part = (result.get("partial") or {}).get("spearman", {}).get("rho")
    if part is not None:
        text += f"; controlling for the starting perplexity, partial ρ = {part:+.2f}"
    if ci["low"] is not None and ci["low"] <= 0.0 <= ci["high"]:
        text += "; the interval includes 0, so the sign is not established at this n"
    return text + "."
