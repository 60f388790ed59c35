"""The adaptation matrix's format share is pooled over seeds by tokens (as its docstring says), not a mean of
per-seed ratios: checked on two seeds of unequal size against a hand computation."""

from __future__ import annotations

import math

import pytest

from cptlab.diagnose.adaptation_matrix import _worse, pooled_format


def _cell(tokens, delta_log_ppl, format_contribution, wo_tokens, wo_before, wo_after):
    return {"tokens": tokens, "ppl_before": 10.0, "ppl_after": 10.0 * math.exp(delta_log_ppl),
            "delta_log_ppl": delta_log_ppl,
            "format": {"contribution": format_contribution, "share": format_contribution / delta_log_ppl},
            "without_format": {"tokens": wo_tokens, "ppl_before": wo_before, "ppl_after": wo_after,
                               "rel_change": wo_after / wo_before - 1}}


# seed 0: 1000 tokens, Δ log PPL 0.10 of which format 0.08 (share 0.8)
# seed 1: 3000 tokens, Δ log PPL 0.01 of which format -0.005 (share -0.5): a small, noisy total
SEED0 = _cell(1000, 0.10, 0.08, 900, 10.0, 10.2)
SEED1 = _cell(3000, 0.01, -0.005, 2700, 10.0, 9.9)


def test_format_share_pooled_by_tokens():
    got = pooled_format([SEED0, SEED1])
    # by hand: summed Δnll of the format tokens / summed Δnll of all tokens, over both seeds
    #   (1000·0.08 + 3000·(-0.005)) / (1000·0.10 + 3000·0.01) = (80 - 15) / (100 + 30) = 0.5
    assert got["format_share"] == pytest.approx(0.5, rel=1e-12)
    averaged = (0.8 + -0.5) / 2  # what the code did before: the mean of per-seed ratios
    assert averaged == pytest.approx(0.15) and abs(got["format_share"] - averaged) > 0.3
    # without the format tokens: token-pooled log PPL, (900·ln 10.2 + 2700·ln 9.9) / 3600 against ln 10
    expect = math.exp((900 * math.log(10.2) + 2700 * math.log(9.9)) / 3600 - math.log(10.0)) - 1
    assert got["rel_change_without_format"] == pytest.approx(expect, rel=1e-12)
    assert got["attribution_seeds"] == 2
    # one seed: the pooled share is that seed's own share
    assert pooled_format([SEED0])["format_share"] == pytest.approx(0.8)
    # a pooled total of ~0 has no share
    flat = _cell(1000, 0.01, 0.002, 900, 10.0, 10.0)
    flat2 = _cell(1000, -0.01, 0.001, 900, 10.0, 10.0)
    assert pooled_format([flat, flat2])["format_share"] is None


def test_worse_rows_pool_the_seeds_of_a_cell():
    group = {"label": "m, lr 0.001", "base": "m", "lr": 1e-3, "targets": ["a"], "domains": ["a", "b"],
             "cells": {"a": {"a": {"rel_change": 0.04, "vs_control": None},
                             "b": {"rel_change": -0.01, "vs_control": None}}}}
    meta = {"base": "m", "lr": 1e-3, "target": "a", "control": False}
    attribution = {"adapt-a-s0": {"meta": {**meta, "seed": 0}, "domains": {"a": SEED0}},
                   "adapt-a-s1": {"meta": {**meta, "seed": 1}, "domains": {"a": SEED1}}}
    rows = _worse([group], attribution)
    assert [(r["target"], r["domain"]) for r in rows] == [("a", "a")]  # b got better: not a worse cell
    assert rows[0]["format_share"] == pytest.approx(0.5, rel=1e-12)
    assert rows[0]["attribution_seeds"] == 2
