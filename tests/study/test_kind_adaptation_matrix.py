"""Study kind `adaptation-matrix`: expansion (control run, bases × lrs, attribution wiring), option errors, and a
small end-to-end study (llama-micro) whose matrix, attribution and report are checked against the database."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import yaml

from cptlab.errors import CptlabError
from tests.conftest import write_corpus


@pytest.fixture(scope="module")
def four_domains(tmp_path_factory, corpus_docs):
    """Four domains of real text: two parts of the code docs, two of the prose docs."""
    c, p = corpus_docs["code"], corpus_docs["prose"]
    return write_corpus(tmp_path_factory.mktemp("corpus4"), {
        "code_a": c[:30], "code_b": c[30:], "prose_a": p[:20], "prose_b": p[20:]})


def _spec(tmp_path: Path, corpus: Path, bases: dict, **options) -> Path:
    opts = {"domains": ["code_b", "prose_a", "prose_b"], "general": ["code_a", "prose_a"], "lrs": [1e-3],
            "train": {"data": {"seq_len": 32, "cache_dir": str(tmp_path / "cache"), "corpus": str(corpus)},
                      "max_steps": 2, "batch_size": 2, "schedule": {"kind": "constant"}, "quiet": True},
            "eval": {"max_documents": 2, "batch_size": 4}, "similarity": False, "overlap": False, **options}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "odyssey", "kind": "adaptation-matrix", "corpus": str(corpus),
                                    "bases": bases, "options": opts}, sort_keys=False))
    return path


def test_expand_runs_control_and_bases(tmp_path, four_domains, tiny_model_dir):
    from cptlab.study.runner import open_study

    study = open_study(_spec(tmp_path, four_domains, {"small": str(tiny_model_dir), "big": str(tiny_model_dir)},
                             lrs=[3e-4, 1e-3], seeds=[0, 1]), tmp_path / "out")
    names = [r.name for r in study.runs]
    assert names[0] == "before-small"
    assert "control-small-lr0.0003-s0" in names and "adapt-big-prose_b-lr0.001-s1" in names
    # 2 bases x (1 baseline + 2 lrs x 2 seeds x (control + 3 domains))
    assert len(names) == 2 * (1 + 2 * 2 * 4) and len(set(names)) == len(names)
    run = next(r for r in study.runs if r.name == "adapt-big-prose_b-lr0.001-s1")
    assert run.role == "run" and run.baseline == "before-big"
    train = run.steps[0]["config"]
    assert train["data"]["sources"] == {"prose_b": 1.0} and train["optimizer"]["lr"] == 1e-3 and train["seed"] == 1
    assert train["model"]["name"] == str(tiny_model_dir)
    assert run.steps[1]["domains"] == ["code_b", "prose_a", "prose_b", "code_a"]
    att = run.steps[2]
    assert att["kind"] == "attribution" and att["targets"] == ["prose_b"]
    assert att["before"] == "${study.dir}/runs/before-big/eval/token_losses.parquet"
    control = next(r for r in study.runs if r.name == "control-small-lr0.0003-s0")
    assert control.role == "control"
    assert control.steps[0]["config"]["data"]["sources"] == {"code_a": 1.0, "prose_a": 1.0}
    assert control.meta["adaptation"]["control"] is True and control.meta["adaptation"]["target"] is None
    assert study.sections[:2] == ["runs", "adaptation-matrix"]


@pytest.mark.parametrize("options, msg", [
    ({"domains": []}, "domains"),
    ({"lrs": [0.0]}, "learning rates"),
    ({"domains": ["control"]}, "control"),
    ({"eval_domains": ["code_a"]}, "must include every train domain"),
    ({"eval": {"token_losses": False}}, "attribution: false"),
    ({"train": {"data": {"sources": {"x": 1.0}}}}, "leave it out"),
])
def test_bad_options(tmp_path, four_domains, tiny_model_dir, options, msg):
    from cptlab.study.runner import open_study

    with pytest.raises(CptlabError, match=msg):
        open_study(_spec(tmp_path, four_domains, {"m": str(tiny_model_dir)}, **options), tmp_path / "out")


def test_adaptation_matrix_end_to_end(tmp_path, four_domains, tiny_model_dir):
    from cptlab.diagnose.adaptation_matrix import matrix_from_db
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study

    spec = _spec(tmp_path, four_domains, {"micro": str(tiny_model_dir)}, attribution={"top": 5},
                 similarity={"measures": ["jsd", "vocab"], "sample_docs": 10}, overlap={"num_perm": 32})
    result = run_study(spec, tmp_path / "out")
    assert result["counts"]["done"] == 7 and not result["counts"]["failed"], result
    study_dir = Path(result["study_dir"])
    db = sqlite3.connect(study_dir / "results.sqlite")
    db.row_factory = sqlite3.Row

    def ppl(run, domain):
        return db.execute("SELECT token_perplexity FROM evaluations WHERE run = ? AND domain = ? AND "
                          "step_name = 'eval'", (run, domain)).fetchone()[0]

    data = matrix_from_db(db, n_boot=50)
    (g,) = data["groups"]
    assert g["targets"] == ["control", "code_b", "prose_a", "prose_b"]
    for target, run in (("prose_b", "adapt-prose_b-lr0.001"), ("control", "control-lr0.001")):
        for d in ("code_a", "prose_b"):
            cell = g["cells"][target][d]
            assert cell["ppl_before"] == ppl("before-micro", d) and cell["ppl_after"] == ppl(run, d)
            assert cell["rel_change"] == pytest.approx(ppl(run, d) / ppl("before-micro", d) - 1, rel=1e-12)
            if target != "control":
                assert cell["vs_control"] == pytest.approx(ppl(run, d) / ppl("control-lr0.001", d) - 1, rel=1e-12)

    # Attribution is in the database: per domain, the same PPLs as the evaluations, class contributions that sum
    # to Δ log PPL, and the change without newline/whitespace/punctuation tokens.
    res = json.loads(db.execute("SELECT result FROM diagnostics WHERE run = 'adapt-prose_b-lr0.001' AND "
                                "kind = 'attribution'").fetchone()[0])
    own = res["domains"]["prose_b"]
    assert own["ppl_before"] == pytest.approx(ppl("before-micro", "prose_b"), rel=1e-5)
    assert own["ppl_after"] == pytest.approx(ppl("adapt-prose_b-lr0.001", "prose_b"), rel=1e-5)
    assert math.fsum(c["contribution"] for c in own["classes"].values()) == pytest.approx(own["delta_log_ppl"],
                                                                                          abs=1e-9)
    assert own["format"]["contribution"] == pytest.approx(
        sum(own["classes"][c]["contribution"] for c in ("newline", "whitespace", "punctuation")), abs=1e-12)
    assert res["targets"] == ["prose_b"] and 0 < len(res["top_tokens"]) <= 5
    assert own["without_format"]["tokens"] < own["tokens"]

    index = render_report(study_dir)
    html = index.read_text(encoding="utf-8")
    assert "Adaptation matrix" in html and "section failed" not in html and "(failed)" not in html
    assert (index.parent / "adaptation-matrix.png").is_file() and (index.parent / "attribution.png").is_file()
    assert "Which domains got worse" in html and "was not measured" not in html
    assert (index.parent / "similarity-vs-dppl.png").is_file()
    saved = json.loads((index.parent / "adaptation_matrix.json").read_text())
    # The correlation in the report is the one of the database's numbers (3 train domains).
    from scipy import stats

    sim = json.loads(db.execute("SELECT result FROM diagnostics WHERE kind = 'similarity'").fetchone()[0])
    own = [(d, g["cells"][d][d]["rel_change"]) for d in ("code_b", "prose_a", "prose_b")]
    x = [sim["domains"][d]["jsd_similarity"] for d, _ in own]
    corr = next(c for c in saved["correlations"] if c["measure"] == "jsd_similarity" and c["key"] == "rel_change")
    assert corr["n"] == 3
    assert corr["spearman"]["rho"] == pytest.approx(stats.spearmanr(x, [100 * v for _, v in own]).statistic)
    ov = json.loads(db.execute("SELECT result FROM diagnostics WHERE kind = 'overlap'").fetchone()[0])
    assert set(ov["domains"]) == {"code_a", "code_b", "prose_a", "prose_b"}
    assert saved["groups"][0]["cells"]["prose_b"]["prose_b"]["ppl_after"] == ppl("adapt-prose_b-lr0.001", "prose_b")

    # A second run of the same study skips every finished run.
    again = run_study(spec, tmp_path / "out")
    assert set(again["runs"].values()) == {"skipped"}


def test_demo_template_fills_and_expands(tmp_path, four_domains, tiny_model_dir, tiny_tokenizer_dir):
    """The study YAML shipped in the package, filled by the demo, is a valid adaptation-matrix study."""
    from cptlab.demo.odyssey import study_spec
    from cptlab.demo.pipeline import DemoSettings
    from cptlab.study.runner import open_study

    prepared = {"corpus": four_domains, "tokenizer": tiny_tokenizer_dir, "cache": tmp_path / "cache",
                "base": tiny_model_dir, "general": ["code_a", "prose_a"], "held_out": ["code_b", "prose_b"]}
    settings = DemoSettings(adapt_lrs=(3e-4, 1e-3), adapt_domains=("prose_b", "code_a", "not_here"), adapt_steps=7)
    spec = study_spec(prepared, settings)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = open_study(path, tmp_path / "out")
    names = [r.name for r in study.runs]
    assert names == ["before-base", "control-lr0.0003", "adapt-prose_b-lr0.0003", "adapt-code_a-lr0.0003",
                     "control-lr0.001", "adapt-prose_b-lr0.001", "adapt-code_a-lr0.001", "similarity", "overlap"]
    train = study.runs[2].steps[0]["config"]
    assert train["max_steps"] == 7 and train["batch_size"] == settings.batch_size
    assert train["data"]["cache_dir"] == str((tmp_path / "cache").resolve())
    assert train["schedule"] == {"kind": "constant", "warmup_steps": settings.adapt_warmup}
    assert study.runs[0].steps[0]["max_documents"] == settings.eval_max_documents
    sim = study.runs[-2].steps[0]
    assert sim["reference"].endswith(":code_a,prose_a") and "embedding" in sim["measures"]


@pytest.mark.slow
def test_adaptation_matrix_seeds_lrs_and_embedding(tmp_path, four_domains, tiny_model_dir):
    """Two learning rates x two seeds, embedding similarity too: PPL after = geometric mean over seeds."""
    from cptlab.diagnose.adaptation_matrix import matrix_from_db
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study

    spec = _spec(tmp_path, four_domains, {"micro": str(tiny_model_dir)}, lrs=[1e-3, 3e-3], seeds=[0, 1],
                 similarity={"measures": ["jsd", "vocab", "embedding"], "sample_docs": 8, "embedding_docs": 4},
                 overlap={})
    result = run_study(spec, tmp_path / "out")
    assert result["counts"]["done"] == 1 + 2 * 2 * 4 + 2 and not result["counts"]["failed"], result
    db = sqlite3.connect(Path(result["study_dir"]) / "results.sqlite")
    data = matrix_from_db(db, n_boot=20)
    assert [g["label"] for g in data["groups"]] == ["lr 0.001", "lr 0.003"]
    vals = [db.execute("SELECT token_perplexity FROM evaluations WHERE run = ? AND domain = 'prose_b' AND "
                       "step_name = 'eval'", (f"adapt-prose_b-lr0.003-s{s}",)).fetchone()[0] for s in (0, 1)]
    cell = data["groups"][1]["cells"]["prose_b"]["prose_b"]
    assert cell["seeds"] == 2 and cell["ppl_after"] == pytest.approx(math.sqrt(vals[0] * vals[1]), rel=1e-12)
    assert "embedding_cosine" in {c["measure"] for c in data["correlations"]}
    html = render_report(result["study_dir"]).read_text(encoding="utf-8")
    assert "(failed)" not in html and "lr 0.003" in html
