"""Using fitted mixture laws: predictions, the two recommendations of D-CPT, predicted curves and their plot.

(a) `max_ratio_within_budget`: the largest domain ratio r (on a grid of step `grid_step`) whose predicted general
    loss at (N, D, r) stays within `budget` (relative, e.g. 0.03 = +3%) of the base's general loss — given by the
    user, or else the law's prediction at r = 0 (continued pretraining on general data only).
(b) `best_ratio_for_domain_data`: with a fixed amount D_d of domain tokens, a run at ratio r trains on
    D = D_d / r tokens in all; the ratio in (0, 1] minimising the predicted domain loss L_d(N, D_d / r, r).
(c) `curves`: predicted general and domain loss for any grid of (N, D, r).

r is the domain ratio throughout; N defaults to a fixed-N fit's own model size.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from cptlab.diagnose.mixlaw_fit import FitResult
from cptlab.errors import UsageError

DEFAULT_GRID_STEP = 0.01


def ratio_grid(step: float = DEFAULT_GRID_STEP, include_zero: bool = True) -> np.ndarray:
    if not 0 < step <= 0.5:
        raise UsageError(f"--grid-step {step}: must be in (0, 0.5]")
    n = int(round(1.0 / step))
    if abs(n * step - 1.0) > 1e-9:
        raise UsageError(f"--grid-step {step}: must divide 1 (e.g. 0.01, 0.02, 0.05, 0.1)")
    grid = np.round(np.arange(n + 1) * step, 12)
    return grid if include_zero else grid[1:]


def resolve_N(fit: FitResult, N: float | None, flag: str = "--N") -> float:
    """The model size to predict for: a fixed-N fit's own N (another N is an error), or the given one."""
    if fit.form != "full":
        if N is not None and fit.N and not np.isclose(N, fit.N, rtol=1e-9):
            raise UsageError(f"{flag} {N:g}: this {fit.target} fit ({fit.form}) is for one model size, "
                             f"N = {fit.N:g}; fit points of several sizes (form full) to predict other sizes")
        return float(fit.N or N or 1.0)
    if N is None:
        lo, hi = fit.ranges.get("N", [None, None])
        raise UsageError(f"{flag} is needed: the {fit.target} fit (form full) covers N from {lo:g} to {hi:g}")
    if not N > 0:
        raise UsageError(f"{flag} {N}: must be > 0")
    return float(N)


def default_D(fit: FitResult) -> float:
    """The largest number of training tokens the law was fitted on."""
    return float(fit.ranges.get("D", [1.0, 1.0])[1])


def predict_table(fit: FitResult, Ns: Sequence[float] | None, Ds: Sequence[float], rs: Sequence[float],
                  k1: float | None = None, k2: float | None = None) -> list[dict]:
    """Every combination of the given N, D, r values: rows {N, D, r, loss}."""
    for name, vals in (("--D", Ds), ("--r", rs)):
        if not vals:
            raise UsageError(f"{name}: give at least one value")
    for d in Ds:
        if not d > 0:
            raise UsageError(f"--D {d}: the number of training tokens must be > 0")
    for r in rs:
        if not 0 <= r <= 1:
            raise UsageError(f"--r {r}: outside [0, 1] (r is the domain ratio)")
    Ns = [resolve_N(fit, n) for n in (Ns or [None])]
    rows = []
    for N, D, r in itertools.product(Ns, Ds, rs):
        loss = float(fit.predict(N, D, r, k1, k2))
        rows.append({"N": N, "D": float(D), "r": float(r), "loss": loss})
    return rows


@dataclass
class BudgetRecommendation:
    budget: float
    N: float
    D: float
    base_loss: float
    base_from: str  # "given" | "predicted at r=0"
    limit: float  # base_loss * (1 + budget)
    ratio: float | None  # None: no ratio on the grid stays within the budget
    general_loss: float | None
    domain_loss: float | None = None
    grid_step: float = DEFAULT_GRID_STEP


def max_ratio_within_budget(general: FitResult, budget: float, N: float | None = None, D: float | None = None,
                            base_loss: float | None = None, domain: FitResult | None = None,
                            grid_step: float = DEFAULT_GRID_STEP) -> BudgetRecommendation:
    if general.target != "general":
        raise UsageError(f"the budget recommendation needs a fit of the general loss (got target {general.target})")
    if not budget >= 0:
        raise UsageError(f"--budget {budget}: must be >= 0 (a relative increase, e.g. 0.03 for +3%)")
    N = resolve_N(general, N)
    D = default_D(general) if D is None else float(D)
    if not D > 0:
        raise UsageError(f"--D {D}: must be > 0")
    grid = ratio_grid(grid_step)
    pred = general.predict(N, D, grid)
    if base_loss is None:
        base, base_from = float(general.predict(N, D, 0.0)), "predicted at r=0"
    else:
        if not base_loss > 0:
            raise UsageError(f"--base-loss {base_loss}: must be > 0")
        base, base_from = float(base_loss), "given"
    limit = base * (1.0 + budget)
    ok = np.flatnonzero(pred <= limit * (1 + 1e-12))
    ratio = float(grid[ok[-1]]) if ok.size else None
    g = float(general.predict(N, D, ratio)) if ratio is not None else None
    d = None
    if domain is not None and ratio is not None:
        d = float(domain.predict(resolve_N(domain, N), D, ratio))
    return BudgetRecommendation(budget, N, D, base, base_from, limit, ratio, g, d, grid_step)


@dataclass
class DataRecommendation:
    domain_tokens: float
    N: float
    ratio: float
    D: float  # total training tokens = domain_tokens / ratio
    domain_loss: float
    general_loss: float | None = None
    grid_step: float = DEFAULT_GRID_STEP


def best_ratio_for_domain_data(domain: FitResult, domain_tokens: float, N: float | None = None,
                               general: FitResult | None = None, grid_step: float = DEFAULT_GRID_STEP
                               ) -> DataRecommendation:
    if domain.target != "domain":
        raise UsageError(f"the fixed-data recommendation needs a fit of the domain loss (got {domain.target})")
    if not domain_tokens > 0:
        raise UsageError(f"--domain-tokens {domain_tokens}: must be > 0")
    N = resolve_N(domain, N)
    grid = ratio_grid(grid_step, include_zero=False)
    D = domain_tokens / grid
    pred = domain.predict(N, D, grid)
    i = int(np.argmin(pred))
    g = None
    if general is not None:
        g = float(general.predict(resolve_N(general, N), D[i], grid[i]))
    return DataRecommendation(float(domain_tokens), N, float(grid[i]), float(D[i]), float(pred[i]), g, grid_step)


@dataclass
class Recommendation:
    budget: BudgetRecommendation | None = None
    fixed_data: DataRecommendation | None = None
    curves: list[dict] = field(default_factory=list)
    N: float | None = None
    D: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budget": asdict(self.budget) if self.budget else None,
                "fixed_data": asdict(self.fixed_data) if self.fixed_data else None,
                "N": self.N, "D": self.D, "curves": self.curves}


def curves(fits: dict[str, FitResult], N: float | None, Ds: Sequence[float], rs: Sequence[float]) -> list[dict]:
    """Rows {N, D, r, general_loss, domain_loss} (a loss is None when its fit is not given)."""
    rows = []
    for D, r in itertools.product(Ds, rs):
        row = {"N": None, "D": float(D), "r": float(r), "general_loss": None, "domain_loss": None}
        for target, fit in fits.items():
            n = resolve_N(fit, N)
            row["N"] = n
            row[f"{target}_loss"] = float(fit.predict(n, D, r))
        rows.append(row)
    return rows


def recommend(fits: dict[str, FitResult], *, N: float | None = None, D: Sequence[float] | None = None,
              budget: float | None = 0.03, base_loss: float | None = None, domain_tokens: float | None = None,
              grid_step: float = DEFAULT_GRID_STEP, curve_ratios: Sequence[float] | None = None) -> Recommendation:
    """(a) with a general fit and a budget, (b) with a domain fit and `domain_tokens`, (c) curves always."""
    if not fits:
        raise UsageError("give at least one fit (FIT.json)")
    Ds = list(D) if D else [max(default_D(f) for f in fits.values())]
    rec = Recommendation(D=[float(d) for d in Ds])
    general, domain = fits.get("general"), fits.get("domain")
    if general is not None and budget is not None:
        rec.budget = max_ratio_within_budget(general, budget, N, Ds[0], base_loss, domain, grid_step)
    if domain is not None and domain_tokens is not None:
        rec.fixed_data = best_ratio_for_domain_data(domain, domain_tokens, N, general, grid_step)
    rs = list(curve_ratios) if curve_ratios else list(ratio_grid(0.05))
    rec.curves = curves(fits, N, Ds, rs)
    rec.N = rec.curves[0]["N"] if rec.curves else N
    return rec


def plot_recommendation(rec: Recommendation, fits: dict[str, FitResult], title: str = ""):
    """Predicted loss vs domain ratio, one panel per fitted target, one line per D; recommendations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in ("general", "domain") if t in fits]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4), squeeze=False)
    fine = ratio_grid(0.01)
    for ax, target in zip(axes[0], targets):
        fit = fits[target]
        n = resolve_N(fit, rec.N)
        for D in rec.D:
            ax.plot(fine, fit.predict(n, D, fine), label=f"D = {D:.3g} tokens")
        if target == "general" and rec.budget is not None:
            ax.axhline(rec.budget.limit, color="grey", ls="--", lw=1,
                       label=f"budget +{100 * rec.budget.budget:g}% ({rec.budget.base_from})")
        if rec.budget is not None and rec.budget.ratio is not None:
            ax.axvline(rec.budget.ratio, color="tab:red", ls=":", lw=1.2,
                       label=f"(a) largest r within budget = {rec.budget.ratio:g}")
        if target == "domain" and rec.fixed_data is not None:
            fd = rec.fixed_data
            r = ratio_grid(0.01, include_zero=False)
            ax.plot(r, fit.predict(n, fd.domain_tokens / r, r), color="black", lw=1,
                    label=f"D = {fd.domain_tokens:.3g} / r (fixed domain data)")
            ax.plot([fd.ratio], [fd.domain_loss], "k*", ms=10, label=f"(b) best r = {fd.ratio:g}")
        ax.set_xlabel("domain ratio r (fraction of training tokens)")
        ax.set_ylabel(f"predicted {target} validation loss (nats/token)")
        ax.set_title(f"{target} loss ({fit.form})")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
