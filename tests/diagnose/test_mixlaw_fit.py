"""The D-CPT law fit: recovers known laws from noisy points, recommends the true optimum, rejects bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptlab.diagnose.mixlaw_fit import fit_from_dict, fit_law, load_fit, predict_params, save_fit
from cptlab.diagnose.mixlaw_points import make_points
from cptlab.diagnose.mixlaw_use import best_ratio_for_domain_data, max_ratio_within_budget, ratio_grid
from cptlab.errors import CptlabError, UsageError
from tests.diagnose.mixlaw_helpers import N0, TRUE, synthetic

R_FINE = np.linspace(0, 1, 101)
D_CHECK = [2e6, 5e6, 2e7, 4e7]  # inside the fitted range and 2x beyond it


@pytest.fixture(scope="module")
def fits():
    out = {}
    for target in ("general", "domain"):
        pts, params, form = synthetic(target, noise=0.002, seed=1)
        out[target] = fit_law(pts, target)
    return out


@pytest.mark.parametrize("target", ["general", "domain"])
def test_fit_recovers_predictions_within_1_percent(fits, target):
    fit = fits[target]
    assert fit.form == "fixed-N" and fit.N == N0  # one model size: chosen automatically
    for D in D_CHECK:
        pred = fit.predict(N0, D, R_FINE)
        true = predict_params(TRUE[target], "fixed-N", target, N0, D, R_FINE)
        assert np.max(np.abs(pred / true - 1)) < 0.01, (target, D)
    assert fit.r2 > 0.99
    assert fit.n_points == 72
    assert 0 <= fit.heldout_error < 0.01  # each interior ratio predicted from the others
    assert set(fit.heldout_by_ratio) == {"0.1", "0.2", "0.33", "0.5", "0.67", "0.8", "0.9"}
    # the Huber value is the mean Huber of log residuals at the reported parameters
    pts, _, _ = synthetic(target, noise=0.002, seed=1)
    res = np.log(fit.predict(pts.N, pts.D, pts.r)) - np.log(pts.loss)
    a = np.abs(res)
    huber = np.where(a <= 1e-3, 0.5 * res**2, 1e-3 * (a - 0.5e-3)).mean()
    assert fit.huber == pytest.approx(huber, rel=1e-9)


def test_general_target_uses_one_minus_r():
    """r is the domain ratio in every file: the general law at domain ratio r equals the formula at rho = 1 - r."""
    p = TRUE["general"]
    r, D = 0.3, 1e7
    rho = 1 - r
    expect = p["E"] + p["B"] * rho ** p["eta"] / D ** p["beta"] + p["C"] / (rho + p["epsilon"]) ** p["gamma"]
    assert predict_params(p, "fixed-N", "general", N0, D, r) == pytest.approx(expect, rel=1e-12)
    assert predict_params(p, "fixed-N", "domain", N0, D, rho) == pytest.approx(expect, rel=1e-12)


def test_recommendations_match_true_optimum_within_one_grid_step(fits):
    step = 0.01
    grid = ratio_grid(step)
    # (a) largest domain ratio within +3% of the general loss at r = 0, at the largest D trained
    D = 2e7
    rec = max_ratio_within_budget(fits["general"], 0.03, D=D, domain=fits["domain"], grid_step=step)
    true_g = predict_params(TRUE["general"], "fixed-N", "general", N0, D, grid)
    true_r = grid[np.flatnonzero(true_g <= true_g[0] * 1.03)[-1]]
    assert abs(rec.ratio - true_r) <= step + 1e-9
    assert rec.base_from == "predicted at r=0" and rec.general_loss <= rec.limit
    # (b) fixed domain data: D = D_d / r
    D_d = 5e6
    rec_b = best_ratio_for_domain_data(fits["domain"], D_d, general=fits["general"], grid_step=step)
    r_pos = grid[1:]
    true_d = predict_params(TRUE["domain"], "fixed-N", "domain", N0, D_d / r_pos, r_pos)
    assert abs(rec_b.ratio - r_pos[np.argmin(true_d)]) <= step + 1e-9
    assert 0.05 < rec_b.ratio < 0.95  # an interior optimum, not a grid edge
    assert rec_b.D == pytest.approx(D_d / rec_b.ratio)


def test_budget_with_given_base_loss(fits):
    g = fits["general"]
    low = max_ratio_within_budget(g, 0.0, base_loss=1.0)  # below every prediction: nothing qualifies
    assert low.ratio is None and low.base_from == "given"
    high = max_ratio_within_budget(g, 0.0, base_loss=100.0)
    assert high.ratio == 1.0


def test_full_form_with_several_model_sizes():
    pts, params, form = synthetic("domain", Ns=(3e5, 1e6, 3e6), n_D=5, ratios=[0, 0.2, 0.5, 0.8, 1.0])
    fit = fit_law(pts, "domain", heldout=False)
    assert fit.form == "full" and fit.N is None
    for N in (3e5, 1e6, 3e6):
        for D in (2e6, 2e7):
            pred, true = fit.predict(N, D, R_FINE), predict_params(params, "full", "domain", N, D, R_FINE)
            assert np.max(np.abs(pred / true - 1)) < 0.01


def test_simple_form_and_determinism():
    pts, _, _ = synthetic("domain", noise=0.002, seed=2, n_D=5)
    a = fit_law(pts, "domain", form="fixed-N-simple", heldout=[0.5])
    b = fit_law(pts, "domain", form="fixed-N-simple", heldout=[0.5])
    assert set(a.params) == {"E", "B", "beta", "C", "gamma", "epsilon"}
    assert a.params == b.params and a.heldout_error == b.heldout_error
    assert list(a.heldout_by_ratio) == ["0.5"]


def test_cross_domain_coefficient_predicts_a_new_domain():
    """K = w1/k1 + w2*k2 fitted over four domains predicts a fifth domain's curve from its k1, k2."""
    true = {**TRUE["domain"], "F": 0.6, "mu": 1.0, "w2": 2.0}
    domains = {"a": (4.0, 0.05), "b": (6.0, 0.10), "c": (5.0, 0.30), "d": (8.0, 0.02)}
    ratios, Ds = [0.0, 0.2, 0.5, 0.8, 1.0], np.geomspace(2e6, 2e7, 5)
    rows = [(D, r, k1, k2) for (k1, k2) in domains.values() for D in Ds for r in ratios]
    D, r, k1, k2 = (np.array(c) for c in zip(*rows))
    y = predict_params(true, "fixed-N", "domain", N0, D, r, k1, k2)
    y *= 1 + 0.001 * np.random.default_rng(3).standard_normal(y.size)
    fit = fit_law(make_points(N0, D, r, y, k1=k1, k2=k2), "domain", heldout=False, cross_domain=True)
    assert fit.cross_domain and "w2" in fit.params and "K" in fit.formula
    new = (7.0, 0.15)
    pred = fit.predict(N0, 1e7, R_FINE, *new)
    want = predict_params(true, "fixed-N", "domain", N0, 1e7, R_FINE, *new)
    assert np.max(np.abs(pred / want - 1)) < 0.02
    with pytest.raises(UsageError, match="k1"):
        fit.predict(N0, 1e7, 0.5)


def test_fit_json_round_trip_and_contract(tmp_path, fits):
    path = tmp_path / "fit.json"
    save_fit(fits["domain"], path)
    data = json.loads(path.read_text())
    for key in ("target", "form", "params", "huber", "r2", "n_points", "heldout_error"):
        assert key in data
    back = load_fit(path)
    assert back.predict(N0, 1e7, 0.4) == pytest.approx(float(fits["domain"].predict(N0, 1e7, 0.4)), rel=1e-12)
    bad = dict(data, params={**data["params"], "beta": "x"})
    with pytest.raises(CptlabError, match="params.beta"):
        fit_from_dict(bad, "f.json")
    with pytest.raises(CptlabError, match="'target'"):
        fit_from_dict({k: v for k, v in data.items() if k != "target"}, "f.json")


def test_too_few_points_and_ratios():
    pts, _, _ = synthetic("domain", n_D=2, ratios=[0.0, 0.5, 1.0])  # 6 points, 7 parameters
    with pytest.raises(CptlabError, match="too few"):
        fit_law(pts, "domain")
    pts, _, _ = synthetic("domain", n_D=8, ratios=[0.2, 0.8])
    with pytest.raises(CptlabError, match="distinct ratio"):
        fit_law(pts, "domain")
    pts, _, _ = synthetic("domain", n_D=4)
    with pytest.raises(CptlabError, match="two model sizes"):
        fit_law(pts, "domain", form="full")
    with pytest.raises(UsageError, match="--target"):
        fit_law(pts, "both")
    with pytest.raises(UsageError, match="--holdout 0.4"):
        fit_law(pts, "domain", heldout=[0.4])


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": [np.nan, 3.0]}, r"point 0: column loss is nan"),
    ({"r": [0.5, 1.2]}, r"point 1: column r = 1.2 is outside \[0, 1\]"),
    ({"r": [-0.1, 0.5]}, r"point 0: column r = -0.1"),
    ({"D": [0.0, 1e6]}, r"column D = 0 must be > 0"),
    ({"N": [np.inf, 1e6]}, r"column N is inf"),
])
def test_bad_point_values(kwargs, match):
    args = {"N": [1e6, 1e6], "D": [1e6, 2e6], "r": [0.1, 0.5], "loss": [3.0, 2.9], **kwargs}
    with pytest.raises(CptlabError, match=match):
        make_points(**args)
