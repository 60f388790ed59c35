"""Study kind `cpt-then-sft`: does continued pretraining still help once the model is fine-tuned on the task?

Prompt-based CPT, generative unsupervised domain adaptation, math and scientific-literature CPT all judge CPT by
task accuracy after supervised fine-tuning. This kind runs both arms on the same task, seed by seed:

    base ──────────► SFT ─► task accuracy            (base+sft)
    base ─► CPT ─┬─► SFT ─► task accuracy            (cpt+sft)
                 └────────► task accuracy            (cpt: what CPT alone did)

and the base itself (no training). The report shows the accuracy of every arm (mean over seeds and per seed) and
the difference cpt+sft − base+sft with its standard error, and says whether CPT helped after fine-tuning.

    name: does-cpt-help
    kind: cpt-then-sft
    corpus: ./corpus                   # optional: perplexity of every model on `domains` too
    options:
      base: ./models/base
      tasks: [./tasks/domain_mc.jsonl]  # eval-tasks: local multiple-choice files and/or lm-eval task names
      cpt:                             # a TrainConfig mapping; model, seed and out_dir are filled in
        data: {cache_dir: ./cache, sources: {legal: 1.0}, seq_len: 256}
        max_steps: 200
      sft:                             # an SFT config mapping; model, seed and out_dir are filled in
        data: {train: ./sft/train.jsonl, valid: ./sft/valid.jsonl, seq_len: 256}
        max_steps: 100
      seeds: [0, 1, 2]                 # every arm is trained once per seed (CPT and SFT take the seed)
      domains: [legal, general]        # with `corpus`: perplexity evaluations (split `split`)
      eval_tasks: {batch_size: 16}     # extra options of the eval-tasks steps
      eval: {max_documents: 50}        # extra options of the eval steps

Runs: `base` (baseline: the base model's task accuracy), `base-sft-s<seed>` (sft, eval-tasks) and
`cpt-sft-s<seed>` (train, eval-tasks of the CPT model, sft from it, eval-tasks). Model labels in the database:
`base`, `cpt`, `base+sft`, `cpt+sft`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import StudyKind, register_study_kind
from cptlab.study.spec import RunSpec, StudySpec, _resolve_location, resolve_steps

SECTIONS = ["runs", "cpt-then-sft", "loss-curves", "perplexity"]
ARMS = ("base", "cpt", "base+sft", "cpt+sft")


class CptThenSftOptions(StrictModel):
    base: str
    tasks: list[str] = Field(min_length=1)
    cpt: dict[str, Any]
    sft: dict[str, Any]
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    domains: list[str] = Field(default_factory=list)
    split: str = "test"
    eval_tasks: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)


def _with_model(config: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    cfg = copy.deepcopy(config)
    cfg.setdefault("model", {})["name"] = model
    cfg["model"].setdefault("init", "pretrained")
    cfg["seed"] = seed
    cfg.setdefault("checkpoint", {"at_end": True})
    return cfg


def sft_step(config: dict[str, Any], model: str, seed: int, name: str = "sft") -> dict[str, Any]:
    """An `sft` step fine-tuning `model` with the SFT config mapping `config` (model and seed filled in)."""
    return {"kind": "sft", "name": name, "config": _with_model(config, model, seed)}


def measure_tasks(tasks: list[str], model: str, label: str, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """An `eval-tasks` step: task accuracy of `model`, recorded under `label`."""
    return {"kind": "eval-tasks", "name": name, "model": model, "tasks": list(tasks), "label": label, **extra}


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = CptThenSftOptions.model_validate(spec.options)
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    if opts.domains and len(corpora) != 1:
        raise CptlabError("corpus: options.domains needs the study's `corpus` (one corpus) to evaluate on")
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir) if corpora else None
    base_path = _resolve_location(opts.base, spec_dir)
    tasks = [_resolve_location(t, spec_dir) for t in opts.tasks]
    meta = {"tasks": tasks, "seeds": opts.seeds, "domains": opts.domains, "split": opts.split}

    def measure(model: str, label: str, suffix: str) -> list[dict[str, Any]]:
        steps = [measure_tasks(tasks, model, label, f"tasks-{suffix}", opts.eval_tasks)]
        if opts.domains:
            steps.append({"kind": "eval", "name": f"eval-{suffix}", "model": model, "label": label,
                          "corpus": corpus_path, "split": opts.split, "domains": opts.domains, **opts.eval})
        return steps

    def run(name: str, role: str, steps: list[dict[str, Any]], arm: str, seed: int | None, where: str) -> RunSpec:
        variables = {"base_path": base_path, "corpus_path": corpus_path, "seed": seed}
        resolved = resolve_steps(steps, variables, spec_dir, where, role=role)
        axes = {"arm": arm, **({"seed": seed} if seed is not None else {})}
        return RunSpec(name=name, kind=spec.kind, role=role, axes=axes, steps=resolved,
                       baseline=None if role == "baseline" else "base", meta={**meta, "arm": arm})

    runs = [run("base", "baseline", measure(base_path, "base", "base"), "base", None, "options.base")]
    for seed in opts.seeds:
        s = seed
        sft_base = [sft_step(opts.sft, base_path, s), *measure("${steps.sft.final_dir}", "base+sft", "sft")]
        runs.append(run(f"base-sft-s{seed}", "run", sft_base, "base+sft", seed, "options.sft"))
        cpt = [{"kind": "train", "name": "cpt", "config": _with_model(opts.cpt, base_path, s)},
               *measure("${steps.cpt.final_dir}", "cpt", "cpt"),
               sft_step(opts.sft, "${steps.cpt.final_dir}", s),
               *measure("${steps.sft.final_dir}", "cpt+sft", "sft")]
        runs.append(run(f"cpt-sft-s{seed}", "run", cpt, "cpt+sft", seed, "options.cpt"))
    return runs


register_study_kind(StudyKind(
    "cpt-then-sft", expand, options=CptThenSftOptions, sections=SECTIONS,
    description="base→SFT vs base→CPT→SFT on the same task, per seed: does CPT help after fine-tuning?",
))
