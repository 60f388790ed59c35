"""Study kind `cpt-then-sft` end to end (tiny): base → SFT vs base → CPT → SFT on a domain-classification task
built from the corpus; every arm's accuracy in the database, the paired difference recomputed independently, and
the report section rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import yaml

from cptlab.corpus.domain_task import write_domain_sft, write_domain_task
from cptlab.diagnose.task_gain import arm_stats, difference
from tests.report.test_report import CHROMIUM, _chromium


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_corpus, tiny_model_dir):
    from cptlab.study.runner import run_study

    root = tmp_path_factory.mktemp("cpt_then_sft")
    task = write_domain_task(tiny_corpus, ["code", "prose"], root / "which_domain.jsonl", per_domain=6, chars=120)
    sft = write_domain_sft(tiny_corpus, ["code", "prose"], root / "sft.jsonl", per_domain=12, chars=120)
    spec = {"name": "cts", "kind": "cpt-then-sft", "corpus": str(tiny_corpus), "options": {
        "base": str(tiny_model_dir), "tasks": [str(task)], "seeds": [0, 1], "domains": ["prose"],
        "cpt": {"data": {"corpus": str(tiny_corpus), "sources": {"prose": 1.0}, "seq_len": 64}, "batch_size": 4,
                "max_steps": 3, "optimizer": {"lr": 3e-3}, "tensorboard": False},
        "sft": {"data": {"train": str(sft), "seq_len": 128}, "batch_size": 4, "max_steps": 3,
                "optimizer": {"lr": 3e-3}, "tensorboard": False},
        "eval": {"max_documents": 4, "token_losses": False}}}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_study(path, root / "out")
    return root / "out", result


def test_every_arm_is_measured(study):
    out, result = study
    assert result["runs"] == {"base": "done", "base-sft-s0": "done", "cpt-sft-s0": "done", "base-sft-s1": "done",
                              "cpt-sft-s1": "done"}
    conn = sqlite3.connect(out / "results.sqlite")
    rows = conn.execute("SELECT run, model, metric, value, n FROM task_results WHERE task = 'which_domain' "
                        "ORDER BY run, model, metric").fetchall()
    arms = {(run, model) for run, model, *_ in rows}
    assert arms == {("base", "base"), ("base-sft-s0", "base+sft"), ("base-sft-s1", "base+sft"),
                    ("cpt-sft-s0", "cpt"), ("cpt-sft-s0", "cpt+sft"), ("cpt-sft-s1", "cpt"), ("cpt-sft-s1", "cpt+sft")}
    assert all(0.0 <= v <= 1.0 and n == 12 for *_, v, n in rows)
    # the SFT of the cpt arm started from the CPT model, not from the base
    cfg = json.loads(conn.execute("SELECT result FROM steps WHERE run = 'cpt-sft-s1' AND name = 'cpt'").fetchone()[0])
    sft_cfg = json.loads((out / "runs" / "cpt-sft-s1" / "sft" / "train_config.json").read_text())
    assert sft_cfg["model"]["name"] == cfg["final_dir"] and sft_cfg["seed"] == 1
    # perplexity evaluations too
    labels = {r[0] for r in conn.execute("SELECT model FROM evaluations WHERE domain = 'prose'")}
    assert labels == {"base", "cpt", "base+sft", "cpt+sft"}


def test_difference_is_recomputed_independently(study):
    out, _ = study
    from cptlab.study.store import read_task_results

    rows = read_task_results(out, task="which_domain")
    acc = {(r["model"], r["axes"].get("seed")): (r["value"], r["stderr"]) for r in rows if r["metric"] == "acc"}
    d = [acc[("cpt+sft", s)][0] - acc[("base+sft", s)][0] for s in (0, 1)]
    mean = sum(d) / 2
    se_seeds2 = ((d[0] - mean) ** 2 + (d[1] - mean) ** 2) / 1 / 2
    se_items2 = sum(acc[("cpt+sft", s)][1] ** 2 + acc[("base+sft", s)][1] ** 2 for s in (0, 1)) / 2 / 2
    got = difference(arm_stats(rows, "acc")["which_domain"], "cpt+sft", "base+sft")
    assert got.seeds == 2 and math.isclose(got.mean, mean, abs_tol=1e-12)
    assert math.isclose(got.se, math.sqrt(se_seeds2 + se_items2), rel_tol=1e-12)
    assert math.isclose(got.high - got.mean, 12.706204736174707 * got.se, rel_tol=1e-9)  # t(0.975, 1 df)


def test_task_gain_verdicts():
    def rows(values):
        return [{"task": "t", "metric": "acc", "model": m, "value": v, "stderr": 0.01, "n": 100, "axes": {"seed": s}}
                for m, per_seed in values.items() for s, v in enumerate(per_seed)]

    clear = arm_stats(rows({"cpt+sft": [0.80, 0.82, 0.81], "base+sft": [0.60, 0.61, 0.62]}))["t"]
    assert difference(clear, "cpt+sft", "base+sft").verdict == "helped"
    assert difference(clear, "base+sft", "cpt+sft").verdict == "hurt"
    noisy = arm_stats(rows({"cpt+sft": [0.80, 0.50], "base+sft": [0.60, 0.70]}))["t"]
    assert difference(noisy, "cpt+sft", "base+sft").verdict == "no clear difference"
    one = arm_stats([{**r, "stderr": None} for r in rows({"cpt+sft": [0.8], "base+sft": [0.6]})])["t"]
    assert difference(one, "cpt+sft", "base+sft").verdict == "undetermined"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser installs it)")
def test_report_section_renders_in_chromium(study, tmp_path):
    from cptlab.report.render import render_report
    from cptlab.study.store import read_task_results

    out, _ = study
    index = render_report(out)
    dom, console = _chromium(index.resolve().as_uri(), tmp_path)
    assert console == []
    assert "Does CPT help after fine-tuning?" in dom and "base → CPT → SFT" in dom
    assert "Summary (computed from the numbers below)" in dom and "which_domain: acc after SFT is" in dom
    value = next(r["value"] for r in read_task_results(out, task="which_domain", metric="acc") if r["model"] == "base")
    assert f'data-value="{value!r}"' in dom  # the table holds the database's number
    assert (out / "report" / "cpt-then-sft.png").is_file()
