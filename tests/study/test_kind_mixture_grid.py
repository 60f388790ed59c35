"""Study kind `mixture-grid`: expansion, and a small real grid (llama-micro) whose points the law fits."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from cptlab.errors import CptlabError
from cptlab.study.kinds import expand
from cptlab.study.spec import spec_from_dict


def grid_spec(base, corpus, ratios=None, steps=6, interval=2, **extra):
    opts = {"domain": "code", "general": "prose", "eval_interval": interval,
            "train": {"data": {"seq_len": 32}, "batch_size": 2, "max_steps": steps,
                      "optimizer": {"lr": 3e-3}, "schedule": {"kind": "constant"},
                      "eval": {"max_tokens": 512}}}
    if ratios is not None:
        opts["ratios"] = ratios
    return {"name": "mix", "kind": "mixture-grid", "base": str(base), "corpus": str(corpus), "options": opts,
            **extra}


def test_expand_default_ratios(tmp_path):
    (tmp_path / "base").mkdir()
    spec = spec_from_dict(grid_spec(tmp_path / "base", tmp_path / "corpus"))
    runs = expand(spec, tmp_path)
    assert [r.name for r in runs] == ["mix-r0", "mix-r0.1", "mix-r0.2", "mix-r0.33", "mix-r0.5", "mix-r0.67",
                                      "mix-r0.8", "mix-r0.9", "mix-r1"]
    run = runs[3]
    cfg = run.steps[0]["config"]
    assert cfg["data"]["sources"] == {"code": 0.33, "prose": pytest.approx(0.67)}
    assert cfg["eval"] == {"max_tokens": 512, "split": "valid", "domains": ["code", "prose"], "interval": 2}
    assert cfg["model"]["name"] == str((tmp_path / "base").resolve())
    assert run.meta["mixlaw"] == {"r": 0.33, "domain": "code", "general": ["prose"], "split": "valid",
                                  "train_step": "train", "base": "base", "N": None}


def test_expand_several_sizes_and_bad_options(tmp_path):
    spec = grid_spec("x", tmp_path, ratios=[0.0, 0.5, 1.0])
    del spec["base"]
    spec["bases"] = {"s": str(tmp_path / "s"), "l": str(tmp_path / "l")}
    spec["options"]["n_params"] = {"s": 1000, "l": 4000}
    spec["options"]["general"] = ["prose", "man"]
    runs = expand(spec_from_dict(spec), tmp_path)
    assert [r.name for r in runs][:3] == ["mix-s-r0", "mix-s-r0.5", "mix-s-r1"]
    assert runs[4].meta["mixlaw"]["N"] == 4000 and runs[4].meta["mixlaw"]["base"] == "l"
    assert runs[1].steps[0]["config"]["data"]["sources"] == {"code": 0.5, "prose": 0.25, "man": 0.25}
    for change, match in [({"ratios": [0.0, 1.5, 1.0]}, "outside"), ({"ratios": [0.0, 1.0]}, "at least 3"),
                          ({"general": ["code"]}, "is the domain source"), ({"n_params": {"x": 1}}, "not base")]:
        bad = json.loads(json.dumps(spec))
        bad["options"].update(change)
        with pytest.raises(CptlabError, match=match):
            expand(spec_from_dict(bad), tmp_path)


def test_small_real_grid_fits_and_recommends(tmp_path, tiny_model_dir, tiny_corpus):
    """Train llama-micro at three ratios, read the points from the study, fit both laws, recommend, report."""
    from cptlab.diagnose.mixlaw_fit import fit_law
    from cptlab.diagnose.mixlaw_points import points_from_study
    from cptlab.diagnose.mixlaw_use import recommend
    from cptlab.study.runner import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(grid_spec(tiny_model_dir, tiny_corpus, ratios=[0.0, 0.5, 1.0], steps=8)))
    out = tmp_path / "study"
    summary = run_study(path, out)
    assert summary["counts"]["done"] == 3, summary
    conn = sqlite3.connect(out / "results.sqlite")
    (cfg,) = conn.execute("SELECT config FROM runs WHERE name = 'mix-r0.5'").fetchone()
    metrics_path = json.loads(conn.execute("SELECT result FROM steps WHERE run='mix-r0.5'").fetchone()[0])
    conn.close()
    # The points are the trainer's evaluations: 4 per run (steps 2, 4, 6, 8), D = training tokens so far.
    from cptlab.train.metrics import read_metrics

    records = read_metrics(metrics_path["metrics_path"])
    evals = {(r["step"], r["domain"]): r["loss"] for r in records if "domain" in r}
    tokens = {r["step"]: r["tokens"] for r in records if "domain" not in r}
    pts = {t: points_from_study(out, t) for t in ("general", "domain")}
    assert len(pts["domain"]) == 12
    mid = pts["domain"].r == 0.5
    assert sorted(pts["domain"].D[mid]) == [tokens[s] for s in (2, 4, 6, 8)] == [128, 256, 384, 512]
    assert sorted(pts["domain"].loss[mid]) == sorted(evals[(s, "code")] for s in (2, 4, 6, 8))
    assert sorted(pts["general"].loss[mid]) == sorted(evals[(s, "prose")] for s in (2, 4, 6, 8))
    from cptlab.model import count_parameters, load_model

    assert pts["domain"].N[0] == count_parameters(load_model(tiny_model_dir))
    fits = {t: fit_law(pts[t], t, heldout=False) for t in ("general", "domain")}
    for f in fits.values():
        assert f.r2 is not None and f.n_points == 12
    rec = recommend(fits, budget=0.03, domain_tokens=256)
    assert rec.budget is not None and rec.fixed_data is not None and 0 < rec.fixed_data.ratio <= 1
    # the command line reads the study dir too
    from cptlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["mixlaw", "fit", str(out), "--target", "general", "--json", str(tmp_path / "g.json"), "--quiet",
              "--no-holdout"])
    assert e.value.code == 0
    saved = json.loads((tmp_path / "g.json").read_text())
    assert saved["n_points"] == 12 and saved["r2"] == pytest.approx(fits["general"].r2, abs=1e-6)
    # and the report shows the mixlaw section
    from cptlab.report.render import render_report

    html = render_report(out).read_text()
    assert "Mixture law" in html and "recommended" in html.lower()
    # the section's recommendation is recommend() on the same fits: N, the largest D, +3%, most domain tokens seen
    same = recommend(fits, N=pts["domain"].N[0], D=[pts["domain"].D.max()], budget=0.03,
                     domain_tokens=float((pts["domain"].r * pts["domain"].D).max()))
    assert f'data-value="{same.fixed_data.ratio!r}"' in html
    assert f'data-value="{fits["domain"].r2!r}"' in html
