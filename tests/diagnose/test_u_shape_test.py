"""The U-shape verdict's test: its false-positive rate on flat curves is at most alpha (simulation), it detects a
clear U with 5 seeds, its numbers match scipy's Welch t-test, and one seed gives no verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cptlab.diagnose.checkpoint_series import u_shape_verdict, welch_test, summarize

ALPHA = 0.05


def _points(vals: np.ndarray) -> list[dict]:
    return [{"label": f"c{k}", "tokens": 1000 * 2 ** k, "values": [float(x) for x in vals[k]]}
            for k in range(vals.shape[0])]


def _old_rule(vals: np.ndarray) -> bool:
    """The rule this test replaced: best (lowest mean) vs last, U when the rise exceeds z = 2 standard errors."""
    m, sem = vals.mean(axis=1), vals.std(axis=1, ddof=1) / math.sqrt(vals.shape[1])
    b = int(np.argmin(m))
    return b != len(m) - 1 and m[-1] - m[b] > 2 * math.hypot(sem[b], sem[-1])


def _rates(rng, seeds: int, checkpoints: int, trials: int, mean: np.ndarray | None = None,
           sd: np.ndarray | None = None) -> tuple[float, float]:
    """(share of curves the verdict calls U-shaped, share the old z = 2 rule calls U-shaped), same curves."""
    mean = np.full(checkpoints, 10.0) if mean is None else mean
    sd = np.ones(checkpoints) if sd is None else sd
    hits = old = 0
    for _ in range(trials):
        vals = mean[:, None] + rng.standard_normal((checkpoints, seeds)) * sd[:, None]
        v = u_shape_verdict(_points(vals), alpha=ALPHA)
        hits += v["u_shape"] is True
        old += _old_rule(vals)
    return hits / trials, old / trials


def _rate(rng, seeds: int, checkpoints: int, trials: int, mean: np.ndarray | None = None) -> float:
    return _rates(rng, seeds, checkpoints, trials, mean)[0]


# (seeds, checkpoints, heteroscedastic): flat curves, every checkpoint equal in expectation, seed noise only.
# Measured with this seed (rates, 2000 curves each): see the assertion message when it fails.
FLAT = [(s, k, False) for s in (2, 3, 5) for k in (3, 5, 8)] + [(s, 5, True) for s in (2, 3, 5)]


def test_false_positive_rate_on_flat_curves_is_at_most_alpha():
    rng = np.random.default_rng(20240614)
    trials = 2000
    margin = 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)  # 3 binomial standard errors at the nominal rate
    rates, old = {}, {}
    for seeds, k, het in FLAT:
        sd = np.linspace(1.0, 3.0, k) if het else None  # later checkpoints noisier (more sensitive)
        rates[(seeds, k, het)], old[(seeds, k, het)] = _rates(rng, seeds, k, trials, sd=sd)
    print("false-positive rates:", rates, "old z = 2 rule:", old)
    bad = {c: r for c, r in rates.items() if r > ALPHA + margin}
    assert not bad, f"false-positive rates above {ALPHA} + {margin:.3f}: {bad} (all: {rates})"
    assert np.mean(list(rates.values())) <= ALPHA
    # the simulation can see an inflated rate: the old rule (post-hoc best vs last, z = 2) fails it
    assert min(old[(s, k, False)] for s in (2, 3) for k in (3, 5, 8)) > ALPHA + margin, old


def test_power_on_a_clear_u_with_five_seeds():
    rng = np.random.default_rng(7)
    # minimum in the middle, the last checkpoint 3 noise SDs above it (measured: 0.93 with 1000 curves)
    mean = np.array([13.0, 11.5, 10.0, 11.5, 13.0])
    power = _rate(rng, 5, 5, 500, mean=mean)
    print("power:", power)
    assert power >= 0.85, power
    # and a falling curve (no U) is never called U-shaped
    assert _rate(rng, 5, 5, 300, mean=np.array([14.0, 13.0, 12.0, 11.0, 10.0])) <= ALPHA


def test_numbers_match_scipy_welch_and_bonferroni():
    a, b, c = [10.0, 10.3, 9.9], [9.0, 9.2, 8.9, 9.1], [9.8, 10.1, 9.7]
    v = u_shape_verdict([{"label": "a", "values": a}, {"label": "b", "values": b}, {"label": "c", "values": c}])
    assert v["best"] == "b" and v["last"] == "c"
    pa = stats.ttest_ind(c, a, equal_var=False, alternative="greater").pvalue
    pb = stats.ttest_ind(c, b, equal_var=False, alternative="greater").pvalue
    assert v["comparisons"] == 2 and v["compared_with"] == "b"
    assert v["p_value_raw"] == pytest.approx(min(pa, pb), rel=1e-9)
    assert v["p_value"] == pytest.approx(2 * min(pa, pb), rel=1e-9)
    assert v["t"] == pytest.approx(stats.ttest_ind(c, b, equal_var=False).statistic, rel=1e-9)
    assert v["alpha"] == 0.05 and "Welch" in v["test"] and "Bonferroni" in v["test"]
    assert v["u_shape"] is True and v["verdict"] == "u-shape"
    assert "alpha = 0.05" in v["text"] and "Welch" in v["text"] and f"{v['p_value']:.3g}" in v["text"]
    assert v["difference"] == pytest.approx(np.mean(c) - np.mean(b))
    w = welch_test(summarize(b), summarize(c))
    assert w["p_two_sided"] == pytest.approx(stats.ttest_ind(c, b, equal_var=False).pvalue, rel=1e-9)


def test_two_seeds_are_judged_with_t_quantiles():
    # a 3-SE rise with 2 seeds per checkpoint: z = 2 would call it a U; Welch t on ~2 df does not
    pts = [{"label": "a", "values": [10.0, 10.2]}, {"label": "b", "values": [10.3, 10.5]}]
    v = u_shape_verdict(pts)
    diff, se = 0.3, math.sqrt(2 * 0.02 / 2)
    assert diff / se > 2
    assert v["u_shape"] is False and v["verdict"] == "within noise"
    assert v["p_value"] == pytest.approx(stats.ttest_ind([10.3, 10.5], [10.0, 10.2], equal_var=False,
                                                         alternative="greater").pvalue)
    assert v["detectable_difference"] == pytest.approx(stats.t.isf(0.05, v["df"]) * se)
    assert "would have had to end worse" in v["text"]


def test_one_seed_gives_no_verdict():
    v = u_shape_verdict([{"label": "a", "values": [3.0]}, {"label": "b", "values": [2.0]},
                         {"label": "c", "values": [2.5]}])
    assert v["u_shape"] is None and v["p_value"] is None and v["comparisons"] == 0
    assert "single seed" in v["text"] and "no verdict" in v["text"]
    # the last checkpoint with one seed: no test either, even though earlier ones have several
    v = u_shape_verdict([{"label": "a", "values": [3.0, 3.1]}, {"label": "b", "values": [2.0, 2.1]},
                         {"label": "c", "values": [2.5]}])
    assert v["u_shape"] is None and "only 1 seed of the last checkpoint" in v["text"]


def test_forgetting_text_uses_welch_t_not_z():
    from cptlab.report.section_checkpoint_sweep import _forgetting_text

    first, last = [0.10, 0.14], [0.30, 0.36]  # 2 seeds: diff 0.21 is ~6 SE, but on ~2 df
    rows = [{"label": "a", "tokens": None, **summarize(first)}, {"label": "b", "tokens": None, **summarize(last)}]
    p = stats.ttest_ind(last, first, equal_var=False).pvalue
    text = _forgetting_text(rows, 1e-3)
    assert f"two-sided p = {p:.3g}" in text and "alpha = 0.05" in text
    assert ("forgets more" in text) == (p <= 0.05)
    rows[1] = {"label": "b", "tokens": None, **summarize([0.13, 0.18])}
    assert "no clear difference" in _forgetting_text(rows, 1e-3)
