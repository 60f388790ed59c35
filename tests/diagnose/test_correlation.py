"""Correlation of similarity vs ΔPPL: matches scipy on fixed inputs, partial correlation matches regression
residuals, the bootstrap is seeded and reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cptlab.diagnose.correlation import correlate, describe, partial_correlation, rankdata

X = [0.114, 0.125, 0.156, 0.156, 0.174, 0.257, 0.306, 0.304]  # RESEARCH-NOTES' JSDs (with a tie)
Y = [-5.1, -2.5, -4.8, -5.3, -40.0, -64.0, -72.0, -83.0]      # ΔPPL % at lr 3e-4
Z = [49.6, 51.8, 65.0, 19.7, 82.4, 136.3, 111.1, 326.1]       # PPL before


def test_matches_scipy():
    res = correlate(X, Y, Z, n_boot=200, seed=1)
    pr = stats.pearsonr(X, Y)
    sr = stats.spearmanr(X, Y)
    assert res["n"] == 8
    assert res["pearson"]["r"] == pytest.approx(pr.statistic, abs=1e-12)
    assert res["pearson"]["p"] == pytest.approx(pr.pvalue, rel=1e-9)
    assert res["spearman"]["rho"] == pytest.approx(sr.statistic, abs=1e-12)
    assert res["spearman"]["p"] == pytest.approx(sr.pvalue, rel=1e-9)
    np.testing.assert_allclose(rankdata(X), stats.rankdata(X))


def test_partial_equals_correlation_of_residuals():
    def residual(v, z):
        A = np.column_stack([np.ones(len(z)), z])
        coef, *_ = np.linalg.lstsq(A, v, rcond=None)
        return np.asarray(v) - A @ coef

    expect = stats.pearsonr(residual(X, Z), residual(Y, Z)).statistic
    assert partial_correlation(X, Y, Z) == pytest.approx(expect, abs=1e-12)
    rx, ry, rz = stats.rankdata(X), stats.rankdata(Y), stats.rankdata(Z)
    expect_s = stats.pearsonr(residual(rx, rz), residual(ry, rz)).statistic
    assert partial_correlation(X, Y, Z, "spearman") == pytest.approx(expect_s, abs=1e-12)
    res = correlate(X, Y, Z, n_boot=10)
    r = res["partial"]["pearson"]["r"]
    t = r * math.sqrt(5 / (1 - r * r))
    assert res["partial"]["pearson"]["p"] == pytest.approx(2 * stats.t.sf(abs(t), 5), rel=1e-9)


def test_bootstrap_seeded_and_reproducible():
    a = correlate(X, Y, n_boot=500, seed=7)
    b = correlate(X, Y, n_boot=500, seed=7)
    c = correlate(X, Y, n_boot=500, seed=8)
    assert a == b
    assert a["spearman"]["ci"] != c["spearman"]["ci"]
    ci = a["spearman"]["ci"]
    assert -1 <= ci["low"] <= ci["high"] <= 1 and ci["resamples"] > 400
    # Independent recomputation of the percentile interval with the same generator.
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 8, size=(500, 8))
    x, y = np.array(X), np.array(Y)
    vals = []
    for row in idx:
        if np.ptp(x[row]) > 0 and np.ptp(y[row]) > 0:
            vals.append(stats.pearsonr(x[row], y[row]).statistic)
    lo, hi = np.quantile(vals, [0.025, 0.975])
    assert a["pearson"]["ci"]["low"] == pytest.approx(lo, abs=1e-10)
    assert a["pearson"]["ci"]["high"] == pytest.approx(hi, abs=1e-10)
    assert a["pearson"]["ci"]["resamples"] == len(vals)


def test_missing_values_and_too_few_points():
    res = correlate([1.0, 2.0, None, 4.0], [1.0, 3.0, 2.0, float("nan")], labels=["a", "b", "c", "d"])
    assert res["n"] == 2 and res["dropped"] == ["c", "d"]
    assert res["spearman"]["rho"] is None and res["pearson"]["ci"]["low"] is None
    assert "too few" in describe(res, "similarity", "ΔPPL")
    const = correlate([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert const["pearson"]["r"] is None
    with pytest.raises(ValueError):
        correlate([1.0], [1.0, 2.0])


def test_describe_from_numbers():
    res = correlate(X, Y, Z, n_boot=200)
    text = describe(res, "JSD", "ΔPPL")
    assert f"{res['spearman']['rho']:+.2f}" in text and "n = 8" in text and "partial" in text
