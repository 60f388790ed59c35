"""Sensitivity (θ + γ·ε): exact revert, requested noise scale, reproducible seeds, spread shrinking with seeds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cptlab.diagnose.checkpoint_series import resolve_series, summarize, u_shape_verdict
from cptlab.diagnose.sensitivity import (
    SensitivitySettings,
    held_out_tokens,
    heldout_loss,
    measure_model,
    noise_plan,
    parameters_fingerprint,
    perturbed,
    run_sensitivity,
)
from cptlab.model import load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def data(tiny_corpus, tiny_tokenizer):
    return held_out_tokens(str(tiny_corpus), tiny_tokenizer, split="valid", max_tokens=512, seq_len=64)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gamma_zero_changes_nothing(model, data):
    before = _snapshot(model)
    base = heldout_loss(model, data)
    plan = noise_plan(model, "init", "all")
    with perturbed(plan, 0.0, seed=3):
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n])
        assert heldout_loss(model, data) == base


@pytest.mark.parametrize("revert", ["copy", "subtract"])
def test_revert_restores_parameters(model, data, revert):
    before = _snapshot(model)
    fp = parameters_fingerprint(model)
    plan = noise_plan(model, "init", "all")
    base = heldout_loss(model, data)["loss"]
    with perturbed(plan, 0.5, seed=1, revert=revert):
        moved = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
        assert moved > 0.99 * sum(p.numel() for p in before.values())
        assert heldout_loss(model, data)["loss"] != base
    if revert == "copy":  # the guaranteed-exact method
        for n, p in model.named_parameters():
            assert torch.equal(p.view(torch.int32), before[n].view(torch.int32)), n  # bit-identical, -0.0 too
        assert parameters_fingerprint(model) == fp
    else:  # subtracting regenerated noise is close, not necessarily exact
        for n, p in model.named_parameters():
            assert torch.allclose(p, before[n], atol=1e-6, rtol=0), n
        for n, p in model.named_parameters():  # put the exact weights back for the other tests
            with torch.no_grad():
                p.copy_(before[n])


def test_revert_on_exception(model):
    before = _snapshot(model)
    with pytest.raises(RuntimeError):
        with perturbed(noise_plan(model, "init", "2d"), 1.0, seed=0):
            raise RuntimeError("evaluation failed")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


@pytest.mark.parametrize("scale", ["init", "rms", "absolute"])
def test_noise_std_matches_requested_scale(model, scale):
    gamma = 0.01
    plan = noise_plan(model, scale, "all")
    before = _snapshot(model)
    with perturbed(plan, gamma, seed=7):
        for t, p in plan:
            if scale == "init":  # independent: the config's initializer range, for every tensor of this model
                expected = model.config.initializer_range
            elif scale == "rms":
                expected = float(before[t.name].double().pow(2).mean().sqrt())
            else:
                expected = 1.0
            assert t.std == pytest.approx(expected, rel=1e-6)
            noise = p.detach().double() - before[t.name].double()
            measured = float(noise.std())
            n = p.numel()
            # std of a sample std of n normals is ~ std / sqrt(2n); allow 5 of those (+ fp32 rounding)
            tol = 5 / math.sqrt(2 * n) + 1e-3
            assert measured == pytest.approx(gamma * expected, rel=tol), (t.name, n)
            assert abs(float(noise.mean())) < 5 * gamma * expected / math.sqrt(n) + 1e-7


def test_2d_only_perturbs_matrices(model):
    plan = noise_plan(model, "init", "2d")
    names = {t.name for t, _ in plan}
    assert names and all(p.dim() == 2 for _, p in plan)
    norms = [n for n, p in model.named_parameters() if p.dim() == 1]
    assert norms and not names & set(norms)
    # tied input/output embeddings count once
    assert len(names) == len({id(p) for _, p in plan})


def test_seeds_reproducible_and_distinct(model, data):
    s = SensitivitySettings(gammas=[0.0, 2.0], seeds=2, max_tokens=512)
    a = measure_model(model, data, s)
    b = measure_model(model, data, s)
    assert a["gammas"][1]["loss"] == b["gammas"][1]["loss"]  # same seeds -> the same numbers, exactly
    l0, l1 = a["gammas"][1]["loss"]
    assert l0 != l1  # different seeds draw different noise
    assert a["gammas"][0]["delta_loss"]["mean"] == 0.0 and a["gammas"][0]["delta_loss"]["std"] == 0.0
    assert a["revert"]["bit_identical"] and b["revert"]["bit_identical"]
    # the reported change is the loss difference, computed independently here
    assert a["gammas"][1]["delta_loss"]["mean"] == pytest.approx((l0 + l1) / 2 - a["base"]["loss"], abs=1e-12)
    c = measure_model(model, data, SensitivitySettings(gammas=[2.0], seeds=2, seed_offset=10, max_tokens=512))
    assert c["gammas"][0]["loss"] != a["gammas"][1]["loss"]


def test_more_seeds_shrink_standard_error(model, data):
    few = measure_model(model, data, SensitivitySettings(gammas=[3.0], seeds=3))
    many = measure_model(model, data, SensitivitySettings(gammas=[3.0], seeds=12))
    f, m = few["gammas"][0]["delta_loss"], many["gammas"][0]["delta_loss"]
    assert m["n"] == 12 and f["n"] == 3
    assert m["sem"] < f["sem"]
    assert m["sem"] == pytest.approx(m["std"] / math.sqrt(12))
    # the first 3 of the 12 seeds are the 3 seeds of the small run
    assert many["gammas"][0]["loss"][:3] == few["gammas"][0]["loss"]


def test_summarize_against_numpy():
    import numpy as np

    vals = [0.3, 0.1, 0.7, 0.2]
    s = summarize(vals)
    assert s["mean"] == pytest.approx(np.mean(vals))
    assert s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert s["sem"] == pytest.approx(np.std(vals, ddof=1) / 2)
    assert summarize([1.0])["sem"] is None


def test_u_shape_verdict():
    pts = [{"label": "a", "tokens": 1, "values": [10.0, 10.2, 9.9]},
           {"label": "b", "tokens": 2, "values": [9.0, 9.1, 8.9]},
           {"label": "c", "tokens": 4, "values": [9.8, 9.9, 9.7]}]
    v = u_shape_verdict(pts)
    assert v["best"] == "b" and v["u_shape"] is True
    assert v["difference"] == pytest.approx(0.8)
    assert "ends best" in v["text"] and "alpha = 0.05" in v["text"]
    assert v["p_value"] < 0.05 and v["alpha"] == 0.05 and v["comparisons"] == 2
    noisy = [{"label": "a", "tokens": 1, "values": [9.0, 11.0]}, {"label": "b", "tokens": 2, "values": [9.5, 10.9]}]
    assert u_shape_verdict(noisy)["u_shape"] is False  # within noise
    mono = u_shape_verdict([{"label": "a", "values": [3.0]}, {"label": "b", "values": [2.0]}])
    assert mono["verdict"] == "monotone" and mono["u_shape"] is False


def _fake_checkpoints(tmp_path, tiny_model_dir, tokens):
    import shutil

    run = tmp_path / "run"
    for i, t in enumerate(tokens):
        d = run / "checkpoints" / f"step-{(i + 1) * 10:08d}"
        shutil.copytree(tiny_model_dir, d / "model")
        (d / "state").mkdir()
        (d / "state" / "trainer.json").write_text(json.dumps({"step": (i + 1) * 10, "tokens_seen": t}))
        (d / "COMPLETE").write_text("")
    bad = run / "checkpoints" / "step-00000099"  # a save cut by a kill: no COMPLETE
    shutil.copytree(tiny_model_dir, bad / "model")
    return run


def test_series_from_run_dir_and_cli(tmp_path, tiny_model_dir, tiny_corpus):
    from cptlab.cli import main

    run = _fake_checkpoints(tmp_path, tiny_model_dir, [5000, 1000])
    series = resolve_series([run])
    assert [c.tokens for c in series] == [1000, 5000]  # ordered by tokens seen, from the state files
    assert all(c.tokens_source.startswith("state:") for c in series)
    out = tmp_path / "sens.json"
    with pytest.raises(SystemExit) as e:
        main(["sensitivity", "--model", str(run), "--corpus", str(tiny_corpus), "--gammas", "0,1",
              "--seeds", "2", "--max-tokens", "256", "--seq-len", "64", "--json", str(out), "--quiet"])
    assert e.value.code == 0
    result = json.loads(out.read_text())
    assert [m["tokens"] for m in result["models"]] == [1000, 5000]
    m = result["models"][0]
    assert m["tokens_per_parameter"] == pytest.approx(1000 / m["parameters"])
    assert m["revert"] == {"method": "copy", "bit_identical": True, "fingerprint": m["revert"]["fingerprint"]}
    assert result["settings"]["evaluator"].startswith("internal")
    # the same weights in both checkpoints: the same sensitivity
    assert result["models"][0]["gammas"][1]["loss"] == result["models"][1]["gammas"][1]["loss"]


def test_cli_errors(tmp_path, tiny_model_dir, tiny_corpus):
    from cptlab.cli import main

    for args, code in ((["--gammas", "a,b"], 2), (["--noise-scale", "huge"], 2),
                       (["--tokens", "1,2"], 1)):
        with pytest.raises(SystemExit) as e:
            main(["sensitivity", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--gammas", "1",
                  *args, "--quiet"])
        assert e.value.code == code, args
    with pytest.raises(SystemExit) as e:
        main(["sensitivity", "--model", str(tmp_path / "nope"), "--corpus", str(tiny_corpus), "--gammas", "1"])
    assert e.value.code == 1


def test_run_sensitivity_given_tokens(tiny_model_dir, tiny_corpus):
    series = resolve_series([tiny_model_dir, tiny_model_dir], tokens=[200, 100], labels=["late", "early"])
    r = run_sensitivity(series, str(tiny_corpus), SensitivitySettings(gammas=[1.0], seeds=1, max_tokens=128,
                                                                       seq_len=64, domains=["code"]))
    assert [m["label"] for m in r["models"]] == ["early", "late"]
    assert r["models"][0]["tokens_source"] == "given"
    assert list(r["models"][0]["base"]["domains"]) == ["code"]


@pytest.mark.parametrize("preset", ["llama-micro", "gpt2-micro"])
def test_init_scale_is_the_models_initialization_std(preset, tiny_tokenizer):
    """Independent check of `init`: in a freshly initialised model every perturbed matrix's own std is the std the
    plan assigns it (GPT-2's residual projections c_proj included, initialised at range / sqrt(2 n_layer))."""
    from cptlab.model import build_preset

    fresh = build_preset(preset, tiny_tokenizer, seed=0)
    plan = noise_plan(fresh, "init", "2d")
    scaled = [t.name for t, _ in plan if t.std < fresh.config.initializer_range]
    assert bool(scaled) == (preset == "gpt2-micro") and all(n.endswith("c_proj.weight") for n in scaled)
    for t, p in plan:
        n = p.numel()
        assert float(p.detach().double().std()) == pytest.approx(t.std, rel=5 / math.sqrt(2 * n) + 1e-3), t.name
