"""A small real study: llama-micro, 2 domains, train (cptlab.train) + eval (cptlab.evaluate) per domain."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import yaml

from cptlab.study.runner import run_study


def real_study(path, base, corpus, steps=3):
    spec = {
        "name": "real",
        "base": str(base),
        "corpus": str(corpus),
        "seed": 0,
        "grid": {"domain": ["code", "prose"]},
        "baseline": {"axes": [], "steps": [
            {"kind": "eval", "model": "${base_path}", "corpus": "${corpus_path}", "label": "before",
             "max_documents": 4, "context": 64, "batch_size": 4}]},
        "steps": [
            {"kind": "train", "config": {
                "model": {"name": "${base_path}"},
                "data": {"sources": {"${domain}": 1.0}, "corpus": "${corpus_path}", "seq_len": 32},
                "batch_size": 2, "max_steps": steps, "optimizer": {"lr": 1e-3},
                "tensorboard": False, "eval": {"at_end": False}}},
            {"kind": "eval", "model": "${steps.train.final_dir}", "corpus": "${corpus_path}", "label": "after",
             "max_documents": 4, "context": 64, "batch_size": 4},
        ],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_train_and_eval_steps_record_metrics_and_perplexities(tmp_path, tiny_model_dir, tiny_corpus):
    from cptlab.evaluate import perplexity
    from cptlab.train.metrics import read_metrics

    spec = real_study(tmp_path / "study.yaml", tiny_model_dir, tiny_corpus)
    out = tmp_path / "study"
    summary = run_study(spec, out)
    assert summary["counts"]["done"] == 3, summary
    conn = sqlite3.connect(out / "results.sqlite")
    conn.row_factory = sqlite3.Row
    # Metrics: the trainer's metrics.jsonl, loss for every step.
    (result,) = conn.execute("SELECT result FROM steps WHERE run='grid-code' AND name='train'").fetchone()
    train_out = json.loads(result)
    assert train_out["steps"] == 3 and train_out["final_dir"].endswith("final")
    records = [r for r in read_metrics(train_out["metrics_path"]) if "domain" not in r]
    db_loss = dict(conn.execute("SELECT step, value FROM metrics WHERE run='grid-code' AND step_name='train' "
                                "AND key='loss'").fetchall())
    assert db_loss == {r["step"]: pytest.approx(r["loss"]) for r in records} and len(db_loss) == 3
    # Evaluations: the DB holds what an independent evaluation of the trained model gives.
    rows = conn.execute("SELECT * FROM evaluations WHERE run='grid-code' AND step_name='eval' ORDER BY domain") \
        .fetchall()
    assert [r["domain"] for r in rows] == ["code", "prose"] and rows[0]["model"] == "after"
    again = perplexity(train_out["final_dir"], corpus=tiny_corpus, max_documents=4, context=64, batch_size=4) \
        .to_dict()["domains"]
    for r in rows:
        assert r["token_perplexity"] == pytest.approx(again[r["domain"]]["token_perplexity"], rel=1e-5)
        assert r["nll_sum"] == pytest.approx(math.log(r["token_perplexity"]) * r["tokens"], rel=1e-6)
    tl = rows[0]["token_losses"]
    assert tl == "runs/grid-code/eval/token_losses.parquet" and (out / tl).is_file()
    # Training on code moved perplexity on code relative to the base (the baseline run's evaluation).
    before = dict(conn.execute("SELECT domain, token_perplexity FROM evaluations WHERE run='baseline'"))
    assert before["code"] != rows[0]["token_perplexity"]
    # The report renders its default sections from these numbers.
    from cptlab.report.render import render_report

    html = render_report(out).read_text()
    assert "Loss curves" in html and "Δ perplexity heat-map" in html


@pytest.mark.slow
def test_train_under_torchrun_with_two_processes_matches_one_process(tmp_path, tiny_model_dir, tiny_corpus):
    """Global batch 2 over 2 gloo processes: the same losses and perplexities as the single-process study."""
    import subprocess

    from tests.study.conftest import REPO, cli_cmd, cli_env

    spec = real_study(tmp_path / "study.yaml", tiny_model_dir, tiny_corpus)
    run_study(spec, tmp_path / "one", only=["grid-code"])
    proc = subprocess.run(cli_cmd("study", "run", str(spec), "--out", str(tmp_path / "two"), "--only", "grid-code",
                                  "--launcher", "torchrun", "--nproc", "2", "--quiet"),
                          env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = ("SELECT step, value FROM metrics WHERE run='grid-code' AND step_name='train' AND key='loss' ORDER BY step")
    one = sqlite3.connect(tmp_path / "one" / "results.sqlite").execute(q).fetchall()
    two = sqlite3.connect(tmp_path / "two" / "results.sqlite").execute(q).fetchall()
    assert len(one) == 3 and [s for s, _ in one] == [s for s, _ in two]
    assert [v for _, v in two] == pytest.approx([v for _, v in one], rel=1e-5)
    q = "SELECT domain, token_perplexity FROM evaluations WHERE run='grid-code' AND step_name='eval' ORDER BY domain"
    ppl_one = sqlite3.connect(tmp_path / "one" / "results.sqlite").execute(q).fetchall()
    ppl_two = sqlite3.connect(tmp_path / "two" / "results.sqlite").execute(q).fetchall()
    assert [d for d, _ in ppl_one] == ["code", "prose"]
    assert [p for _, p in ppl_two] == pytest.approx([p for _, p in ppl_one], rel=1e-4)
