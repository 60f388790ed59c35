"""Study spec: expansion, placeholders, names, hashes, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cptlab.errors import CptlabError
from cptlab.study.kinds import expand
from cptlab.study.spec import grid_points, load_spec, select, spec_from_dict, substitute


def runs_of(data, spec_dir="."):
    return expand(spec_from_dict(data), Path(spec_dir))


BASE = {"name": "s", "grid": {"domain": ["code", "prose"], "lr": [1e-3, 3e-3]},
        "steps": [{"kind": "toy", "scale": "${lr}", "label": "${domain}-x"}]}


def test_grid_expansion_with_typed_placeholders_and_names():
    runs = runs_of(BASE)
    assert [r.name for r in runs] == ["grid-code-0.001", "grid-code-0.003", "grid-prose-0.001", "grid-prose-0.003"]
    assert runs[1].steps == [{"kind": "toy", "scale": 0.003, "label": "code-x", "name": "toy"}]
    assert isinstance(runs[1].steps[0]["scale"], float)  # a whole-string placeholder keeps the value's type
    assert [r.order for r in runs] == [0, 1, 2, 3]


def test_hash_is_stable_and_changes_with_the_config_only():
    a = runs_of(BASE)
    reordered = {"steps": BASE["steps"], "grid": BASE["grid"], "name": "s", "description": "ignored in the hash"}
    assert [r.hash for r in a] == [r.hash for r in runs_of(reordered)]
    changed = {**BASE, "steps": [{"kind": "toy", "scale": "${lr}", "label": "${domain}-y"}]}
    assert all(x.hash != y.hash for x, y in zip(a, runs_of(changed)))


def test_include_exclude_and_run_name_template():
    data = {**BASE, "exclude": [{"domain": "prose"}], "include": [{"domain": "law", "lr": 0.01}],
            "run_name": "{domain}_lr{lr}"}
    assert [r.name for r in runs_of(data)] == ["code_lr0.001", "code_lr0.003", "law_lr0.01"]
    with pytest.raises(CptlabError, match=r"exclude\[0\]: \['size'\] not grid axes"):
        grid_points(spec_from_dict({**BASE, "exclude": [{"size": 1}]}))
    with pytest.raises(CptlabError, match=r"include\[0\]: must give every grid axis"):
        grid_points(spec_from_dict({**BASE, "include": [{"domain": "x"}]}))


def test_axis_values_that_are_mappings_are_named_and_duplicates_are_refused():
    data = {"name": "s", "grid": {"mix": [{"name": "mostly-code", "code": 0.9}, {"name": "half", "code": 0.5}]},
            "steps": [{"kind": "toy", "scale": "${mix.code}"}]}
    runs = runs_of(data)
    assert [r.name for r in runs] == ["grid-mostly-code", "grid-half"] and runs[0].steps[0]["scale"] == 0.9
    dup = {"name": "s", "grid": {"x": ["a b", "a_b"]}, "steps": [{"kind": "toy"}]}
    with pytest.raises(CptlabError, match="two runs are both named 'grid-a_b'"):
        runs_of(dup)


def test_errors_name_the_field():
    with pytest.raises(CptlabError, match=r"steps\[0\]\.scale: unknown variable \$\{nope\}"):
        runs_of({**BASE, "steps": [{"kind": "toy", "scale": "${nope}"}]})
    with pytest.raises(CptlabError, match=r"steps\[0\]: unknown key\(s\) \['scael'\] for step kind 'toy'"):
        runs_of({**BASE, "steps": [{"kind": "toy", "scael": 1}]})
    with pytest.raises(CptlabError, match=r"steps\[0\]: invalid config\n  scale: Input should be a valid number"):
        runs_of({**BASE, "steps": [{"kind": "toy", "scale": "${domain}"}]})
    with pytest.raises(CptlabError, match=r"steps\[1\]: unknown step kind 'nope'"):
        runs_of({**BASE, "steps": [{"kind": "toy"}, {"kind": "nope"}]})
    with pytest.raises(CptlabError, match=r"refers to a step that does not run before"):
        runs_of({**BASE, "steps": [{"kind": "toy", "offset": "${steps.later.value}"}, {"kind": "toy", "name": "later"}]})
    with pytest.raises(CptlabError, match=r"  gird: unknown key"):
        spec_from_dict({**BASE, "gird": {}})
    with pytest.raises(CptlabError, match="unknown study kind 'nope'"):
        runs_of({**BASE, "kind": "nope"})


def test_runtime_placeholders_are_left_for_the_runner_and_checked_then():
    runs = runs_of({**BASE, "steps": [{"kind": "toy", "name": "a"},
                                      {"kind": "toy", "offset": "${steps.a.value}", "label": "${run.dir}/x"}]})
    assert runs[0].steps[1]["offset"] == "${steps.a.value}" and runs[0].steps[1]["name"] == "toy"
    filled = substitute(runs[0].steps[1], {"steps": {"a": {"value": 2.5}}, "run": {"dir": "/r"}}, "x",
                        deferred=frozenset())
    assert filled["offset"] == 2.5 and filled["label"] == "/r/x"


def test_yaml_anchors_relative_paths_overrides_and_baselines(tmp_path):
    (tmp_path / "corpus").mkdir()
    text = """
name: anchors
corpus: corpus
base: some/hub-model
defs:
  toy: &toy {kind: toy, points: 2}
grid: {domain: [code, prose], seed: [1, 2]}
baseline:
  axes: [seed]
  steps: [{<<: *toy, label: "${corpus_path}"}]
steps:
  - {<<: *toy, label: "./out/${domain}"}
"""
    (tmp_path / "s.yaml").write_text(text)
    spec, spec_dir = load_spec(tmp_path / "s.yaml", ["grid.seed=[1]"])
    runs = expand(spec, spec_dir)
    assert [r.name for r in runs] == ["baseline-1", "grid-code-1", "grid-prose-1"]
    assert runs[0].steps[0] == {"kind": "toy", "points": 2, "label": str(tmp_path / "corpus"), "name": "toy"}
    assert runs[1].steps[0]["label"] == str(tmp_path / "out" / "code")
    assert runs[1].baseline == "baseline-1" and runs[1].meta == {"seed": 1}
    assert select(runs, ["*prose*"]) == [runs[0], runs[2]]
    with pytest.raises(CptlabError, match="--only nothing: matches no run"):
        select(runs, ["nothing"])


def test_invalid_yaml_names_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\ngrid: {a: [1, 2]\n")
    with pytest.raises(CptlabError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump({"name": "x", "steps": []}))
    with pytest.raises(CptlabError, match="at least one step"):
        expand(*load_spec(tmp_path / "empty.yaml"))
