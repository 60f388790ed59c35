"""Study kind `domain-sequence`: expansion (stages chained through the previous stage's model), option errors, and a
small end-to-end study whose forgetting summaries are recomputed from the evaluations in the database."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import yaml

from cptlab.errors import CptlabError


def _spec(tmp_path: Path, corpus: Path, base: Path, **options) -> Path:
    opts = {"sequence": ["code", "prose"], "lrs": [3e-3],
            "train": {"data": {"seq_len": 32, "cache_dir": str(tmp_path / "cache"), "corpus": str(corpus)},
                      "max_steps": 2, "batch_size": 2, "schedule": {"kind": "constant"}, "quiet": True},
            "eval": {"max_documents": 2, "batch_size": 4}, **options}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "seq", "kind": "domain-sequence", "corpus": str(corpus),
                                    "base": str(base), "options": opts}, sort_keys=False))
    return path


def test_expand_chains_stages(tmp_path, tiny_corpus, tiny_model_dir):
    from cptlab.study.runner import open_study

    study = open_study(_spec(tmp_path, tiny_corpus, tiny_model_dir, sequences=[["prose", "code"]], lrs=[1e-3, 3e-3]),
                       tmp_path / "out")
    names = [r.name for r in study.runs]
    assert names == ["seq-code+prose-lr0.001", "seq-code+prose-lr0.003", "seq-prose+code-lr0.001",
                     "seq-prose+code-lr0.003"]
    run = study.runs[0]
    assert [s["name"] for s in run.steps] == ["eval-0", "train-1", "eval-1", "train-2", "eval-2", "forgetting"]
    assert run.steps[0]["model"] == str(tiny_model_dir)
    assert run.steps[1]["config"]["model"]["name"] == str(tiny_model_dir)
    assert run.steps[3]["config"]["model"]["name"] == "${steps.train-1.final_dir}"
    assert run.steps[3]["config"]["data"]["sources"] == {"prose": 1.0}
    assert run.steps[5]["evals"] == ["${steps.eval-0.domains}", "${steps.eval-1.domains}", "${steps.eval-2.domains}"]
    assert run.meta["sequence"]["stages"] == ["code", "prose"]


@pytest.mark.parametrize("options, msg", [
    ({"sequence": ["code"]}, "at least 2"),
    ({"sequence": ["code", "code"]}, "repeats"),
    ({"sequence": None}, "give `sequence"),
    ({"eval_domains": ["code"]}, "must include every sequence domain"),
])
def test_bad_options(tmp_path, tiny_corpus, tiny_model_dir, options, msg):
    from cptlab.study.runner import open_study

    with pytest.raises(CptlabError, match=msg):
        open_study(_spec(tmp_path, tiny_corpus, tiny_model_dir, **options), tmp_path / "out")


def test_domain_sequence_end_to_end(tmp_path, tiny_corpus, tiny_model_dir):
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study

    result = run_study(_spec(tmp_path, tiny_corpus, tiny_model_dir), tmp_path / "out")
    assert result["counts"]["done"] == 1, result
    study_dir = Path(result["study_dir"])
    db = sqlite3.connect(study_dir / "results.sqlite")
    run = "seq-code+prose-lr0.003"
    L = [{d: n / t for d, n, t in db.execute("SELECT domain, nll_sum, tokens FROM evaluations WHERE run = ? AND "
                                             "step_name = ?", (run, f"eval-{k}"))} for k in range(3)]
    assert all(set(row) == {"code", "prose"} for row in L)
    res = json.loads(db.execute("SELECT result FROM diagnostics WHERE kind = 'forgetting'").fetchone()[0])
    assert res["forgetting"]["code"] == pytest.approx(L[2]["code"] - L[1]["code"], abs=1e-9)
    assert res["backward_transfer"] == pytest.approx(L[1]["code"] - L[2]["code"], abs=1e-9)
    assert res["forward_transfer"] == pytest.approx(L[0]["prose"] - L[1]["prose"], abs=1e-9)
    assert res["perplexity"][1]["prose"] == pytest.approx(math.exp(L[1]["prose"]), rel=1e-9)
    metrics = dict(db.execute("SELECT key, value FROM metrics WHERE step_name = 'forgetting'").fetchall())
    assert metrics["backward_transfer"] == pytest.approx(res["backward_transfer"])
    html = render_report(study_dir).read_text(encoding="utf-8")
    assert "forgetting and transfer" in html and "(failed)" not in html
    assert (study_dir / "report" / "domain-sequence.png").is_file()
