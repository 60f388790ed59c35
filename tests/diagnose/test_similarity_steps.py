"""The `similarity` and `overlap` step kinds inside a real study: diagnostics rows in the database."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from cptlab.diagnose.overlap import OverlapSettings, overlap
from cptlab.diagnose.similarity import similarity
from cptlab.diagnose.similarity_sample import make_spec
from cptlab.study.runner import run_study


def test_steps_record_diagnostics(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    spec = {
        "name": "hygiene", "corpus": str(tiny_corpus), "seed": 0, "grid": {"x": [1]},
        "steps": [
            {"name": "similarity", "kind": "similarity", "reference": f"{tiny_corpus}:code",
             "corpus": "${corpus_path}", "tokenizer": str(tiny_tokenizer_dir), "measures": "jsd,vocab",
             "sample_docs": 50},
            {"name": "overlap", "kind": "overlap", "corpus": "${corpus_path}", "test_split": "valid"},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = run_study(path, tmp_path / "out")
    assert summary["counts"]["done"] == 1, summary
    conn = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    rows = {k: json.loads(r) for k, r in conn.execute("SELECT kind, result FROM diagnostics").fetchall()}
    assert set(rows) == {"similarity", "overlap"}
    sim = rows["similarity"]
    expected = similarity(f"{tiny_corpus}:code", tiny_corpus, tokenizer=tiny_tokenizer_dir, measures="jsd,vocab",
                          sample=make_spec(docs=50))
    for d in ("code", "prose"):
        for key in ("jsd_similarity", "vocab_jaccard", "weighted_overlap"):
            assert sim["domains"][d][key] == pytest.approx(expected["domains"][d][key])
    assert sim["domains"]["code"]["jsd_similarity"] == pytest.approx(1.0)
    assert sim["domains"]["prose"]["jsd_similarity"] < 0.9
    ov = rows["overlap"]
    want = overlap(tiny_corpus, settings=OverlapSettings(test_split="valid"))
    for d in ("code", "prose"):
        for key in ("train_docs", "test_docs", "exact_duplicates", "near_duplicates", "near_duplicate_fraction"):
            assert ov["domains"][d][key] == want["domains"][d][key]
    (res,) = conn.execute("SELECT result FROM steps WHERE name='overlap'").fetchone()
    assert set(json.loads(res)["near_duplicate_fraction"]) == {"code", "prose"}
    artifacts = dict(conn.execute("SELECT kind, path FROM artifacts").fetchall())
    assert set(artifacts) == {"similarity", "overlap"}
    for kind, rel in artifacts.items():  # the full result, as written to the step dir
        assert json.loads((tmp_path / "out" / rel).read_text())["domains"] == rows[kind]["domains"]


def test_bad_step_options_are_named_before_running(tmp_path, tiny_corpus):
    from cptlab.errors import CptlabError

    spec = {"name": "bad", "corpus": str(tiny_corpus), "grid": {"x": [1]},
            "steps": [{"name": "similarity", "kind": "similarity", "reference": str(tiny_corpus),
                       "corpus": "${corpus_path}", "measures": "jsd,cosine"}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(CptlabError, match="measures.*cosine"):
        run_study(path, tmp_path / "out")
    spec["steps"] = [{"name": "overlap", "kind": "overlap", "corpus": "${corpus_path}", "threshold": 1.5}]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(CptlabError, match="threshold"):
        run_study(path, tmp_path / "out2")
