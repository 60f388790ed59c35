"""Study kind `domain-sequence`: continual pretraining over domains, d1 then d2 ..., evaluating every domain after
each stage; the forgetting matrix, average forgetting, backward and forward transfer (cptlab.diagnose.forgetting).

    name: sequence
    kind: domain-sequence
    base: ./base                       # or bases: {small: ./s, large: ./l}
    corpus: ./corpus
    options:
      sequences: [[legal, man_en, pydoc], [pydoc, man_en, legal]]   # one run per order (or `sequence: [...]`)
      general: [stdlib_core]           # also evaluated after every stage (forgetting of the pretraining mix)
      split: test
      lrs: [1.0e-3]
      seeds: [0]
      train:                           # each stage's recipe: a TrainConfig mapping; model, sources, lr, seed set
        data: {cache_dir: ./cache, seq_len: 256}
        schedule: {kind: constant, warmup_steps: 10}
        batch_size: 16
        max_steps: 48
      eval: {max_documents: 200}

Each run: `eval-0` (the base), then per stage k `train-k` (from the previous stage's model, fresh optimizer, on
d_k alone) and `eval-k` (every domain of every sequence plus `general`), then `forgetting` (records the
diagnostic "forgetting"). Runs are named `seq-[<base>-]<d1>+<d2>+...-lr<lr>[-s<seed>]`; `meta.sequence` carries
{base, stages, lr, seed, general, eval_domains, split}.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import StudyKind, register_study_kind
from cptlab.study.spec import RunSpec, StudySpec, _resolve_location, resolve_steps

SECTIONS = ["runs", "domain-sequence", "loss-curves"]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SequenceOptions(StrictModel):
    sequence: list[str] | None = None
    sequences: list[list[str]] = Field(default_factory=list)
    general: list[str] = Field(default_factory=list)
    eval_domains: list[str] | None = None
    split: str = "test"
    lrs: list[float] = Field(default_factory=lambda: [1e-3], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "SequenceOptions":
        if not self.all_sequences():
            raise ValueError("give `sequence: [d1, d2, ...]` or `sequences: [[...], ...]`")
        for i, seq in enumerate(self.all_sequences()):
            if len(seq) < 2:
                raise ValueError(f"sequences[{i}]: a sequence needs at least 2 domains (got {seq})")
            if len(set(seq)) != len(seq):
                raise ValueError(f"sequences[{i}]: repeats a domain ({seq})")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError("learning rates must be > 0")
        if self.eval_domains is not None:
            missing = sorted({d for s in self.all_sequences() for d in s} - set(self.eval_domains))
            if missing:
                raise ValueError(f"eval_domains must include every sequence domain (missing: {missing})")
        return self

    def all_sequences(self) -> list[list[str]]:
        return ([list(self.sequence)] if self.sequence is not None else []) + [list(s) for s in self.sequences]

    def evaluated(self) -> list[str]:
        if self.eval_domains is not None:
            return list(self.eval_domains)
        return list(dict.fromkeys([d for s in self.all_sequences() for d in s] + list(self.general)))


def stage_train(opts: SequenceOptions, model: str, domain: str, corpus_path: str, lr: float,
                seed: int) -> dict[str, Any]:
    from cptlab.study.kind_adaptation_matrix import fill_recipe

    return fill_recipe(opts.train, model, corpus_path, {domain: 1.0}, lr, seed,
                       "set by the domain-sequence kind (one domain per stage)")


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = SequenceOptions.model_validate(spec.options)
    for key in ("grid", "steps", "include", "exclude", "baseline"):
        if getattr(spec, key):
            raise CptlabError(f"{key}: set by the domain-sequence kind from its options; leave it out")
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    if len(corpora) != 1:
        raise CptlabError("corpus: a domain-sequence study needs exactly one corpus")
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir)
    bases = {**({"base": spec.base} if spec.base else {}), **spec.bases}
    if not bases:
        raise CptlabError("base: a domain-sequence study needs a `base` (or `bases: {label: path}`)")
    bases = {k: _resolve_location(v, spec_dir) for k, v in bases.items()}
    evaluated = opts.evaluated()

    def ev(model: str, k: int) -> dict[str, Any]:
        return {"kind": "eval", "name": f"eval-{k}", "model": model, "label": "base" if k == 0 else f"stage {k}",
                "corpus": corpus_path, "split": opts.split, "domains": evaluated, "token_losses": False,
                **opts.eval}

    runs = []
    for label, base_path in bases.items():
        for seq in opts.all_sequences():
            for lr in opts.lrs:
                for seed in opts.seeds:
                    parts = ["seq"] + ([_SAFE.sub("_", label)] if len(bases) > 1 else []) \
                        + ["+".join(_SAFE.sub("_", d) for d in seq), f"lr{lr:g}"] \
                        + ([f"s{seed}"] if len(opts.seeds) > 1 else [])
                    name = "-".join(parts)
                    steps = [ev(base_path, 0)]
                    model = base_path
                    for k, domain in enumerate(seq, start=1):
                        steps.append({"kind": "train", "name": f"train-{k}",
                                      "config": stage_train(opts, model, domain, corpus_path, lr, seed)})
                        model = f"${{steps.train-{k}.final_dir}}"
                        steps.append(ev(model, k))
                    steps.append({"kind": "forgetting", "name": "forgetting", "stages": list(seq),
                                  "evals": [f"${{steps.eval-{k}.domains}}" for k in range(len(seq) + 1)]})
                    resolved = resolve_steps(steps, {"corpus_path": corpus_path}, spec_dir, f"options ({name})",
                                             role="run")
                    runs.append(RunSpec(
                        name=name, kind=spec.kind, role="run",
                        axes={"base": label, "sequence": "+".join(seq), "lr": lr, "seed": seed}, steps=resolved,
                        meta={"seed": seed, "sequence": {"base": label, "stages": list(seq), "lr": lr, "seed": seed,
                                                         "general": list(opts.general), "eval_domains": evaluated,
                                                         "split": opts.split}}))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise CptlabError("options.sequences: two sequences give the same run name; make them differ")
    return runs


register_study_kind(StudyKind(
    "domain-sequence", expand, options=SequenceOptions, sections=SECTIONS,
    description="Adapt to domains one after another; every domain evaluated after each stage; forgetting, "
                "backward and forward transfer.",
))
