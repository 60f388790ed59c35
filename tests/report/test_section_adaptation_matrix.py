"""Report section `adaptation-matrix` on a hand-made database: numbers, correlation, worse-cells table and the
plain-text summary follow the data; missing similarity/overlap rows are handled."""

from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
from scipy import stats

from cptlab.study.spec import RunSpec
from cptlab.study.store import RunRecord, Store

BEFORE = {"a": 10.0, "b": 20.0, "c": 40.0, "d": 80.0}
GENERAL = ["a", "b"]
# after[target][domain]: in-mix domains get worse on themselves, far ones gain
AFTER = {
    "control": {"a": 10.5, "b": 20.4, "c": 39.0, "d": 79.0},
    "a": {"a": 11.0, "b": 21.0, "c": 41.0, "d": 82.0},
    "b": {"a": 10.2, "b": 20.2, "c": 39.5, "d": 81.0},
    "c": {"a": 10.8, "b": 21.5, "c": 30.0, "d": 78.0},
    "d": {"a": 10.9, "b": 21.0, "c": 38.0, "d": 40.0},
}
SIM = {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.3}


def _eval(domain: str, ppl: float) -> dict:
    return {"step_name": "eval", "model": "m", "domain": domain, "split": "test", "tokens": 1000,
            "nll_sum": 1000 * math.log(ppl), "token_perplexity": ppl}


def build(study_dir, similarity=True, overlap=True, attribution=True):
    common = {"general": GENERAL, "domains": list("abcd"), "eval_domains": list("abcd"), "split": "test"}
    runs, records = [], {}
    runs.append(RunSpec("before-m", "adaptation-matrix", "baseline", {"base": "m"}, [],
                        meta={"adaptation": {"base": "m", "target": None, "control": False, "lr": None, **common}}))
    records["before-m"] = RunRecord(evaluations=[_eval(d, p) for d, p in BEFORE.items()])
    for target, after in AFTER.items():
        name = "control-lr0.001" if target == "control" else f"adapt-{target}-lr0.001"
        runs.append(RunSpec(name, "adaptation-matrix", "control" if target == "control" else "run",
                            {"target": target}, [], baseline="before-m",
                            meta={"adaptation": {"base": "m", "target": None if target == "control" else target,
                                                 "control": target == "control", "lr": 1e-3, "seed": 0, **common}}))
        rec = RunRecord(evaluations=[_eval(d, p) for d, p in after.items()])
        if attribution and target == "a":
            rec.diagnostics.append(("attribution", "attribution", {
                "targets": ["a"], "domains": {"a": {
                    "tokens": 1000, "ppl_before": 10.0, "ppl_after": 11.0, "delta_log_ppl": math.log(1.1),
                    "classes": {"newline": {"contribution": 0.06}, "subword": {"contribution": math.log(1.1) - 0.06}},
                    "format": {"contribution": 0.06, "share": 0.06 / math.log(1.1)},
                    "without_format": {"rel_change": 0.03}}},
                "top_tokens": [{"id": 5, "text": "\n", "class": "newline", "count": 40, "contribution": 0.06}],
                "without_top": {"rel_change": 0.03}}))
        records[name] = rec
    if similarity:
        runs.append(RunSpec("similarity", "adaptation-matrix", "diagnostic", {}, []))
        records["similarity"] = RunRecord(diagnostics=[("similarity", "similarity", {
            "domains": {d: {"jsd_similarity": s, "sample": {}} for d, s in SIM.items()}})])
    if overlap:
        runs.append(RunSpec("overlap", "adaptation-matrix", "diagnostic", {}, []))
        records["overlap"] = RunRecord(diagnostics=[("overlap", "overlap", {"domains": {
            d: {"train_docs": 10, "test_docs": 10, "exact_duplicates": int(d == "d"), "near_duplicates": 2 * (d == "d"),
                "near_duplicate_fraction": 0.2 if d == "d" else 0.0} for d in "abcd"}})])
    for i, r in enumerate(runs):
        r.order = i
    with Store(study_dir) as store:
        store.set_meta("study", {"name": "t", "kind": "adaptation-matrix", "sections": ["adaptation-matrix"]})
        store.sync_runs(runs, 60)
        for r in runs:
            claim = store.claim(r.name, r.hash, 60)
            assert store.finish(claim, records[r.name])
    return study_dir


def _ctx(study_dir, tmp_path):
    from cptlab.report.sections import ReportContext

    db = sqlite3.connect(study_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    return ReportContext(db=db, study_dir=study_dir, out_dir=tmp_path / "report")


def test_section_numbers_and_summary(tmp_path):
    from cptlab.report.section_adaptation_matrix import adaptation_matrix_section

    study = build(tmp_path / "s")
    ctx = _ctx(study, tmp_path)
    section = adaptation_matrix_section(ctx)
    data = json.loads((tmp_path / "report" / "adaptation_matrix.json").read_text())
    g = data["groups"][0]
    assert g["targets"] == ["control", "a", "b", "c", "d"]
    rel = {t: AFTER[t][t] / BEFORE[t] - 1 for t in "abcd"}
    for t in "abcd":
        assert g["cells"][t][t]["rel_change"] == pytest.approx(rel[t], rel=1e-12)
        assert g["cells"][t][t]["vs_control"] == pytest.approx(AFTER[t][t] / AFTER["control"][t] - 1, rel=1e-12)
    # the table shows the same numbers (exact value in data-value)
    shown = [float(v) for v in re.findall(r'data-value="([-0-9.e]+)"', section.html)]
    assert any(v == pytest.approx(100 * rel["d"], rel=1e-12) for v in shown)
    # correlation over the 4 train domains vs scipy; partial controls for PPL before
    corr = next(c for c in data["correlations"] if c["key"] == "rel_change")
    x, y = [SIM[d] for d in "abcd"], [100 * rel[d] for d in "abcd"]
    assert corr["n"] == 4 and corr["spearman"]["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert corr["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert corr["partial"]["pearson"]["r"] is not None
    # worse cells: every (target, domain) with PPL up, largest first, attribution joined on (a, a)
    worse = data["worse"]
    expect = sorted(((t, d, AFTER[t][d] / BEFORE[d] - 1) for t in AFTER for d in "abcd"
                     if AFTER[t][d] > BEFORE[d]), key=lambda x: -x[2])
    assert [(w["target"], w["domain"]) for w in worse] == [(t, d) for t, d, _ in expect]
    aa = next(w for w in worse if w["target"] == "a" and w["domain"] == "a")
    assert aa["format_share"] == pytest.approx(0.06 / math.log(1.1)) and aa["rel_change_without_format"] == 0.03
    text = section.html
    assert "it rose for a (+10.0%), b (+1.0%)" in text  # computed from the data
    assert "d 20%" in text  # the near-duplicate note
    assert f"Spearman ρ = {stats.spearmanr(x, y).statistic:+.2f}" in text
    for png in ("adaptation-matrix", "adaptation-matrix-vs-control", "similarity-vs-dppl", "attribution"):
        assert (tmp_path / "report" / f"{png}.png").is_file()


def test_missing_similarity_overlap_attribution(tmp_path):
    from cptlab.report.section_adaptation_matrix import adaptation_matrix_section

    study = build(tmp_path / "s", similarity=False, overlap=False, attribution=False)
    section = adaptation_matrix_section(_ctx(study, tmp_path))
    assert "Similarity to the pretraining mix was not measured" in section.html
    assert "overlap (exact and near duplicates) was not measured" in section.html
    assert "Token attribution" not in section.html
    assert not (tmp_path / "report" / "similarity-vs-dppl.png").exists()


def test_no_matrix_no_section(tmp_path):
    from cptlab.report.section_adaptation_matrix import adaptation_matrix_section

    with Store(tmp_path / "s"):
        pass
    assert adaptation_matrix_section(_ctx(tmp_path / "s", tmp_path)) is None
