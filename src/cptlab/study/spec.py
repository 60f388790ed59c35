"""Study spec: a YAML file that names bases, corpora, grid axes and a per-run recipe of steps.

    name: lr-sweep
    kind: grid                       # study kind (registry in cptlab.study.kinds); default "grid"
    bases: {micro: ./models/micro}   # label -> model dir or hub name (or `base: PATH` for one)
    corpora: {m2d2: ./corpus}        # label -> corpus root (or `corpus: PATH` for one)
    defs:                            # free-form: a home for YAML anchors, ignored otherwise
      train: &train {max_steps: 20, batch_size: 4}
    grid:                            # cartesian product, in this order
      domain: [code, prose]
      lr: [1.0e-3, 3.0e-3]
    exclude: [{domain: prose, lr: 3.0e-3}]   # optional: drop combinations
    include: [{domain: code, lr: 1.0e-2}]    # optional: add combinations
    baseline:                        # optional: steps run once per value of `axes` (e.g. "before" evaluations)
      axes: [base]
      steps: [{kind: eval, model: "${base_path}", corpus: "${corpus_path}"}]
    steps:                           # the per-run recipe
      - {name: train, kind: train, config: {<<: *train, lr: "${lr}", data: {domain: "${domain}"}}}
      - {name: eval, kind: eval, model: "${steps.train.final_dir}", corpus: "${corpus_path}"}

Placeholders `${name}` are filled at expansion from the grid axes, `vars`, `bases.<label>`, `corpora.<label>`,
`base`/`base_path` and `corpus`/`corpus_path` (the run's base label and its path; the only one when there is
one), and `name` (the run name). A placeholder that is the whole string keeps the value's type. `${steps.*}`,
`${run.dir}`, `${step.dir}` and `${study.dir}` are filled at run time (outputs of earlier steps, directories).
String values starting with `./` or `../` are paths relative to the YAML file and are made absolute.

Each run is keyed by a hash of its resolved config (kind, role, axes, steps): a changed config re-runs, an
unchanged one is skipped.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from cptlab.config import StrictModel, apply_overrides, read_yaml, validate
from cptlab.errors import CptlabError

# Filled at run time, never at expansion.
RUNTIME_ROOTS = frozenset({"steps", "run", "step", "study"})
_VAR = re.compile(r"\$\{([^${}]+)\}")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class BaselineSpec(StrictModel):
    """Steps run once per distinct value of `axes` (a subset of the grid axes), before the grid's runs."""

    axes: list[str] = Field(default_factory=lambda: ["base"])
    steps: list[dict[str, Any]]


class StudySpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: str = "grid"
    description: str = ""
    seed: int = 0  # every run's seed (StepContext.seed) unless a grid axis is named `seed`
    base: str | None = None
    bases: dict[str, str] = Field(default_factory=dict)
    corpus: str | None = None
    corpora: dict[str, str] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    defs: Any = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    run_name: str | None = None
    baseline: BaselineSpec | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    executor: dict[str, Any] = Field(default_factory=dict)  # {slurm: {...submitit parameters}}; not hashed


@dataclass
class RunSpec:
    """One run of a study: resolved steps (runtime placeholders left in) and the hash of its config."""

    name: str
    kind: str
    role: str  # "run" | "baseline" | a kind's own role (e.g. "control")
    axes: dict[str, Any]
    steps: list[dict[str, Any]]
    baseline: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    order: int = 0

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "axes": self.axes, "steps": self.steps, "meta": self.meta}

    @property
    def hash(self) -> str:
        return config_hash(self.config)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[StudySpec, Path]:
    """Read and validate a study YAML (+ `--set a.b=c` overrides). Returns the spec and its directory."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    spec = validate(StudySpec, data, str(path))
    return spec, path.resolve().parent


def spec_from_dict(data: dict[str, Any], source: str = "study") -> StudySpec:
    return validate(StudySpec, copy.deepcopy(data), source)


# ---------------------------------------------------------------- placeholders


def _lookup(variables: dict[str, Any], expr: str, where: str) -> Any:
    node: Any = variables
    parts = expr.strip().split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a mapping)"
            prefix = ".".join(parts[:i]) or "(top level)"
            raise CptlabError(f"{where}: unknown variable ${{{expr}}} ({prefix!s} has: {known})")
    return node


def substitute(value: Any, variables: dict[str, Any], where: str, deferred: frozenset[str] = RUNTIME_ROOTS) -> Any:
    """Fill `${...}` placeholders in strings, recursively in dicts/lists; `deferred` roots are left as they are."""
    if isinstance(value, dict):  # keys too (e.g. `sources: {"${domain}": 1.0}`); a key stays a string
        return {(_scalar_text(substitute(k, variables, f"{where}.{k}", deferred)) if isinstance(k, str) else k):
                substitute(v, variables, f"{where}.{k}", deferred) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, f"{where}[{i}]", deferred) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    for _ in range(20):  # nested placeholders resolve from the inside out
        m = _VAR.fullmatch(value)
        if m and m.group(1).split(".")[0].strip() not in deferred:
            return _lookup(variables, m.group(1), where)

        def repl(match: re.Match) -> str:
            expr = match.group(1)
            if expr.split(".")[0].strip() in deferred:
                return match.group(0)
            found = _lookup(variables, expr, where)
            return found if isinstance(found, str) else json.dumps(found) if isinstance(found, (dict, list)) \
                else _scalar_text(found)

        new = _VAR.sub(repl, value)
        if new == value:
            return value
        value = new
    raise CptlabError(f"{where}: placeholders nest too deeply in {value!r}")


def has_runtime_placeholder(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_runtime_placeholder(k) or has_runtime_placeholder(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_runtime_placeholder(v) for v in value)
    return isinstance(value, str) and any(m.group(1).split(".")[0].strip() in RUNTIME_ROOTS
                                          for m in _VAR.finditer(value))


def _resolve_relative_paths(value: Any, spec_dir: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_relative_paths(v, spec_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_relative_paths(v, spec_dir) for v in value]
    if isinstance(value, str) and value.startswith(("./", "../")):
        return str((spec_dir / value).resolve())
    return value


def _resolve_location(value: str, spec_dir: Path) -> str:
    """A model/corpus location: relative paths (or names that exist next to the YAML) become absolute."""
    if value.startswith(("./", "../", "~")) or (spec_dir / value).exists():
        return str((spec_dir / Path(value).expanduser()).resolve())
    return value


# ---------------------------------------------------------------- names


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def value_label(v: Any, index: int) -> str:
    """Readable label of an axis value: a scalar as written; a mapping by its `name`/`label` key, else its index."""
    if isinstance(v, dict):
        for key in ("name", "label"):
            if key in v:
                return _SAFE.sub("_", str(v[key])).strip("_") or str(index)
        return str(index)
    if isinstance(v, list):
        return str(index)
    return _SAFE.sub("_", _scalar_text(v)).strip("_") or str(index)


def run_name(prefix: str, template: str | None, axes: dict[str, Any], labels: dict[str, str]) -> str:
    if template:
        try:
            name = template.format(**labels)
        except KeyError as e:
            raise CptlabError(f"run_name: {template!r} names {e.args[0]!r}, which is not a grid axis") from None
        return _SAFE.sub("_", name)
    return "-".join([prefix, *(labels[a] for a in axes)]) if axes else prefix


# ---------------------------------------------------------------- expansion


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Cartesian product of the axes, minus `exclude` matches, plus `include` entries (each a full point)."""
    axes = list(spec.grid)
    for ax, values in spec.grid.items():
        if not values:
            raise CptlabError(f"grid.{ax}: empty list of values")
    points = [dict(zip(axes, combo)) for combo in itertools.product(*spec.grid.values())] if axes else [{}]
    for i, ex in enumerate(spec.exclude):
        unknown = set(ex) - set(axes)
        if unknown:
            raise CptlabError(f"exclude[{i}]: {sorted(unknown)} not grid axes ({axes})")
        points = [p for p in points if not all(p[k] == v for k, v in ex.items())]
    for i, inc in enumerate(spec.include):
        if set(inc) != set(axes):
            raise CptlabError(f"include[{i}]: must give every grid axis {axes}, got {sorted(inc)}")
        point = {a: inc[a] for a in axes}
        if point not in points:
            points.append(point)
    return points


def _labels(spec: StudySpec, point: dict[str, Any]) -> dict[str, str]:
    out = {}
    for ax, v in point.items():
        values = spec.grid.get(ax, [])
        idx = next((i for i, x in enumerate(values) if x == v), len(values))
        out[ax] = value_label(v, idx)
    return out


def _variables(spec: StudySpec, spec_dir: Path, point: dict[str, Any], name: str) -> dict[str, Any]:
    bases = {k: _resolve_location(v, spec_dir) for k, v in _bases(spec).items()}
    corpora = {k: _resolve_location(v, spec_dir) for k, v in _corpora(spec).items()}
    variables: dict[str, Any] = {"bases": bases, "corpora": corpora, **spec.vars, **point, "name": name}
    for single, table in (("base", bases), ("corpus", corpora)):
        label = point.get(single)
        if label is None and len(table) == 1:
            label = next(iter(table))
        if label is not None:
            variables.setdefault(single, label)
            if isinstance(label, str) and label in table:
                variables[f"{single}_path"] = table[label]
    return variables


def _bases(spec: StudySpec) -> dict[str, str]:
    return {"base": spec.base, **spec.bases} if spec.base else dict(spec.bases)


def _corpora(spec: StudySpec) -> dict[str, str]:
    return {"corpus": spec.corpus, **spec.corpora} if spec.corpus else dict(spec.corpora)


def resolve_steps(raw_steps: list[dict[str, Any]], variables: dict[str, Any], spec_dir: Path, where: str,
                  role: str) -> list[dict[str, Any]]:
    """Name each step, fill placeholders, make relative paths absolute, let the step kind check its params."""
    from cptlab.study.steps import get_step_kind

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_steps):
        loc = f"{where}[{i}]"
        if not isinstance(raw, dict) or "kind" not in raw:
            raise CptlabError(f"{loc}: a step is a mapping with a `kind` (train, eval, python, ...)")
        step = substitute(dict(raw), variables, loc)
        step = _resolve_relative_paths(step, spec_dir)
        kind = get_step_kind(str(step["kind"]), loc)
        base_name = str(step.get("name") or step["kind"])
        name, n = base_name, 2
        while name in seen:
            name, n = f"{base_name}{n}", n + 1
        step["name"] = name
        for m in _VAR.finditer(canonical_json(step)):
            parts = m.group(1).split(".")
            if parts[0] == "steps" and (len(parts) < 2 or parts[1] not in seen):
                raise CptlabError(f"{loc}: ${{{m.group(1)}}} refers to a step that does not run before "
                                  f"this one (earlier steps: {sorted(seen) or 'none'})")
        seen.add(name)
        out.append(kind.prepare(step, loc, role=role))
    return out


def expand_grid(spec: StudySpec, spec_dir: str | Path = ".", prefix: str | None = None) -> list[RunSpec]:
    """The runs of a grid study: baselines first (if any), then one run per grid point, in grid order."""
    spec_dir = Path(spec_dir)
    if not spec.steps:
        raise CptlabError("steps: a study needs at least one step in its per-run recipe")
    prefix = prefix or spec.kind
    runs: list[RunSpec] = []
    points = grid_points(spec)
    baseline_of: dict[int, str] = {}
    if spec.baseline is not None:
        b_axes = [a for a in spec.baseline.axes if a in spec.grid or a != "base"]
        unknown = [a for a in b_axes if a not in spec.grid]
        if unknown:
            raise CptlabError(f"baseline.axes: {unknown} not grid axes ({list(spec.grid)})")
        seen: dict[str, str] = {}
        for i, point in enumerate(points):
            sub = {a: point[a] for a in b_axes}
            name = run_name("baseline", None, sub, _labels(spec, sub))
            key = canonical_json(sub)
            if key not in seen:
                seen[key] = name
                steps = resolve_steps(spec.baseline.steps, _variables(spec, spec_dir, sub, name), spec_dir,
                                      f"baseline.steps", role="baseline")
                runs.append(RunSpec(name=name, kind=spec.kind, role="baseline", axes=sub, steps=steps,
                                    meta={"seed": sub.get("seed", spec.seed)}))
            baseline_of[i] = seen[key]
    for i, point in enumerate(points):
        labels = _labels(spec, point)
        name = run_name(prefix, spec.run_name, point, labels)
        steps = resolve_steps(spec.steps, _variables(spec, spec_dir, point, name), spec_dir, "steps", role="run")
        runs.append(RunSpec(name=name, kind=spec.kind, role="run", axes=point, steps=steps,
                            baseline=baseline_of.get(i), meta={"seed": point.get("seed", spec.seed)}))
    check_unique(runs)
    for order, run in enumerate(runs):
        run.order = order
    return runs


def check_unique(runs: list[RunSpec]) -> None:
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.name in seen:
            raise CptlabError(f"two runs are both named {r.name!r} (axes {seen[r.name].axes} and {r.axes}); "
                              "give the axis values a `name` or set `run_name` to a template that tells them apart")
        seen[r.name] = r


def select(runs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """Runs whose name matches any glob in `only` (comma-separated globs allowed); baselines they need come along."""
    if not only:
        return runs
    patterns = [p.strip() for item in only for p in item.split(",") if p.strip()]
    chosen = {r.name for r in runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)}
    if not chosen:
        raise CptlabError(f"--only {','.join(patterns)}: matches no run (runs: {', '.join(r.name for r in runs)})")
    chosen |= {r.baseline for r in runs if r.name in chosen and r.baseline}
    return [r for r in runs if r.name in chosen]
