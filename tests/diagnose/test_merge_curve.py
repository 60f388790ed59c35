"""Merge curve: Pareto front and budget α on hand-made numbers; the `merge-curve` study kind end to end with its
report section ("forgetting vs domain gain") checked against the database."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from cptlab.diagnose.merge_curve import curve_summary, pareto_front
from cptlab.errors import CptlabError


def test_pareto_front_by_hand():
    # (general, target): B dominates D (both lower); A, B, C trade off; E ties C on general but is worse on target.
    general = [1.0, 1.2, 1.5, 1.3, 1.5]
    target = [3.0, 2.5, 2.0, 2.6, 2.2]
    assert pareto_front(general, target) == [0, 1, 2]
    assert pareto_front([1.0, 1.0], [2.0, 2.0]) == [0, 1]  # equal points do not dominate each other


def test_curve_summary_budget_and_front():
    alphas = [1.0, 0.0, 0.5, 0.25, 0.75]  # any order
    general = [2.30, 2.00, 2.04, 2.01, 2.12]
    target = [1.50, 3.00, 1.90, 2.30, 1.70]
    s = curve_summary(alphas, target, general, budget=0.05)
    assert s["pareto_alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s["budget_alpha"] == 0.5  # general 2.04 - 2.00 <= 0.05; 0.75 exceeds (0.12)
    assert s["best_target_alpha"] == 1.0
    p = {q["alpha"]: q for q in s["points"]}
    assert p[0.5]["general_ppl_change_pct"] == pytest.approx((math.exp(0.04) - 1) * 100)
    assert p[0.5]["target_ppl_change_pct"] == pytest.approx((math.exp(-1.1) - 1) * 100)
    assert p[0.75]["within_budget"] is False and p[0.25]["within_budget"] is True
    # A non-monotone curve: α=0.75 is dominated by α=0.5 (worse on both), so it leaves the front.
    s = curve_summary([0, 0.5, 0.75, 1], [3.0, 2.0, 2.1, 1.5], [2.0, 2.1, 2.2, 2.5], budget=0.0)
    assert s["pareto_alphas"] == [0, 0.5, 1] and s["budget_alpha"] == 0
    with pytest.raises(ValueError, match="α = 0"):
        curve_summary([0.5], [1.0], [1.0], budget=0.1)


# ---------------------------------------------------------------------------------------------------------------
# The study kind

@pytest.fixture(scope="module")
def adapted_models(tmp_path_factory, tiny_model_dir):
    """Two 'adapted' models: the tiny base with different perturbations (same architecture and tokenizer)."""
    from cptlab.model import load_model_and_tokenizer, save_model

    root = tmp_path_factory.mktemp("adapted")
    out = {}
    for i, name in enumerate(("adapted", "other")):
        model, tok = load_model_and_tokenizer(tiny_model_dir)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * (0.05 + 0.05 * i))
        out[name] = save_model(model, tok, root / name)
    return out


def _labelled(path: Path, corpus_docs) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for label in ("code", "prose"):
            for doc in corpus_docs[label][:10]:
                f.write(json.dumps({"text": doc[:200], "label": label}) + "\n")
    return path


def _write_spec(tmp_path: Path, tiny_corpus, **options) -> Path:
    opts = {"target": ["code"], "general": ["prose"], "alphas": [0.5, 1.0], "budget": 0.05,
            "eval": {"max_documents": 3, "token_losses": False, "batch_size": 4}, **options}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "remedies", "kind": "merge-curve", "corpus": str(tiny_corpus),
                                    "options": opts}))
    return path


def test_expand_with_training_and_variants(tmp_path, tiny_corpus, tiny_model_dir):
    from cptlab.study.runner import open_study

    spec = _write_spec(tmp_path, tiny_corpus, base=str(tiny_model_dir),
                       train={"data": {"seq_len": 32}, "max_steps": 2, "batch_size": 2},
                       variants={"kl": {"regularizer": {"kind": "kl", "weight": 0.1}},
                                 "lssd": {"regularizer": {"kind": "lssd", "weight": 0.5}, "max_steps": 3}})
    study = open_study(spec, tmp_path / "out")
    names = [r.name for r in study.runs]
    assert names == ["base", "curve", "variant-kl", "variant-lssd"]
    curve = study.runs[1]
    assert [s["name"] for s in curve.steps] == ["train", "merge-a0p5", "eval-a0p5", "eval-a1"]
    assert curve.steps[1]["models"] == [str(tiny_model_dir), "${steps.train.final_dir}"]
    assert curve.steps[1]["weights"] == [0.5, 0.5]
    assert curve.steps[3]["model"] == "${steps.train.final_dir}"
    train = curve.steps[0]["config"]
    assert train["model"] == {"name": str(tiny_model_dir), "init": "pretrained"}
    assert train["data"]["sources"] == {"code": 1.0} and train["data"]["corpus"] == str(tiny_corpus)
    lssd = study.runs[3].steps[0]["config"]
    assert lssd["regularizer"] == {"kind": "lssd", "weight": 0.5} and lssd["max_steps"] == 3
    assert lssd["data"]["seq_len"] == 32  # the recipe's, kept
    assert all(r.baseline == "base" for r in study.runs[1:])
    assert "remedies" in study.sections
    # The dry run's estimate counts each training run as the trainer will (steps x batch x seq_len).
    from cptlab.study.runner import estimate

    tokens = {r["name"]: r["tokens"] for r in estimate(study, study.runs)}
    assert tokens == {"base": None, "curve": 2 * 2 * 32, "variant-kl": 2 * 2 * 32, "variant-lssd": 3 * 2 * 32}


def test_expand_slerp_curve_uses_alpha_as_t(tmp_path, tiny_corpus, tiny_model_dir):
    from cptlab.study.runner import open_study

    spec = _write_spec(tmp_path, tiny_corpus, base=str(tiny_model_dir), adapted=str(tiny_model_dir),
                       method="slerp", alphas=[0.0, 0.3, 1.0])
    curve = open_study(spec, tmp_path / "out").runs[1]
    merge = next(s for s in curve.steps if s["kind"] == "merge")
    assert merge["method"] == "slerp" and merge["t"] == 0.3 and "weights" not in merge
    assert [s["name"] for s in curve.steps] == ["merge-a0p3", "eval-a0p3", "eval-a1"]  # α = 0: the baseline run


@pytest.mark.parametrize("options, msg", [
    ({"adapted": "x", "train": {"max_steps": 1}}, "exactly one of"),
    ({}, "exactly one of"),
    ({"adapted": "x", "variants": {"kl": {}}}, "give `train` too"),
    ({"adapted": "x", "alphas": [0.5, 1.5]}, "each α must be in"),
    ({"adapted": "x", "general": ["code"]}, "both target and general"),
])
def test_bad_options(tmp_path, tiny_corpus, tiny_model_dir, options, msg):
    from cptlab.study.runner import open_study

    with pytest.raises(CptlabError, match=msg):
        open_study(_write_spec(tmp_path, tiny_corpus, base=str(tiny_model_dir), **options), tmp_path / "out")


def test_merge_curve_study_end_to_end(tmp_path, tiny_corpus, tiny_model_dir, adapted_models, corpus_docs):
    from cptlab.report.render import render_report
    from cptlab.report.section_remedies import curves, remedy_points
    from cptlab.study.runner import run_study

    spec = _write_spec(tmp_path, tiny_corpus, base=str(tiny_model_dir), adapted=str(adapted_models["adapted"]),
                       models={"other": str(adapted_models["other"])},
                       probe={"data": str(_labelled(tmp_path / "labelled.jsonl", corpus_docs)), "batch_size": 8})
    result = run_study(spec, tmp_path / "out")
    assert result["counts"].get("done") == 3, result
    study_dir = Path(result["study_dir"])
    db = sqlite3.connect(study_dir / "results.sqlite")
    db.row_factory = sqlite3.Row

    # The α = 0.5 model is the exact average of base and adapted.
    from safetensors.torch import load_file

    art = Path(db.execute("SELECT path FROM artifacts WHERE run = 'curve' AND step_name = 'merge-a0p5' "
                          "AND kind = 'model'").fetchone()["path"])
    merged = load_file(str((art if art.is_absolute() else study_dir / art) / "model.safetensors"))
    base_t = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    adapted_t = load_file(str(Path(adapted_models["adapted"]) / "model.safetensors"))
    assert all(torch.equal(merged[k], (base_t[k] + adapted_t[k]) / 2) for k in base_t)

    # Losses per group of domains, computed from the database independently of the section.
    def loss(run, model, domains):
        rows = db.execute(f"SELECT SUM(nll_sum) AS n, SUM(tokens) AS t FROM evaluations WHERE run = ? AND "
                          f"model = ? AND domain IN ({','.join('?' * len(domains))})",
                          (run, model, *domains)).fetchone()
        return rows["n"] / rows["t"]

    labels = {(r["run"], r["model"]) for r in db.execute("SELECT run, model FROM evaluations")}
    assert labels == {("base", "base"), ("curve", "alpha=0.5"), ("curve", "alpha=1"), ("model-other", "other")}
    g = {a: loss(run, m, ["prose"]) for a, (run, m) in {0.0: ("base", "base"), 0.5: ("curve", "alpha=0.5"),
                                                        1.0: ("curve", "alpha=1")}.items()}
    t = {a: loss(run, m, ["code"]) for a, (run, m) in {0.0: ("base", "base"), 0.5: ("curve", "alpha=0.5"),
                                                       1.0: ("curve", "alpha=1")}.items()}
    within = [a for a in g if g[a] - g[0.0] <= 0.05 + 1e-12]
    expect_budget = min(within, key=lambda a: (t[a], a))

    from cptlab.report.sections import ReportContext

    ctx = ReportContext(db=db, study_dir=study_dir, out_dir=tmp_path / "r")
    points = remedy_points(ctx)
    other = next(p for p in points if p["label"] == "other")
    assert other["general_ppl_change_pct"] == pytest.approx(
        (math.exp(loss("model-other", "other", ["prose"]) - g[0.0]) - 1) * 100)
    assert other["target_ppl_reduction_pct"] == pytest.approx(
        (1 - math.exp(loss("model-other", "other", ["code"]) - t[0.0])) * 100)
    summary = curves(points)["curve"]
    assert [q["alpha"] for q in summary["points"]] == [0.0, 0.5, 1.0]
    assert summary["budget_alpha"] == expect_budget
    assert summary["pareto_alphas"] == [[0.0, 0.5, 1.0][i] for i in pareto_front([g[a] for a in (0, .5, 1)],
                                                                                 [t[a] for a in (0, .5, 1)])]

    # Probe accuracies recorded for base, adapted (α = 1) and the extra model.
    probes = {json.loads(r["result"])["label"] for r in db.execute("SELECT result FROM diagnostics "
                                                                   "WHERE kind = 'probe'")}
    assert probes == {"base", "alpha=1", "other"}

    index = render_report(study_dir)
    html = index.read_text(encoding="utf-8")
    assert "Forgetting vs domain gain" in html and "section failed" not in html
    assert (index.parent / "remedies.png").is_file()
    assert "Nearest-mean probe" in html and "α on the Pareto front" in html


def test_merge_curve_trains_plain_kl_and_lssd_and_plots_them_with_the_merges(tmp_path, tiny_corpus,
                                                                            tiny_model_dir):
    """Issue 8 item 5 end to end on llama-micro: one study trains plain CPT, a KL and an LSSD variant of the same
    recipe, merges base→plain CPT, and the report puts all of them on the forgetting-vs-gain plot."""
    from safetensors.torch import load_file

    from cptlab.report.render import render_report
    from cptlab.report.section_remedies import remedy_points
    from cptlab.report.sections import ReportContext
    from cptlab.study.runner import run_study

    spec = _write_spec(tmp_path, tiny_corpus, base=str(tiny_model_dir),
                       train={"data": {"seq_len": 32, "cache_dir": str(tmp_path / "cache"),
                                       "corpus": str(tiny_corpus)},
                              "max_steps": 4, "batch_size": 2, "optimizer": {"lr": 3e-3},
                              "eval": {"at_end": False}, "tensorboard": False, "quiet": True},
                       variants={"kl": {"regularizer": {"kind": "kl", "weight": 1.0}},
                                 "lssd": {"regularizer": {"kind": "lssd", "weight": 1.0}}})
    result = run_study(spec, tmp_path / "out")
    assert result["counts"].get("done") == 4, result
    study_dir = Path(result["study_dir"])
    db = sqlite3.connect(study_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    reg = dict(db.execute("SELECT run, COUNT(*) FROM metrics WHERE key = 'reg_loss' GROUP BY run").fetchall())
    assert reg.get("variant-kl", 0) >= 4 and reg.get("variant-lssd", 0) >= 4 and "curve" not in reg

    # Same recipe and seed: only the regularizer differs, and it changed the weights.
    def final(run):
        out = json.loads(db.execute("SELECT result FROM steps WHERE run = ? AND name = 'train'",
                                    (run,)).fetchone()[0])["final_dir"]
        return load_file(str(Path(out) / "model.safetensors"))

    plain, kl, lssd = final("curve"), final("variant-kl"), final("variant-lssd")
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(plain[key], base[key])
    assert not torch.equal(kl[key], plain[key]) and not torch.equal(lssd[key], plain[key])
    assert not torch.equal(kl[key], lssd[key])
    # The α = 0.5 merge is the average of the base and the plain CPT model.
    art = db.execute("SELECT path FROM artifacts WHERE run = 'curve' AND step_name = 'merge-a0p5'").fetchone()[0]
    merged = load_file(str((Path(art) if Path(art).is_absolute() else study_dir / art) / "model.safetensors"))
    assert torch.equal(merged[key], (base[key] + plain[key]) / 2)

    # Every model is one point; its coordinates are the database's numbers.
    def loss(run, model, domain):
        n, t = db.execute("SELECT nll_sum, tokens FROM evaluations WHERE run = ? AND model = ? AND domain = ?",
                          (run, model, domain)).fetchone()
        return n / t

    points = {p["label"]: p for p in remedy_points(ReportContext(db=db, study_dir=study_dir,
                                                                 out_dir=tmp_path / "r"))}
    assert set(points) == {"base", "alpha=0.5", "alpha=1", "kl", "lssd"}
    g0, t0 = loss("base", "base", "prose"), loss("base", "base", "code")
    for label, run in (("alpha=0.5", "curve"), ("alpha=1", "curve"), ("kl", "variant-kl"),
                       ("lssd", "variant-lssd")):
        assert points[label]["general_ppl_change_pct"] == pytest.approx(
            (math.exp(loss(run, label, "prose") - g0) - 1) * 100), label
        assert points[label]["target_ppl_reduction_pct"] == pytest.approx(
            (1 - math.exp(loss(run, label, "code") - t0)) * 100), label
    assert points["kl"]["remedy"] == "kl" and points["lssd"]["remedy"] == "lssd"
    assert points["kl"]["regularizer"] == "KL, λ=1" and points["alpha=1"]["regularizer"] is None

    index = render_report(study_dir)
    html = index.read_text(encoding="utf-8")
    section = html[html.index("Forgetting vs domain gain"):]
    assert "section failed" not in html and (index.parent / "remedies.png").is_file()
    for shown in ("plain CPT (adapted, α=1)", "merge α=0.5", ">kl (KL, λ=1)<", ">lssd (LSSD, λ=1)<",
                  "α on the Pareto front"):
        assert shown in section, shown
