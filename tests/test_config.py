"""YAML configs: numbers in exponent notation are numbers (PyYAML alone reads `1e-4` and `2.0e8` as strings)."""

import math

import pytest

from cptlab.config import load_yaml_text, parse_override
from cptlab.errors import CptlabError


def test_exponent_notation_reads_as_numbers():
    got = load_yaml_text("a: 2.0e8\nb: 1e-4\nc: 3E+5\nd: 1.5\ne: 7\nf: -.inf\ng: 1.0.0\nh: v1e5\ni: '1e3'")
    assert got["a"] == 2e8 and got["b"] == 1e-4 and got["c"] == 3e5 and got["d"] == 1.5 and got["e"] == 7
    assert math.isinf(got["f"]) and got["f"] < 0
    assert got["g"] == "1.0.0" and got["h"] == "v1e5" and got["i"] == "1e3"  # not numbers, or quoted


def test_override_values_and_train_config(tmp_path):
    from cptlab.train import load_train_config

    assert parse_override("optimizer.lr=3e-4") == (["optimizer", "lr"], 3e-4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: llama-micro, init: scratch}\ntokenizer: tok\ndata: {corpus: c, sources: {a: 1}}\n"
                   "max_tokens: 2.0e8\nout_dir: o\n")
    c = load_train_config(cfg, ["optimizer.lr=1e-4"])
    assert c.max_tokens == 200_000_000 and isinstance(c.max_tokens, int) and c.optimizer.lr == 1e-4
    cfg.write_text(cfg.read_text().replace("2.0e8", "2.5e-1"))
    with pytest.raises(CptlabError, match="max_tokens"):
        load_train_config(cfg)


def test_overrides_reach_list_items_and_name_what_is_wrong():
    from cptlab.config import apply_overrides

    data = {"steps": [{"kind": "train", "config": {"max_steps": 1000}}, {"kind": "eval"}], "seed": 0}
    apply_overrides(data, ["steps.0.config.max_steps=10", "steps.-1.split=valid", "new.section.key=1"])
    assert data["steps"][0]["config"]["max_steps"] == 10
    assert data["steps"][1] == {"kind": "eval", "split": "valid"}
    assert data["new"] == {"section": {"key": 1}}
    with pytest.raises(CptlabError, match=r"steps is a list of 2 items; '5' is not an index"):
        apply_overrides(data, ["steps.5.kind=x"])
    with pytest.raises(CptlabError, match=r"steps is a list of 2 items; 'config' is not an index"):
        apply_overrides(data, ["steps.config.max_steps=1"])
    with pytest.raises(CptlabError, match=r"'seed' is not a section"):
        apply_overrides(data, ["seed.x=1"])
