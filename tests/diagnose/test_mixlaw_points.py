"""Mixture-law points: CSV reading with errors that name file/line/column, trainer metrics.jsonl parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptlab.diagnose.mixlaw_points import (
    domain_coefficients,
    load_points,
    points_from_metrics,
    write_points_csv,
)
from cptlab.errors import CptlabError
from tests.diagnose.mixlaw_helpers import synthetic


def test_csv_round_trip_ignores_extra_columns(tmp_path):
    pts, _, _ = synthetic("domain", n_D=3)
    path = tmp_path / "p.csv"
    write_points_csv(pts, path)
    back = load_points(path)
    np.testing.assert_array_equal(back.loss, pts.loss)
    np.testing.assert_array_equal(back.r, pts.r)
    other = tmp_path / "q.csv"
    other.write_text("run,loss,r,D,N,note\nmix-a,3.5,0.5,1000,1e6,x\n\nmix-b,3.4,0.5,2000,1e6,y\n")
    q = load_points(other)
    assert list(q.D) == [1000, 2000] and q.group == ["mix-a", "mix-b"]
    assert q.where == [f"{other}:2", f"{other}:4"]  # blank lines skipped, real line numbers kept


@pytest.mark.parametrize("text,match", [
    ("N,D,loss\n1e6,1000,3.0\n", r"p.csv:1: header N,D,loss lacks column\(s\) r"),
    ("N,D,r,loss\n1e6,1000,0.5,3.0\n1e6,2000,0.5,nan\n", r"p.csv:3: column loss is nan"),
    ("N,D,r,loss\n1e6,1000,1.5,3.0\n", r"p.csv:2: column r = 1.5 is outside \[0, 1\]"),
    ("N,D,r,loss\n1e6,1000,0.5,abc\n", r"p.csv:2: column loss is 'abc', not a number"),
    ("N,D,r,loss\n1e6,1000,0.5\n", r"p.csv:2: 3 fields, the header has 4"),
    ("N,D,r,loss\n", r"p.csv: no data rows"),
    ("", r"p.csv: empty file"),
    ("N,D,r,loss\n1e6,0,0.5,3.0\n", r"p.csv:2: column D = 0 must be > 0"),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, match):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(CptlabError, match=match):
        load_points(path)


def test_cross_domain_columns_required(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("N,D,r,loss,k1\n1e6,1000,0.5,3.0,5.0\n")
    with pytest.raises(CptlabError, match="lacks column.*k2"):
        load_points(path, need_k=True)


def test_points_from_trainer_metrics(tmp_path):
    """Training tokens come from the train records (eval records' `tokens` counts evaluated tokens)."""
    path = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(1, 7):
        lines.append({"step": step, "loss": 5.0 - 0.1 * step, "tokens": 64 * step, "lr": 1e-3})
        if step % 3 == 0:
            for dom, loss in (("code", 4.0 - 0.1 * step), ("prose", 4.5 - 0.05 * step), ("man", 4.7)):
                lines.append({"step": step, "split": "valid", "domain": dom, "loss": loss, "tokens": 999})
            lines.append({"step": step, "split": "test", "domain": "code", "loss": 9.9, "tokens": 999})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"step\": 7, \"lo")  # torn last line
    rows = points_from_metrics(path, "code", ["prose", "man"])
    assert [r["step"] for r in rows] == [3, 6]
    assert [r["tokens"] for r in rows] == [192, 384]
    assert rows[0]["domain_loss"] == pytest.approx(3.7)
    assert rows[1]["general_loss"] == pytest.approx((4.2 + 4.7) / 2)
    with pytest.raises(CptlabError, match="no eval records for domain 'law'"):
        points_from_metrics(path, "law", ["prose"])
    with pytest.raises(CptlabError, match="no eval records of split 'dev'"):
        points_from_metrics(path, "code", ["prose"], split="dev")


def test_domain_coefficients():
    k1, k2 = domain_coefficients([0, 1e6, 2e6], [5.0, 4.0, 3.8])
    assert k1 == 5.0 and k2 == pytest.approx(0.2)  # (5 - 4) / 5 per million tokens
    with pytest.raises(CptlabError, match="before training"):
        domain_coefficients([1e6, 2e6], [4.0, 3.8])
