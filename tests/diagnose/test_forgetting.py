"""Forgetting, backward and forward transfer on a hand-made loss matrix (numbers checked by hand)."""

from __future__ import annotations

import math

import pytest

from cptlab.diagnose.forgetting import forgetting_summary, losses_from_evals

# rows: base, after a, after b, after c; columns a, b, c, g (g: a general domain never trained on)
LOSSES = [
    {"a": 3.0, "b": 4.0, "c": 5.0, "g": 2.0},
    {"a": 2.0, "b": 3.8, "c": 5.1, "g": 2.1},
    {"a": 2.5, "b": 3.0, "c": 4.7, "g": 2.2},
    {"a": 2.4, "b": 3.3, "c": 4.0, "g": 2.3},
]


def test_forgetting_by_hand():
    s = forgetting_summary(LOSSES, ["a", "b", "c"])
    # a: trained at stage 1 (2.0); after b 2.5 (F=0.5), after c 2.4 -> F = 2.4 - min(2.0, 2.5) = 0.4
    assert s["forgetting_matrix"][2]["a"] == pytest.approx(0.5)
    assert s["forgetting"]["a"] == pytest.approx(0.4)
    assert s["forgetting"]["b"] == pytest.approx(0.3)  # 3.3 - 3.0
    assert "c" not in s["forgetting"] and s["forgetting_matrix"][3]["c"] is None
    assert s["average_forgetting"] == pytest.approx(0.35)
    assert s["average_forgetting_pct"] == pytest.approx(100 * (math.exp(0.35) - 1))
    # BWT = mean(L[1,a] - L[3,a], L[2,b] - L[3,b]) = mean(-0.4, -0.3)
    assert s["backward_transfer"] == pytest.approx(-0.35)
    # FWT = mean(L[0,b] - L[1,b], L[0,c] - L[2,c]) = mean(0.2, 0.3)
    assert s["forward_transfer"] == pytest.approx(0.25)
    assert s["final_loss"] == pytest.approx((2.4 + 3.3 + 4.0) / 3)
    assert s["perplexity"][0]["g"] == pytest.approx(math.exp(2.0))
    assert s["domains"] == ["a", "b", "c", "g"]


def test_errors_and_eval_rows():
    with pytest.raises(ValueError, match="rows"):
        forgetting_summary(LOSSES[:3], ["a", "b", "c"])
    with pytest.raises(ValueError, match="repeat"):
        forgetting_summary(LOSSES[:3], ["a", "a"])
    with pytest.raises(ValueError, match="no loss"):
        forgetting_summary([{"a": 1.0}, {"a": 1.0}, {"a": 1.0}], ["a", "b"])
    rows = losses_from_evals([{"domains": {"a": {"nll_sum": 20.0, "tokens": 10, "token_perplexity": 1.0}}},
                              {"a": {"token_perplexity": math.e ** 1.5}}])
    assert rows == [{"a": 2.0}, {"a": pytest.approx(1.5)}]
