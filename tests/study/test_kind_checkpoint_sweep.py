"""Study kind `checkpoint-sweep`: expansion from a real pretraining run's checkpoints, an end-to-end run that is
interrupted and resumed, and the report sections computed from its database."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import yaml

from cptlab.errors import CptlabError


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    """A tiny pretraining run with log-spaced checkpoints (constant LR while they are taken)."""
    import cptlab.train as train

    out = tmp_path_factory.mktemp("pretrain") / "run"
    train.run({"model": {"name": "llama-micro", "init": "scratch"}, "tokenizer": str(tiny_tokenizer_dir),
               "data": {"corpus": str(tiny_corpus), "sources": {"code": 1.0, "prose": 1.0}, "seq_len": 64},
               "optimizer": {"lr": 3e-3}, "schedule": {"kind": "constant", "warmup_steps": 2},
               "batch_size": 4, "max_steps": 12, "checkpoint": {"log_spaced": 3, "at_end": True},
               "out_dir": str(out), "quiet": True, "tensorboard": False})
    return out


def _spec(tmp_path, pretrain_run, tiny_corpus, **options):
    opts = {"pretrain_run": str(pretrain_run), "max_checkpoints": 2, "target": ["prose"], "general": ["code"],
            "lrs": [1e-3], "seeds": [0, 1],
            "train": {"data": {"cache_dir": str(pretrain_run / "tokens"), "seq_len": 64}, "batch_size": 4,
                      "max_steps": 2, "schedule": {"kind": "constant"}, "quiet": True, "tensorboard": False},
            "eval": {"max_documents": 4, "token_losses": False},
            "sensitivity": {"gammas": [0.0, 2.0], "seeds": 2, "max_tokens": 128, "seq_len": 64}}
    opts.update(options)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "ot", "kind": "checkpoint-sweep", "corpus": str(tiny_corpus),
                                    "options": opts}))
    return path


def test_expand(tmp_path, pretrain_run, tiny_corpus):
    from cptlab.study.runner import open_study

    study = open_study(_spec(tmp_path, pretrain_run, tiny_corpus), tmp_path / "out")
    roles = [r.role for r in study.runs]
    assert roles.count("baseline") == 2 and roles.count("run") == 4 and roles.count("diagnostic") == 1
    cks = [r.axes["checkpoint"] for r in study.runs if r.role == "baseline"]
    assert cks[0]["tokens"] < cks[1]["tokens"]  # ordered by tokens seen, read from the checkpoints' state
    assert cks[0]["parameters"] > 0
    first = [r for r in study.runs if r.role == "run"][0]
    assert first.baseline in {r.name for r in study.runs if r.role == "baseline"}
    assert first.baseline.startswith("before-")
    train = first.steps[0]["config"]
    assert train["model"]["name"] == cks[0]["path"] and train["optimizer"]["lr"] == 1e-3
    assert train["data"]["sources"] == {"prose": 1.0}
    assert study.sections[:2] == ["runs", "checkpoint-sweep"]


def test_expand_errors(tmp_path, pretrain_run, tiny_corpus):
    from cptlab.study.runner import open_study

    with pytest.raises(CptlabError, match="options.pretrain_run"):
        open_study(_spec(tmp_path, tmp_path / "missing", tiny_corpus), tmp_path / "out")
    with pytest.raises(CptlabError, match="target"):
        open_study(_spec(tmp_path, pretrain_run, tiny_corpus, target=[]), tmp_path / "out")


def test_sweep_runs_resumes_and_reports(tmp_path, pretrain_run, tiny_corpus, monkeypatch):
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study
    from cptlab.study.steps import get_step_kind

    spec = _spec(tmp_path, pretrain_run, tiny_corpus)
    out = tmp_path / "study"
    train_kind = get_step_kind("train")
    real = train_kind.fn
    calls: list[str] = []

    def interrupted(step, ctx):
        calls.append(ctx.run.name)
        if len(calls) == 3:  # the third adaptation run is killed mid-way (Ctrl-C)
            raise KeyboardInterrupt
        return real(step, ctx)

    monkeypatch.setattr(train_kind, "fn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, out)
    db = sqlite3.connect(out / "results.sqlite")
    done_first = {n for (n,) in db.execute("SELECT name FROM runs WHERE status = 'done'")}
    assert len([n for n in done_first if n.startswith("sweep-")]) == 2
    db.close()

    calls.clear()
    result = run_study(spec, out)  # the second attempt runs only what is not done
    assert result["counts"].get("done") == 7
    assert len(calls) == 2 and not set(calls) & done_first  # finished runs were not trained again
    assert all(result["runs"][n] == "skipped" for n in done_first)

    db = sqlite3.connect(out / "results.sqlite")
    db.row_factory = sqlite3.Row
    after = db.execute("SELECT e.run, e.domain, e.token_perplexity FROM evaluations e JOIN runs r "
                       "ON r.name = e.run WHERE r.role = 'run'").fetchall()
    assert len(after) == 8 and all(math.isfinite(r["token_perplexity"]) for r in after)
    sens = json.loads(db.execute("SELECT result FROM diagnostics WHERE kind = 'sensitivity'").fetchone()[0])
    assert [m["tokens"] for m in sens["models"]] == sorted(m["tokens"] for m in sens["models"])
    assert all(m["revert"]["bit_identical"] for m in sens["models"])
    assert sens["models"][0]["gammas"][0]["delta_loss"]["mean"] == 0.0  # γ = 0 changes nothing

    from cptlab.report.section_checkpoint_sweep import forgetting, sweep_table, verdicts
    from cptlab.report.sections import ReportContext

    ctx = ReportContext(db=db, study_dir=out, out_dir=tmp_path / "r")
    t = sweep_table(ctx)
    assert [c["tokens"] for c in t["checkpoints"]] == sorted(c["tokens"] for c in t["checkpoints"])
    # the table's numbers are the database's numbers: target = prose only, so its "group PPL" is prose's PPL
    name0 = t["checkpoints"][0]["name"]
    prose = sorted(r["token_perplexity"] for r in after if r["domain"] == "prose" and name0 in r["run"])
    assert sorted(t["after"][(name0, 1e-3)]["target"]) == pytest.approx(prose)
    v = verdicts(t)[("target", 1e-3)]
    assert v["best"] in {c["name"] for c in t["checkpoints"]}
    # forgetting = general (code) log-PPL after - before, per seed, from the database's evaluations
    before = db.execute("SELECT e.token_perplexity FROM evaluations e JOIN runs r ON r.name = e.run "
                        "WHERE r.role = 'baseline' AND e.domain = 'code' AND r.name LIKE ?",
                        (f"%{name0}",)).fetchone()[0]
    code = sorted(r["token_perplexity"] for r in after if r["domain"] == "code" and name0 in r["run"])
    f = forgetting(t)[1e-3]["checkpoints"][0]
    assert f["label"] == name0 and f["n"] == 2
    assert sorted(f["values"]) == pytest.approx(sorted(math.log(a) - math.log(before) for a in code))
    db.close()

    index = render_report(out)
    html = index.read_text()
    assert "checkpoint sweep" in html and "Sensitivity to parameter noise" in html
    assert "ends best" in html or "ends worse" in html
    assert "forgetting, lr 0.001" in html and (index.parent / "checkpoint-sweep-forgetting.png").is_file()
    assert (index.parent / "checkpoint-sweep.png").is_file() and (index.parent / "sensitivity-vs-tokens.png").is_file()
    assert 'class="error"' not in html and not list(index.parent.glob("section-*-error.log"))


def test_sweep_fine_tunes_each_adapted_checkpoint_and_plots_accuracy(tmp_path, pretrain_run, tiny_corpus):
    """tasks + sft: every checkpoint is measured as it is, after CPT, and after SFT of either; the report's
    sweep-tasks section plots accuracy vs pretraining tokens from those rows."""
    from cptlab.corpus.domain_task import write_domain_sft, write_domain_task
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study
    from cptlab.study.store import read_task_results

    task = write_domain_task(tiny_corpus, ["code", "prose"], tmp_path / "which.jsonl", per_domain=4, chars=100)
    sft = write_domain_sft(tiny_corpus, ["code", "prose"], tmp_path / "sft.jsonl", per_domain=6, chars=100)
    tasks = {"files": [str(task)], "sft": {"data": {"train": str(sft), "seq_len": 128}, "batch_size": 4,
                                          "max_steps": 2, "tensorboard": False}}
    spec = _spec(tmp_path, pretrain_run, tiny_corpus, seeds=[0], sensitivity=None, tasks=tasks)
    result = run_study(spec, tmp_path / "study")
    assert set(result["runs"].values()) == {"done"}
    rows = read_task_results(tmp_path / "study", metric="acc")
    got = {(r["axes"]["checkpoint"]["name"], r["model"]) for r in rows}
    names = {r["axes"]["checkpoint"]["name"] for r in rows}
    assert len(names) == 2
    assert got == {(n, m) for n in names for m in ("base", "base+sft", "cpt", "cpt+sft")}
    # the cpt+sft model is the SFT of the adapted checkpoint
    run = next(r["run"] for r in rows if r["model"] == "cpt+sft")
    sft_cfg = json.loads((tmp_path / "study" / "runs" / run / "sft" / "train_config.json").read_text())
    assert sft_cfg["model"]["name"].endswith(f"{run}/train/final")
    html = render_report(tmp_path / "study").read_text()
    assert "Task accuracy vs pretraining tokens" in html
    for r in rows:
        assert f'data-value="{r["value"]!r}"' in html
