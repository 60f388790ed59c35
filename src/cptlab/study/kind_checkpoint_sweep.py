"""Study kind `checkpoint-sweep`: adapt every checkpoint of a pretraining run with the same recipe.

Does longer pretraining make a model harder to adapt ("Overtrained Language Models Are Harder to Fine-Tune",
arXiv 2503.19206)? For each checkpoint (and each learning rate and seed) the same continued-pretraining recipe runs,
then the target domain(s) and the general (pretraining) validation domains are evaluated. The report plots target
and general perplexity against pretraining tokens, before and after adaptation, names the checkpoint that ends
best and says whether the curve turns up (U-shape), with the difference and its spread over seeds.

    name: overtraining
    kind: checkpoint-sweep
    corpus: ./corpus
    options:
      pretrain_run: ./pretrain           # a `cptlab train` out dir: its complete checkpoints/step-*/
      # checkpoints: [{path: ./a, tokens: 1000}, ...]   (instead of pretrain_run, or in addition)
      target: [legal]                    # domain(s) adapted to
      general: [stdlib, man]             # the pretraining mix's domains (forgetting)
      split: valid
      lrs: [1.0e-3]
      seeds: [0, 1]
      train:                             # the recipe: a TrainConfig mapping; model, lr, seed, out_dir filled in
        data: {cache_dir: ./cache, seq_len: 128}       # sources default to the target domains, equal weights
        schedule: {kind: constant, warmup_steps: 5}
        batch_size: 8
        max_steps: 40
      eval: {max_documents: 50}          # extra options of the `eval` steps
      sensitivity: {gammas: [0.03, 0.1, 0.3], seeds: 3}   # optional: one extra run measuring sensitivity
      tasks:                             # optional: the overtraining paper's outcome, task accuracy after SFT
        files: [./tasks/domain_mc.jsonl] # eval-tasks (local multiple-choice files and/or lm-eval task names)
        sft: {data: {train: ./sft/train.jsonl, seq_len: 256}, max_steps: 50}   # SFT each adapted checkpoint
        before: true                     # also the checkpoints themselves, and (with sft) their SFT without CPT

Runs: `before-<checkpoint>` (baseline: evaluates the checkpoint), `sweep-<checkpoint>-<lr>-<seed>` (train, eval)
and, with `sensitivity`, one run `sensitivity` (role "diagnostic"). With `tasks`, every sweep run adds eval-tasks of
the adapted model (label "cpt") and, with `tasks.sft`, an `sft` step from it and eval-tasks (label "cpt+sft");
with `tasks.before`, the baseline runs add eval-tasks of the checkpoint ("base") and, with sft, "base+sft". The
report plots accuracy against pretraining tokens. A spec may give its own `steps:` instead of the
default recipe; they see `${checkpoint.path}`, `${checkpoint.tokens}`, `${lr}`, `${seed}` and `${corpus_path}`.
Checkpoints are read when the study is expanded: the pretraining run must exist by then.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import StudyKind, register_study_kind
from cptlab.study.spec import BaselineSpec, RunSpec, StudySpec, _resolve_location, expand_grid, resolve_steps

SECTIONS = ["runs", "checkpoint-sweep", "sweep-tasks", "sensitivity", "loss-curves"]


class CheckpointEntry(StrictModel):
    path: str
    tokens: int | None = Field(None, ge=0)
    name: str | None = None


class SweepTasks(StrictModel):
    files: list[str] = Field(min_length=1)
    sft: dict[str, Any] | None = None  # an SFT config mapping; model and seed filled in
    before: bool = True  # also measure (and SFT) the checkpoints without CPT
    eval_tasks: dict[str, Any] = Field(default_factory=dict)


class SweepOptions(StrictModel):
    pretrain_run: str | None = None
    include_final: bool = False
    checkpoints: list[CheckpointEntry] = Field(default_factory=list)
    max_checkpoints: int | None = Field(None, ge=1)  # keep this many, spread evenly over the series
    target: list[str] = Field(min_length=1)
    general: list[str] = Field(default_factory=list)
    split: str = "valid"
    lrs: list[float] = Field(default_factory=lambda: [1e-3], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    sensitivity: dict[str, Any] | None = None
    tasks: SweepTasks | None = None


def sweep_checkpoints(opts: SweepOptions, spec_dir: Path) -> list[dict[str, Any]]:
    """The checkpoints as grid values: {name, path (model dir), tokens, parameters}, ordered by tokens."""
    from cptlab.diagnose.checkpoint_series import (
        list_run_checkpoints,
        order_series,
        parameters_in_dir,
        resolve_series,
    )

    series = []
    if opts.pretrain_run:
        run = Path(_resolve_location(opts.pretrain_run, spec_dir))
        try:
            series += list_run_checkpoints(run, include_final=opts.include_final)
        except CptlabError as e:
            raise CptlabError(f"options.pretrain_run: {e}") from None
    if opts.checkpoints:
        paths = [_resolve_location(c.path, spec_dir) for c in opts.checkpoints]
        given = [c.tokens for c in opts.checkpoints]
        labels = [c.name or Path(p).name for c, p in zip(opts.checkpoints, paths)]
        try:
            found = resolve_series(paths, labels=labels)
        except CptlabError as e:
            raise CptlabError(f"options.checkpoints: {e}") from None
        by_dir = {c.model_dir: c for c in found}
        for p, t in zip(paths, given):
            from cptlab.diagnose.checkpoint_series import model_dir_of

            c = by_dir[str(model_dir_of(p).resolve())]
            if t is not None:
                c.tokens, c.tokens_source = t, "given"
        series += found
    if not series:
        raise CptlabError("options: give `pretrain_run` (a training run with checkpoints) or `checkpoints`")
    series = order_series(series)
    if opts.max_checkpoints and len(series) > opts.max_checkpoints:
        k = opts.max_checkpoints
        idx = sorted({round(i * (len(series) - 1) / max(1, k - 1)) for i in range(k)})
        series = [series[i] for i in idx]
    out, seen = [], set()
    for c in series:
        name = c.label if c.label not in seen else f"{c.label}-{len(seen)}"
        seen.add(name)
        out.append({"name": name, "path": c.model_dir, "tokens": c.tokens, "step": c.step,
                    "parameters": parameters_in_dir(c.model_dir)})
    return out


def default_train(opts: SweepOptions, corpus_path: str | None) -> dict[str, Any]:
    train = copy.deepcopy(opts.train)
    data = train.setdefault("data", {})
    data.setdefault("sources", {d: 1.0 for d in opts.target})
    if "cache_dir" not in data and "corpus" not in data:
        if corpus_path is None:
            raise CptlabError("options.train.data: give cache_dir (a token cache) or set the study's `corpus`")
        data["corpus"] = corpus_path
    model = train.setdefault("model", {})
    model["name"] = "${checkpoint.path}"
    model.setdefault("init", "pretrained")
    train.setdefault("optimizer", {})["lr"] = "${lr}"
    train["seed"] = "${seed}"
    train.setdefault("checkpoint", {"at_end": False})
    return train


def task_steps(opts: SweepOptions, spec_dir: Path, model: str, label: str, seed) -> list[dict[str, Any]]:
    """eval-tasks of `model` and, with tasks.sft, SFT from it and eval-tasks of the result ("<label>+sft")."""
    if opts.tasks is None:
        return []
    from cptlab.study.kind_cpt_then_sft import measure_tasks, sft_step

    t = opts.tasks
    files = [_resolve_location(f, spec_dir) for f in t.files]
    steps = [measure_tasks(files, model, label, "tasks", t.eval_tasks)]
    if t.sft is not None:
        steps += [sft_step(t.sft, model, seed),
                  measure_tasks(files, "${steps.sft.final_dir}", f"{label}+sft", "tasks-sft", t.eval_tasks)]
    return steps


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = SweepOptions.model_validate(spec.options)
    checkpoints = sweep_checkpoints(opts, spec_dir)
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    if len(corpora) != 1:
        raise CptlabError("corpus: a checkpoint-sweep study needs exactly one corpus (target and general domains)")
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir)
    domains = list(dict.fromkeys([*opts.target, *opts.general]))
    eval_step = {"kind": "eval", "corpus": "${corpus_path}", "split": opts.split, "domains": domains,
                 **opts.eval}
    sub = spec.model_copy(deep=True)
    sub.grid = {"checkpoint": checkpoints, "lr": list(opts.lrs), "seed": list(opts.seeds)}
    if not spec.steps:
        sub.steps = [{"name": "train", "kind": "train", "config": default_train(opts, corpus_path)},
                     {**eval_step, "name": "eval", "model": "${steps.train.final_dir}", "label": "after"},
                     *task_steps(opts, spec_dir, "${steps.train.final_dir}", "cpt", "${seed}")]
    if spec.baseline is None:
        before = task_steps(opts, spec_dir, "${checkpoint.path}", "base", spec.seed) \
            if opts.tasks is not None and opts.tasks.before else []
        sub.baseline = BaselineSpec(axes=["checkpoint"], steps=[
            {**eval_step, "name": "eval", "model": "${checkpoint.path}", "label": "before"}, *before])
    if spec.run_name is None:
        sub.run_name = "sweep-{checkpoint}-lr{lr}-s{seed}"
    runs = expand_grid(sub, spec_dir, prefix="sweep")
    for r in runs:  # "before-<checkpoint>" reads better than the grid's "baseline-<checkpoint>"
        if r.role == "baseline":
            r.name = "before-" + r.name.removeprefix("baseline-")
        elif r.baseline is not None:
            r.baseline = "before-" + r.baseline.removeprefix("baseline-")
        r.meta = {"target": opts.target, "general": opts.general, "split": opts.split}
    if opts.sensitivity is not None:
        step = {"name": "sensitivity", "kind": "sensitivity", "models": [c["path"] for c in checkpoints],
                "tokens": [c["tokens"] for c in checkpoints] if all(c["tokens"] is not None for c in checkpoints)
                else None, "labels": [c["name"] for c in checkpoints], "corpus": corpus_path,
                "split": opts.split, "domains": opts.general or None, **opts.sensitivity}
        steps = resolve_steps([step], {"corpus_path": corpus_path}, spec_dir, "options.sensitivity",
                              role="diagnostic")
        runs.append(RunSpec(name="sensitivity", kind=spec.kind, role="diagnostic", axes={}, steps=steps))
    return runs


register_study_kind(StudyKind(
    "checkpoint-sweep", expand, options=SweepOptions, sections=SECTIONS,
    description="Adapt each pretraining checkpoint with one recipe; target/general PPL vs pretraining tokens.",
))
