"""Study kind `mixture-grid`: continued-pretraining runs over a grid of domain ratios, for the D-CPT mixture law.

How much general data should be replayed? Each run trains on a mixture of the domain corpus (weight r, the
domain ratio) and the general corpus (weight 1 − r, shared equally by the general sources), and evaluates the
domain and general validation loss every `eval_interval` steps during training. Every evaluation is a data point
(N, D, r, loss) of the law (D: training tokens so far; N: the model's parameter count); `cptlab mixlaw fit
STUDY_DIR --target general|domain` fits it and the report's `mixlaw` section shows fit and recommendation.

    name: replay
    kind: mixture-grid
    base: ./models/base            # or bases: {small: ./s, large: ./l} for several model sizes (N)
    corpus: ./corpus
    options:
      domain: code                 # the domain source (token-cache domain name)
      general: [prose]             # the general (replay) source(s)
      ratios: [0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0]   # the default
      split: valid                 # validation split evaluated during training
      eval_interval: 10            # steps between evaluations (default: max_steps // 8)
      budget: 0.03                 # report (a): largest ratio within +3% general loss
      domain_tokens: 5.0e+7        # report (b): best ratio for this much domain data (default: most seen)
      train:                       # the recipe: a TrainConfig mapping; model, data.sources, eval filled in
        data: {seq_len: 128}       # cache_dir or corpus (default: the study's corpus)
        batch_size: 8
        max_steps: 80
        optimizer: {lr: 1.0e-4}

Runs: `mix-r<ratio>` (or `mix-<base>-r<ratio>` with several bases). A spec may give its own `steps:` instead of
the default single train step; they see `${ratio.r}`, `${ratio.weights}` (the sources mapping) and `${base_path}`,
and the step named `train_step` must be a `train` step with evaluations during training. Each run's config
carries `meta.mixlaw` = {r, domain, general, split, train_step, N} for `cptlab.diagnose.mixlaw_points`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import StudyKind, register_study_kind
from cptlab.study.spec import RunSpec, StudySpec, _resolve_location, expand_grid

DEFAULT_RATIOS = [0.0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0]
SECTIONS = ["runs", "mixlaw", "loss-curves"]


class MixtureGridOptions(StrictModel):
    domain: str = Field(min_length=1)
    general: list[str] = Field(min_length=1)
    ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    split: str = "valid"
    eval_interval: int | None = Field(None, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)
    train_step: str = "train"
    n_params: dict[str, int] = Field(default_factory=dict)  # base label -> N (default: counted from the model)
    budget: float = Field(0.03, ge=0)  # report: (a) allowed relative rise of the general loss
    domain_tokens: float | None = Field(None, gt=0)  # report: (b) domain data D_d (default: the most any run saw)

    @field_validator("general", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"ratio {r} is outside [0, 1] (r is the domain ratio)")
        if len(set(v)) != len(v):
            raise ValueError("ratios repeat a value")
        if len(v) < 3:
            raise ValueError("the mixture law needs at least 3 ratios")
        return sorted(v)


def ratio_value(r: float, domain: str, general: list[str]) -> dict[str, Any]:
    """A grid value: {name: "r0.33", r, weights: {source: weight}} (the general share split equally)."""
    weights = {domain: float(r)}
    for g in general:
        weights[g] = weights.get(g, 0.0) + (1.0 - float(r)) / len(general)
    return {"name": f"r{r:g}", "r": float(r), "weights": weights}


def default_train(opts: MixtureGridOptions, corpus_path: str | None, has_bases: bool) -> dict[str, Any]:
    train = copy.deepcopy(opts.train)
    data = train.setdefault("data", {})
    if "sources" in data:
        raise CptlabError("options.train.data.sources: set by the mixture-grid kind from options.domain, "
                          "options.general and the ratio; leave it out")
    data["sources"] = "${ratio.weights}"
    if "cache_dir" not in data and "corpus" not in data:
        if corpus_path is None:
            raise CptlabError("options.train.data: give cache_dir (a token cache) or set the study's `corpus`")
        data["corpus"] = corpus_path
    model = train.setdefault("model", {})
    if has_bases:
        model["name"] = "${base_path}"
        model.setdefault("init", "pretrained")
    elif "name" not in model:
        raise CptlabError("options.train.model.name: give the study a `base` (or `bases`) or name the model here")
    ev = train.setdefault("eval", {})
    ev["split"] = opts.split
    ev["domains"] = list(dict.fromkeys([opts.domain, *opts.general]))
    interval = opts.eval_interval or ev.get("interval")
    if interval is None:
        steps = train.get("max_steps")
        if not isinstance(steps, int):
            raise CptlabError("options.eval_interval: give it (or options.train.max_steps, to default to "
                              "max_steps // 8): the law needs validation losses during training")
        interval = max(1, steps // 8)
    ev["interval"] = interval
    train.setdefault("checkpoint", {"at_end": False})
    train.setdefault("tensorboard", False)
    return train


def _n_params(label: str | None, path: str | None, opts: MixtureGridOptions) -> int | None:
    if label is not None and label in opts.n_params:
        return int(opts.n_params[label])
    if path and Path(path).is_dir():
        from cptlab.diagnose.checkpoint_series import parameters_in_dir

        return parameters_in_dir(path)
    return None  # counted later from the trained model


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = MixtureGridOptions.model_validate(spec.options)
    if opts.domain in opts.general:
        raise CptlabError(f"options.general: {opts.domain!r} is the domain source; name other source(s)")
    bases = {**({"base": spec.base} if spec.base else {}), **spec.bases}
    bases = {k: _resolve_location(v, spec_dir) for k, v in bases.items()}
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir) if len(corpora) == 1 else None
    unknown = sorted(set(opts.n_params) - set(bases))
    if unknown:
        raise CptlabError(f"options.n_params: {unknown} are not base labels ({', '.join(bases) or 'none'})")
    sub = spec.model_copy(deep=True)
    for axis in ("ratio", "base"):
        if axis in spec.grid:
            raise CptlabError(f"grid.{axis}: set by the mixture-grid kind (use options.ratios / bases)")
    grid: dict[str, list[Any]] = {}
    if len(bases) > 1:
        grid["base"] = list(bases)
    grid["ratio"] = [ratio_value(r, opts.domain, opts.general) for r in opts.ratios]
    sub.grid = {**grid, **spec.grid}
    if not spec.steps:
        sub.steps = [{"name": opts.train_step, "kind": "train",
                      "config": default_train(opts, corpus_path, bool(bases))}]
    elif not any(s.get("name", s.get("kind")) == opts.train_step for s in spec.steps):
        raise CptlabError(f"steps: no step named {opts.train_step!r} (options.train_step): the law reads the "
                          f"validation losses that this train step records")
    if spec.run_name is None:
        sub.run_name = "mix-" + "-".join("{" + a + "}" for a in sub.grid)
    runs = expand_grid(sub, spec_dir, prefix="mix")
    for run in runs:
        if run.role != "run":
            continue
        label = run.axes.get("base", next(iter(bases)) if len(bases) == 1 else None)
        run.meta = {**run.meta, "mixlaw": {
            "r": run.axes["ratio"]["r"], "domain": opts.domain, "general": list(opts.general),
            "split": opts.split, "train_step": opts.train_step, "base": label,
            "N": _n_params(label, bases.get(label) if label else None, opts)}}
    return runs


register_study_kind(StudyKind(
    "mixture-grid", expand, options=MixtureGridOptions, sections=SECTIONS,
    description="CPT runs over a grid of domain ratios (and model sizes); fits the D-CPT mixture law.",
))
