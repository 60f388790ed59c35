"""Config validation names the field; CLI turns bad configs into a message and exit code 1."""

from __future__ import annotations

import pytest

from cptlab.errors import CptlabError
from cptlab.train import load_train_config

BASE = {"model": {"name": "llama-micro"}, "data": {"cache_dir": "c", "sources": {"a": 1.0}}, "max_steps": 5,
        "out_dir": "o"}


def test_defaults_and_overrides():
    cfg = load_train_config(dict(BASE), ["optimizer.lr=1e-4", "data.sources.b=0.25", "precision=bf16"])
    assert cfg.optimizer.lr == 1e-4 and cfg.data.sources == {"a": 1.0, "b": 0.25} and cfg.precision == "bf16"
    assert cfg.regularizer is None and cfg.lora is None and cfg.total_steps == 5
    assert BASE["data"]["sources"] == {"a": 1.0}  # the caller's dict is not modified


def test_token_budget_sets_steps():
    cfg = load_train_config({**BASE, "max_steps": None, "max_tokens": 10_000, "batch_size": 4,
                             "data": {"cache_dir": "c", "sources": {"a": 1}, "seq_len": 100}})
    assert cfg.total_steps == 25  # ceil(10000 / 400)


@pytest.mark.parametrize("over, field", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
    ({"schedule": {"kind": "exp"}}, "schedule.kind"),
    ({"precision": "fp8"}, "precision"),
    ({"data": {"cache_dir": "c", "sources": {"a": -1.0}}}, "data.sources"),
    ({"data": {"sources": {"a": 1.0}}}, "data"),
    ({"max_steps": None}, "max_steps or max_tokens"),
    ({"batch_size": 6, "grad_accum": 4}, "not divisible"),
    ({"regularizer": {"kind": "kl", "reference": "other"}}, "regularizer.reference"),
    ({"lora": {"r": 0}}, "lora.r"),
])
def test_bad_fields_are_named(over, field):
    with pytest.raises(CptlabError) as e:
        load_train_config({**BASE, **over})
    assert field in str(e.value)


def test_regularizer_config_contract():
    cfg = load_train_config({**BASE, "regularizer": {"kind": "lssd"}})
    r = cfg.regularizer
    assert (r.kind, r.weight, r.reference, r.reference_precision, r.temperature) == ("lssd", 0.1, "base", "fp32", 1.0)


def test_cli_bad_config_exits_1_naming_field(tmp_path, capsys):
    from cptlab.cli import main

    path = tmp_path / "train.yaml"
    path.write_text("model: {name: llama-micro}\ndata: {cache_dir: c, sources: {a: 1}}\nmax_steps: 2\n"
                    "out_dir: o\nschedule: {warmup: 3}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", str(path)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "schedule.warmup" in err and "unknown key" in err and "Traceback" not in err


def test_cli_missing_cache_is_a_clear_error(tmp_path, capsys, tiny_tokenizer_dir):
    from cptlab.cli import main

    path = tmp_path / "train.yaml"
    path.write_text(f"model: {{name: llama-micro}}\ntokenizer: {tiny_tokenizer_dir}\n"
                    f"data: {{cache_dir: {tmp_path / 'nope'}, sources: {{a: 1}}}}\nmax_steps: 2\n"
                    f"out_dir: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", str(path), "--quiet"])
    assert e.value.code == 1
    assert "data.cache_dir" in capsys.readouterr().err
