"""The D-CPT mixture law (arXiv 2406.01375): fit a validation loss as a function of model size, tokens and ratio.

Forms (`FORMS`; r is the **domain** ratio in every file and on the command line):

* ``full``:           L(N, D, r) = E + A/N^α + B·ρ^η/D^β + C/(ρ+ε)^γ
* ``fixed-N``:        L(D, r)    = E + B·ρ^η/D^β + C/(ρ+ε)^γ        (one model size: A/N^α is folded into E)
* ``fixed-N-simple``: L(D, r)    = E + B/D^β + C/(ρ+ε)^γ            (η = 0: the ratio and token terms separate)

where ρ = r for the domain loss (``target="domain"``) and ρ = 1 − r, the general ratio, for the general loss
(``target="general"``). N is the model's parameter count and D the number of continued-pretraining tokens (domain
and general together). ``full`` is chosen when the points have more than one N, else ``fixed-N``; a fit of a
``fixed-N`` form remembers its N and predicts only for it.

Cross-domain (``cross_domain=True``, D-CPT §3.3): one more term F/K^μ with the domain-specific coefficient
K = w1/k1 + w2·k2 (k1: the domain's validation loss before training, k2: its early rate of loss decline; per
point, see `mixlaw_points.domain_coefficients`). F absorbs the overall scale of K, so w1 is fixed at 1 and w2 is
fitted. Fitted across several domains, it predicts a new domain's curve from its k1 and k2 (a short run).

Fitting, as in the paper (following Chinchilla's approach 3): minimise the Huber loss (``delta``, default 1e-3)
of the residuals ``log L_pred − log L_obs`` with scipy's L-BFGS-B (analytic gradient). The positive coefficients
E, A, B, C, ε (and F, w2) are optimised as their logarithms; the exponents directly, within [0, 5]. Starting
points: a grid over the exponents, ε and E (E at 50% or 90% of the smallest observed loss), each coefficient
scaled so that its term is an equal share of the mean loss above E at the data's geometric centre. Every grid
point's objective is evaluated, L-BFGS-B runs from the `n_starts` best, and the best end point is kept.

Reported: the parameters, the mean Huber loss at the optimum, R² of the loss (1 − SS_res/SS_tot), the number of
points, and the leave-out error: for each held-out ratio (default: every distinct ratio but the smallest and the
largest, one at a time) the law is fitted again without that ratio's points and predicts them; `heldout_error` is
the mean |pred − obs| / obs over all held-out points (`heldout_by_ratio` per ratio). Deterministic.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cptlab.diagnose.mixlaw_points import Points
from cptlab.errors import CptlabError, UsageError

TARGETS = ("general", "domain")
FORMS: dict[str, tuple[str, ...]] = {
    "full": ("E", "A", "alpha", "B", "eta", "beta", "C", "gamma", "epsilon"),
    "fixed-N": ("E", "B", "eta", "beta", "C", "gamma", "epsilon"),
    "fixed-N-simple": ("E", "B", "beta", "C", "gamma", "epsilon"),
}
K_PARAMS = ("F", "mu", "w2")
FORMULAS = {
    "full": "L = E + A/N^alpha + B*rho^eta/D^beta + C/(rho+epsilon)^gamma",
    "fixed-N": "L = E + B*rho^eta/D^beta + C/(rho+epsilon)^gamma",
    "fixed-N-simple": "L = E + B/D^beta + C/(rho+epsilon)^gamma",
}
K_FORMULA = " + F/K^mu, K = 1/k1 + w2*k2"
LOG_PARAMS = ("E", "A", "B", "C", "epsilon", "F", "w2")  # optimised as logarithms
EXPONENT_BOUNDS = (0.0, 5.0)
EPS_BOUNDS = (1e-4, 1.0)
LOG_COEF_BOUNDS = (-60.0, 120.0)
DEFAULT_DELTA = 1e-3
MIN_RATIOS = 3
AGREE = 3  # L-BFGS-B runs that must end at the same best value before the rest are skipped


def param_names(form: str, cross_domain: bool = False) -> tuple[str, ...]:
    return FORMS[form] + (K_PARAMS if cross_domain else ())


# ---------------------------------------------------------------------------------------------------------------
# The law.

class _Design:
    """The data in the form the law needs: logs of N and D (minus centres), rho and its log (0 where rho = 0).

    Fitting centres log N and log D on the data (`cN`, `cD`) and optimises log A − α·cN and log B − β·cD (the
    terms' values at the centre) instead of log A and log B: with log N ≈ 20, log A and α are otherwise almost
    collinear and L-BFGS-B needs many more iterations. `_to_raw` converts back.
    """

    def __init__(self, N, D, rho, cN: float = 0.0, cD: float = 0.0, k1=None, k2=None):
        self.cN, self.cD = cN, cD
        self.logN = np.log(N) - cN
        self.logD = np.log(D) - cD
        self.rho = np.asarray(rho, dtype=np.float64)
        self.pos = self.rho > 0
        self.logrho = np.log(np.where(self.pos, self.rho, 1.0))
        self.inv_k1 = None if k1 is None else 1.0 / np.asarray(k1, dtype=np.float64)
        self.k2 = None if k2 is None else np.asarray(k2, dtype=np.float64)


def _shift(theta: np.ndarray, names: tuple[str, ...], x: _Design, sign: float) -> np.ndarray:
    t = dict(zip(names, theta))
    if "A" in t:
        t["A"] = t["A"] + sign * t["alpha"] * x.cN
    t["B"] = t["B"] + sign * t["beta"] * x.cD
    return np.array([t[k] for k in names])


def _terms_and_grads(theta: np.ndarray, names: tuple[str, ...], x: _Design, want_grad: bool):
    """Predicted loss [n] and d pred / d theta [n_params, n] (theta in optimisation coordinates)."""
    t = dict(zip(names, theta))
    grads = {}
    E = math.exp(t["E"])
    pred = np.full(x.rho.shape, E)
    grads["E"] = np.full(x.rho.shape, E)
    if "A" in t:
        tA = np.exp(t["A"] - t["alpha"] * x.logN)
        pred += tA
        grads["A"], grads["alpha"] = tA, -x.logN * tA
    eta = t.get("eta", 0.0)
    tB = np.exp(t["B"] - t["beta"] * x.logD + eta * x.logrho)
    if "eta" in t:
        tB = np.where(x.pos, tB, 0.0)  # rho^eta = 0 at rho = 0 (eta > 0)
        grads["eta"] = x.logrho * tB
    pred += tB
    grads["B"], grads["beta"] = tB, -x.logD * tB
    eps = math.exp(t["epsilon"])
    log_re = np.log(x.rho + eps)
    tC = np.exp(t["C"] - t["gamma"] * log_re)
    pred += tC
    grads["C"], grads["gamma"] = tC, -log_re * tC
    grads["epsilon"] = -t["gamma"] * tC / (x.rho + eps) * eps
    if "F" in t:
        w2 = math.exp(t["w2"])
        K = x.inv_k1 + w2 * x.k2
        tF = np.exp(t["F"] - t["mu"] * np.log(K))
        pred += tF
        grads["F"], grads["mu"], grads["w2"] = tF, -np.log(K) * tF, -t["mu"] * tF / K * w2 * x.k2
    if not want_grad:
        return pred, None
    return pred, np.stack([grads[k] for k in names])


def _huber(res: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(res)
    small = a <= delta
    value = np.where(small, 0.5 * res**2, delta * (a - 0.5 * delta))
    deriv = np.where(small, res, delta * np.sign(res))
    return value, deriv


def _objective(theta, names, x, logy, delta):
    """Mean Huber of log residuals, scaled by 1/delta² so L-BFGS-B's tolerances see O(1) numbers."""
    with np.errstate(over="ignore", invalid="ignore"):
        pred, jac = _terms_and_grads(theta, names, x, True)
    if not np.all(np.isfinite(pred)) or np.any(pred <= 0) or not np.all(np.isfinite(jac)):
        return 1e30, np.zeros_like(theta)
    res = np.log(pred) - logy
    h, dh = _huber(res, delta)
    scale = 1.0 / (len(logy) * delta**2)
    return float(h.sum() * scale), (jac @ (dh / pred)) * scale


def _pack(params: dict[str, float], names: tuple[str, ...]) -> np.ndarray:
    return np.array([math.log(params[k]) if k in LOG_PARAMS else params[k] for k in names])


def predict_params(params: dict[str, float], form: str, target: str, N, D, r, k1=None, k2=None) -> np.ndarray:
    """The law's loss at (N, D, r), r the domain ratio (broadcast); k1, k2 for a cross-domain fit."""
    cross = "F" in params
    if cross and (k1 is None or k2 is None):
        raise UsageError("this is a cross-domain fit: give the domain's k1 and k2 (--k1, --k2)")
    vals = [np.asarray(v, dtype=np.float64) for v in ((N, D, r, k1, k2) if cross else (N, D, r))]
    vals = np.broadcast_arrays(*vals)
    shape = vals[0].shape
    flat = [v.ravel() for v in vals]
    rho = 1.0 - flat[2] if target == "general" else flat[2]
    x = _Design(flat[0], flat[1], rho, k1=flat[3] if cross else None, k2=flat[4] if cross else None)
    pred, _ = _terms_and_grads(_pack(params, param_names(form, cross)), param_names(form, cross), x, False)
    return pred.reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Fitting.

@dataclass
class FitResult:
    target: str
    form: str
    params: dict[str, float]
    huber: float
    r2: float | None
    n_points: int
    heldout_error: float | None
    heldout_by_ratio: dict[str, float] = field(default_factory=dict)
    formula: str = ""
    cross_domain: bool = False
    delta: float = DEFAULT_DELTA
    N: float | None = None  # the single model size of a fixed-N fit
    ranges: dict[str, list[float]] = field(default_factory=dict)
    ratio: str = "r is the domain ratio; the general-loss law uses rho = 1 - r"
    starts: int = 0
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def predict(self, N, D, r, k1=None, k2=None) -> np.ndarray:
        return predict_params(self.params, self.form, self.target, N, D, r, k1, k2)


def _starts(names: tuple[str, ...], x: _Design, y: np.ndarray) -> np.ndarray:
    """The grid of starting points (optimisation coordinates), data-scaled."""
    ymin, ymean = float(y.min()), float(y.mean())
    rho_c = float(np.exp(np.mean(np.log(x.rho + 0.05))))
    n_terms = sum(1 for k in ("A", "B", "C", "F") if k in names)
    grid = {"E_frac": (0.5, 0.9), "alpha": (0.2, 0.6), "beta": (0.2, 0.6), "gamma": (0.1, 0.6),
            "eta": (0.2, 1.0), "epsilon": (0.01, 0.2), "mu": (0.5, 1.5)}
    axes = [k for k in grid if k == "E_frac" or k in names]
    if "F" in names:
        w2 = float(np.median(x.inv_k1) / max(np.median(x.k2), 1e-12))  # both parts of K equal at the median
        K_c = float(np.exp(np.mean(np.log(x.inv_k1 + w2 * x.k2))))
    out = []
    for combo in itertools.product(*(grid[k] for k in axes)):
        v = dict(zip(axes, combo))
        E = v["E_frac"] * ymin
        share = max(ymean - E, 1e-3 * ymean) / n_terms
        p = {"E": E, "epsilon": v["epsilon"], "gamma": v["gamma"], "beta": v["beta"]}
        p["C"] = share * (rho_c + p["epsilon"]) ** p["gamma"]
        eta = v.get("eta", 0.0)
        p["B"] = share / rho_c**eta  # centred coordinates: the term's value at the data's centre
        if "eta" in names:
            p["eta"] = eta
        if "A" in names:
            p["alpha"] = v["alpha"]
            p["A"] = share
        if "F" in names:
            p["mu"], p["w2"] = v["mu"], w2
            p["F"] = share * K_c ** v["mu"]
        out.append(_pack(p, names))
    return np.array(out)


def _bounds(names: tuple[str, ...]) -> np.ndarray:
    out = []
    for k in names:
        if k == "epsilon":
            out.append((math.log(EPS_BOUNDS[0]), math.log(EPS_BOUNDS[1])))
        elif k in LOG_PARAMS:
            out.append(LOG_COEF_BOUNDS)
        elif k == "eta":
            out.append((1e-4, EXPONENT_BOUNDS[1]))  # r^eta at r = 0 is 0 only for eta > 0
        else:
            out.append(EXPONENT_BOUNDS)
    return np.array(out)


def _design(pts: Points, target: str, cross: bool) -> _Design:
    rho = 1.0 - pts.r if target == "general" else pts.r
    return _Design(pts.N, pts.D, rho, cN=float(np.log(pts.N).mean()), cD=float(np.log(pts.D).mean()),
                   k1=pts.k1 if cross else None, k2=pts.k2 if cross else None)


def _one_blas_thread():
    """L-BFGS-B on ~10 parameters gains nothing from BLAS threads, and threads spinning on a busy machine made
    each iteration ~10x slower: limit BLAS to one thread while fitting (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _fit_once(pts: Points, target: str, names: tuple[str, ...], delta: float, n_starts: int,
              maxiter: int = 3000) -> dict[str, float]:
    with _one_blas_thread():
        return _fit_once_inner(pts, target, names, delta, n_starts, maxiter)


def _fit_once_inner(pts: Points, target: str, names: tuple[str, ...], delta: float, n_starts: int,
                    maxiter: int) -> dict[str, float]:
    from scipy.optimize import minimize

    x = _design(pts, target, "F" in names)
    logy = np.log(pts.loss)
    bounds = _bounds(names)
    starts = np.clip(_starts(names, x, pts.loss), bounds[:, 0], bounds[:, 1])
    scores = np.array([_objective(s, names, x, logy, delta)[0] for s in starts])
    best_theta, best_val = starts[int(np.argmin(scores))], float(scores.min())
    ends: list[float] = []
    for i in np.argsort(scores, kind="stable")[:n_starts]:
        res = minimize(_objective, starts[i], args=(names, x, logy, delta), jac=True, method="L-BFGS-B",
                       bounds=bounds, options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-9})
        if not np.isfinite(res.fun):
            continue
        ends.append(float(res.fun))
        if res.fun < best_val:
            best_theta, best_val = res.x, float(res.fun)
        # Enough: `AGREE` runs from different starts ended at the best value found (a global optimum is likely).
        if sum(1 for v in ends if v <= best_val * (1 + 1e-5) + 1e-12) >= AGREE:
            break
    raw = _shift(best_theta, names, x, +1.0)
    return {k: (math.exp(v) if k in LOG_PARAMS else float(v)) for k, v in zip(names, raw)}


def choose_form(pts: Points, form: str | None) -> str:
    distinct_n = len(np.unique(pts.N))
    if form is None:
        return "full" if distinct_n > 1 else "fixed-N"
    if form not in FORMS:
        raise UsageError(f"--form {form!r}: expected one of {', '.join(FORMS)}")
    if form == "full" and distinct_n < 2:
        raise CptlabError(f"{pts.source}: --form full needs points of at least two model sizes N; all have "
                          f"N = {pts.N[0]:g} (use fixed-N)")
    if form != "full" and distinct_n > 1:
        raise CptlabError(f"{pts.source}: --form {form} is for one model size, but the points have "
                          f"{distinct_n} values of N (use full, or fit each size separately)")
    return form


def fit_law(pts: Points, target: str, form: str | None = None, delta: float = DEFAULT_DELTA, n_starts: int = 8,
            heldout: bool | list[float] = True, heldout_starts: int = 3, cross_domain: bool = False) -> FitResult:
    """Fit the law to `pts` for `target` ("general" or "domain"); see the module docstring.

    `heldout`: True (each interior ratio in turn), False (none), or a list of ratios held out one at a time."""
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: expected general or domain")
    if not delta > 0:
        raise UsageError(f"--delta {delta}: must be > 0")
    form = choose_form(pts, form)
    if cross_domain and not pts.has_k:
        raise CptlabError(f"{pts.source}: the cross-domain law needs k1 and k2 for every point")
    names = param_names(form, cross_domain)
    k = len(names)
    if len(pts) <= k:
        raise CptlabError(f"{pts.source}: {len(pts)} points are too few to fit the {form} form's {k} parameters "
                          f"(need at least {k + 1})")
    ratios = np.unique(pts.r)
    if len(ratios) < MIN_RATIOS:
        raise CptlabError(f"{pts.source}: {len(ratios)} distinct ratio(s) r ({', '.join(f'{v:g}' for v in ratios)})"
                          f"; the law's ratio terms need at least {MIN_RATIOS}")
    if cross_domain and len(np.unique(pts.k1 + 1e3 * pts.k2)) < 2:
        raise CptlabError(f"{pts.source}: the cross-domain law needs points of at least two domains (k1, k2)")
    params = _fit_once(pts, target, names, delta, n_starts)
    kk = (pts.k1, pts.k2) if cross_domain else (None, None)
    pred = predict_params(params, form, target, pts.N, pts.D, pts.r, *kk)
    huber = float(_huber(np.log(pred) - np.log(pts.loss), delta)[0].mean())
    ss_tot = float(((pts.loss - pts.loss.mean()) ** 2).sum())
    r2 = 1.0 - float(((pts.loss - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else None

    if heldout is True:
        held_ratios = list(ratios[1:-1])
    elif heldout is False:
        held_ratios = []
    else:
        held_ratios = [float(v) for v in heldout]
        unknown = [v for v in held_ratios if not np.any(np.isclose(ratios, v, atol=1e-9))]
        if unknown:
            raise UsageError(f"--holdout {','.join(f'{v:g}' for v in unknown)}: no points at that ratio "
                             f"(ratios: {', '.join(f'{v:g}' for v in ratios)})")
    by_ratio: dict[str, float] = {}
    errors: list[np.ndarray] = []
    for rv in held_ratios:
        hold = np.isclose(pts.r, rv, atol=1e-9)
        train = pts.subset(~hold)
        if len(train) <= k or len(np.unique(train.r)) < MIN_RATIOS:
            continue
        th = _fit_once(train, target, names, delta, heldout_starts)
        held = pts.subset(hold)
        hk = (held.k1, held.k2) if cross_domain else (None, None)
        p = predict_params(th, form, target, held.N, held.D, held.r, *hk)
        err = np.abs(p - held.loss) / held.loss
        by_ratio[f"{rv:g}"] = float(err.mean())
        errors.append(err)
    return FitResult(
        target=target, form=form, params=params, huber=huber, r2=r2, n_points=len(pts),
        heldout_error=float(np.concatenate(errors).mean()) if errors else None, heldout_by_ratio=by_ratio,
        formula=FORMULAS[form] + (K_FORMULA if cross_domain else ""), cross_domain=cross_domain, delta=delta,
        N=float(pts.N[0]) if form != "full" else None,
        ranges={"N": [float(pts.N.min()), float(pts.N.max())], "D": [float(pts.D.min()), float(pts.D.max())],
                "r": [float(pts.r.min()), float(pts.r.max())]},
        starts=n_starts, source=pts.source)


# ---------------------------------------------------------------------------------------------------------------
# Fit files.

def save_fit(fit: FitResult, path: str | Path) -> None:
    from cptlab.fsutil import atomic_write_json

    atomic_write_json(path, fit.to_dict())


def fit_from_dict(data: dict, source: str = "fit") -> FitResult:
    """A FitResult from its JSON; every problem named by field."""
    if not isinstance(data, dict):
        raise CptlabError(f"{source}: expected a JSON object (a fit written by `cptlab mixlaw fit --json`)")
    for key in ("target", "form", "params"):
        if key not in data:
            raise CptlabError(f"{source}: field {key!r} is missing (is this a fit written by `mixlaw fit --json`?)")
    if data["target"] not in TARGETS:
        raise CptlabError(f"{source}: field 'target' is {data['target']!r}; expected general or domain")
    if data["form"] not in FORMS:
        raise CptlabError(f"{source}: field 'form' is {data['form']!r}; expected one of {', '.join(FORMS)}")
    params = data["params"]
    if not isinstance(params, dict):
        raise CptlabError(f"{source}: field 'params' must be an object of name: value")
    cross = "F" in params
    for name in param_names(data["form"], cross):
        v = params.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise CptlabError(f"{source}: field params.{name} is {v!r}; expected a finite number")
        if name in LOG_PARAMS and v <= 0:
            raise CptlabError(f"{source}: field params.{name} = {v} must be > 0")
    known = set(FitResult.__dataclass_fields__)
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs.setdefault("huber", math.nan)
    kwargs.setdefault("r2", None)
    kwargs.setdefault("n_points", 0)
    kwargs.setdefault("heldout_error", None)
    kwargs["params"] = {k: float(params[k]) for k in param_names(data["form"], cross)}
    kwargs["cross_domain"] = cross
    return FitResult(**kwargs)


def load_fit(path: str | Path) -> FitResult:
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: fit file not found (write one with `cptlab mixlaw fit ... --json {path}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CptlabError(f"{path}: not a JSON file ({e})") from None
    return fit_from_dict(data, str(path))
