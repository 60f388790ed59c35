"""Study kind `merge-curve`: how much of the adaptation to keep, and which remedy forgets least.

Interpolates the base model towards the adapted one (θ = (1−α)·θ_base + α·θ_adapted, or SLERP) at each α of a
grid, evaluates every point on the target domain(s) and on general data, and reports the α on the Pareto front
(general loss vs target loss) and the α with the best target loss whose general loss stays within `budget`
nats/token of the base. Optionally it also trains regularized variants of the same recipe (KL to the base, LSSD)
so that the report's "forgetting vs domain gain" plot puts plain CPT, KL, LSSD and the merges side by side.

    name: remedies
    kind: merge-curve
    corpus: ./corpus
    options:
      base: ./models/base               # the starting point (HF dir)
      adapted: ./runs/cpt/final         # the adapted model ... or `train:` to train it here from `base`
      # train: {data: {cache_dir: ./cache, seq_len: 128}, batch_size: 8, max_steps: 200}   (a TrainConfig
      #        mapping; model = base and data sources = the target domains unless given)
      # variants: {kl: {regularizer: {kind: kl, weight: 0.1}}, lssd: {regularizer: {kind: lssd, weight: 0.5}}}
      #        (each: the `train` recipe with these keys deep-merged in; needs `train`)
      # models: {kl-elsewhere: ./runs/kl/final}   (more finished models to place on the plot)
      target: [legal]
      general: [stdlib, man]
      alphas: [0.25, 0.5, 0.75, 1.0]    # 0 (the base) is always evaluated, by the baseline run
      method: linear                    # linear | slerp
      budget: 0.02                      # allowed rise of general loss, nats/token (0.02 ≈ +2 % perplexity)
      split: valid
      eval: {max_documents: 200}        # extra options of every `eval` step
      # probe: {data: ./labelled.jsonl}  # nearest-mean probe of the base, the adapted model and each variant

Runs: `base` (baseline: eval of the base, label "base"), `curve` ([train], then per α a `merge` step and an
`eval` labelled "alpha=<α>"; α = 1 evaluates the adapted model itself), `variant-<name>` (train + eval) and
`model-<label>` (eval). Every run's `meta` carries target, general, split, budget and its remedy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import DEFAULT_SECTIONS, StudyKind, register_study_kind
from cptlab.study.spec import RunSpec, StudySpec, _resolve_location, resolve_steps

SECTIONS = ["runs", "remedies", "loss-curves", *[s for s in DEFAULT_SECTIONS if s not in ("runs", "loss-curves")]]
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class MergeCurveOptions(StrictModel):
    base: str
    adapted: str | None = None
    train: dict[str, Any] | None = None
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    target: list[str] = Field(min_length=1)
    general: list[str] = Field(min_length=1)
    alphas: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1)
    method: Literal["linear", "slerp"] = "linear"
    budget: float = Field(0.02, ge=0)
    split: str = "valid"
    eval: dict[str, Any] = Field(default_factory=dict)
    probe: dict[str, Any] | None = None

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        for a in v:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"α = {a}: each α must be in [0, 1] (0 = base, 1 = adapted)")
        return sorted(set(v))

    @field_validator("variants", "models")
    @classmethod
    def _labels(cls, v: dict) -> dict:
        for name in v:
            if not _LABEL.match(name) or name == "base":
                raise ValueError(f"name {name!r}: use letters, digits, '-' and '_' (and not 'base')")
        return v

    @model_validator(mode="after")
    def _source(self) -> "MergeCurveOptions":
        if (self.adapted is None) == (self.train is None):
            raise ValueError("give exactly one of `adapted` (a finished model) or `train` (a recipe run here)")
        if self.variants and self.train is None:
            raise ValueError("`variants` are variations of the `train` recipe; give `train` too")
        if set(self.target) & set(self.general):
            raise ValueError(f"domains {sorted(set(self.target) & set(self.general))} are both target and general")
        return self


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def alpha_name(alpha: float) -> str:
    """A step-name-safe spelling of α (no '.', which placeholders use as a separator): 0.25 -> 'a0p25'."""
    return "a" + f"{alpha:g}".replace(".", "p").replace("-", "m")


def train_config(opts: MergeCurveOptions, base_path: str, corpus_path: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training recipe from `base` (target domains as sources unless given), plus a variant's changes."""
    train = _deep_merge(copy.deepcopy(opts.train or {}), copy.deepcopy(extra or {}))
    data = train.setdefault("data", {})
    data.setdefault("sources", {d: 1.0 for d in opts.target})
    if "cache_dir" not in data and "corpus" not in data:
        data["corpus"] = corpus_path
    model = train.setdefault("model", {})
    model.setdefault("name", base_path)
    model.setdefault("init", "pretrained")
    train.setdefault("checkpoint", {"at_end": False})
    return train


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = MergeCurveOptions.model_validate(spec.options)
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    if len(corpora) != 1:
        raise CptlabError("corpus: a merge-curve study needs exactly one corpus (target and general domains)")
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir)
    base_path = _resolve_location(opts.base, spec_dir)
    domains = list(dict.fromkeys([*opts.target, *opts.general]))
    meta = {"target": opts.target, "general": opts.general, "split": opts.split, "budget": opts.budget,
            "method": opts.method, "seed": spec.seed}
    variables = {"corpus_path": corpus_path, "base_path": base_path}

    def evaluate(model: str, label: str, name: str) -> list[dict[str, Any]]:
        steps = [{"kind": "eval", "name": name, "model": model, "label": label, "corpus": corpus_path,
                  "split": opts.split, "domains": domains, **opts.eval}]
        if opts.probe is not None:
            steps.append({"kind": "probe", "name": name.replace("eval", "probe", 1), "model": model,
                          "label": label, **opts.probe})
        return steps

    def run(name: str, role: str, steps: list[dict[str, Any]], remedy: str, where: str) -> RunSpec:
        resolved = resolve_steps(steps, variables, spec_dir, where, role=role)
        return RunSpec(name=name, kind=spec.kind, role=role, axes={"remedy": remedy}, steps=resolved,
                       baseline=None if role == "baseline" else "base", meta={**meta, "remedy": remedy})

    runs = [run("base", "baseline", evaluate(base_path, "base", "eval"), "base", "options.base")]

    curve: list[dict[str, Any]] = []
    if opts.train is not None:
        curve.append({"kind": "train", "name": "train", "config": train_config(opts, base_path, corpus_path)})
        adapted = "${steps.train.final_dir}"
    else:
        adapted = _resolve_location(opts.adapted, spec_dir)
    for alpha in opts.alphas:
        if alpha == 0.0:
            continue  # the base: evaluated by the baseline run
        a = alpha_name(alpha)
        if alpha == 1.0:
            model = adapted
        else:
            merge = {"kind": "merge", "name": f"merge-{a}", "models": [base_path, adapted], "method": opts.method}
            if opts.method == "slerp":
                merge["t"] = alpha
            else:
                merge["weights"] = [1.0 - alpha, alpha]
            curve.append(merge)
            model = f"${{steps.merge-{a}.out_dir}}"
        steps = evaluate(model, f"alpha={alpha:g}", f"eval-{a}")
        if alpha != 1.0 or opts.probe is None:
            steps = steps[:1]  # probe the ends only (the base's is in the baseline run)
        curve.extend(steps)
    if curve:
        runs.append(run("curve", "run", curve, "merge", "options.alphas"))

    for name, changes in opts.variants.items():
        steps = [{"kind": "train", "name": "train", "config": train_config(opts, base_path, corpus_path, changes)},
                 *evaluate("${steps.train.final_dir}", name, "eval")]
        runs.append(run(f"variant-{name}", "run", steps, name, f"options.variants.{name}"))
    for label, path in opts.models.items():
        runs.append(run(f"model-{label}", "run", evaluate(_resolve_location(path, spec_dir), label, "eval"),
                        label, f"options.models.{label}"))
    return runs


register_study_kind(StudyKind(
    "merge-curve", expand, options=MergeCurveOptions, sections=SECTIONS,
    description="Interpolate base → adapted over α; target vs general loss, Pareto front and budget α; "
                "plain CPT vs KL/LSSD variants vs merges.",
))
