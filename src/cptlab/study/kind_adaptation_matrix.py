"""Study kind `adaptation-matrix`: adapt a base to each domain with one recipe, evaluate every domain (Adaptation
Odyssey, arXiv 2410.05581).

For each base model, learning rate, seed and train domain d, the base continues pretraining on d alone with the same
recipe; then every evaluation domain's test split is scored. The **control** run continues the base on its own
pretraining mix (`general`) with the same recipe, so that an effect of re-warming the learning rate is not taken for
an effect of the domain; the report gives changes relative to the base and relative to the control. Per-token losses
of the base and each adapted model are compared (`attribution` step): which token classes carry each change, and
what is left without newline/whitespace/punctuation. Optional diagnostic runs measure each domain's similarity to
the pretraining mix (`similarity` step) and exact/near-duplicate overlap between train and test (`overlap` step).

    name: odyssey
    kind: adaptation-matrix
    bases: {tiny: ./base}              # several bases (model sizes) are allowed; or `base: ./base`
    corpus: ./corpus
    options:
      domains: [legal, man_en]         # train domains (each adapted to separately)
      general: [stdlib_core, man_en]   # the bases' pretraining mix: the control trains on these
      # eval_domains: [...]            # default: domains + general
      split: test
      lrs: [3.0e-4, 1.0e-3]
      seeds: [0]
      train:                           # the recipe: a TrainConfig mapping; model, lr, seed and sources filled in
        data: {cache_dir: ./cache, seq_len: 256}
        schedule: {kind: constant, warmup_steps: 10}
        batch_size: 16
        max_steps: 48
      eval: {max_documents: 200}       # extra options of every `eval` step
      attribution: {top: 10}           # false: no per-token attribution (and no per-token files needed)
      similarity: {measures: [jsd, vocab]}   # options of the `similarity` step; false: not measured
      overlap: {}                      # options of the `overlap` step; false: not measured
      tasks:                           # optional: downstream task accuracy before/after CPT (and after SFT)
        files: [./which_domain.jsonl]  # eval-tasks of the base and of every adapted model
        sft: {data: {train: ./sft.jsonl, seq_len: 256}, max_steps: 40}   # optional: then SFT and eval-tasks
        sft_targets: [control, legal]  # which adapted runs are fine-tuned too (default: every one)

Runs: `before-<base>` (baseline: eval of the base, label "before"), `adapt-[<base>-]<domain>-lr<lr>[-s<seed>]`
(train, eval "after", attribution, [eval-tasks "cpt:<target>", sft, eval-tasks "cpt:<target>+sft"]; the base's
eval-tasks "base" / "base+sft" are in its baseline run), `control-[<base>-]lr<lr>[-s<seed>]` (role "control": the same on the general
mix), and `similarity` / `overlap` (role "diagnostic"). Every adaptation run's config carries `meta.adaptation` =
{base, target (None for the control), control, lr, seed, general, eval_domains, split, base_fingerprint} (a
fingerprint of the base dir's files: a base retrained in place re-runs its runs).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.kinds import StudyKind, register_study_kind
from cptlab.study.spec import RunSpec, StudySpec, _resolve_location, resolve_steps

SECTIONS = ["runs", "adaptation-matrix", "cpt-then-sft", "loss-curves"]
CONTROL = "control"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class MatrixTasks(StrictModel):
    files: list[str] = Field(min_length=1)  # eval-tasks: local task files and/or lm-eval task names
    sft: dict[str, Any] | None = None  # an SFT config mapping (model, seed filled in)
    sft_targets: list[str] | None = None  # adapted runs that are fine-tuned too ("control" or domains); None: all
    eval_tasks: dict[str, Any] = Field(default_factory=dict)  # extra options of the eval-tasks steps


class MatrixOptions(StrictModel):
    domains: list[str] = Field(min_length=1)
    general: list[str] = Field(min_length=1)
    eval_domains: list[str] | None = None
    control_weights: dict[str, float] | None = None  # default: the general domains, equal weights
    split: str = "test"
    lrs: list[float] = Field(default_factory=lambda: [1e-3], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    attribution: dict[str, Any] | bool = True
    similarity: dict[str, Any] | bool = True
    overlap: dict[str, Any] | bool = True
    reference: str | None = None  # similarity reference (default: the corpus' general domains, train split)
    tasks: MatrixTasks | None = None  # downstream task accuracy before/after CPT and after SFT

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if any(lr <= 0 for lr in v):
            raise ValueError("learning rates must be > 0")
        if len(set(v)) != len(v):
            raise ValueError("lrs repeat a value")
        return v

    @model_validator(mode="after")
    def _domains(self) -> "MatrixOptions":
        for name in ("domains", "general"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeat a domain")
        if CONTROL in self.domains:
            raise ValueError(f"{CONTROL!r} is the control run's name; rename that domain")
        if self.eval_domains is not None:
            missing = [d for d in self.domains if d not in self.eval_domains]
            if missing:
                raise ValueError(f"eval_domains must include every train domain (missing: {missing})")
        if self.tasks is not None and self.tasks.sft_targets is not None:
            unknown = [t for t in self.tasks.sft_targets if t != CONTROL and t not in self.domains]
            if unknown:
                raise ValueError(f"tasks.sft_targets: {unknown} are neither {CONTROL!r} nor one of the domains")
        if self.control_weights is not None and not self.control_weights:
            raise ValueError("control_weights: give at least one source")
        if isinstance(self.eval.get("token_losses"), bool) and not self.eval["token_losses"] and self.attribution:
            raise ValueError("eval.token_losses: false leaves attribution nothing to compare; "
                             "set attribution: false too")
        return self

    def evaluated(self) -> list[str]:
        return list(self.eval_domains) if self.eval_domains is not None else \
            list(dict.fromkeys([*self.domains, *self.general]))


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_config(opts: MatrixOptions, base_path: str, corpus_path: str, sources: dict[str, float], lr: float,
                 seed: int) -> dict[str, Any]:
    """The recipe for one run: the options' `train` with model, sources, lr and seed filled in."""
    return fill_recipe(opts.train, base_path, corpus_path, sources, lr, seed,
                       "set by the adaptation-matrix kind (a train domain, or the general mix for the control)")


def fill_recipe(template: dict[str, Any], model: str, corpus_path: str, sources: dict[str, float], lr: float,
                seed: int, why_no_sources: str) -> dict[str, Any]:
    """A copy of a train-config template with model, data sources, lr and seed filled in (shared by the kinds
    that adapt a model with one recipe); `sources` in the template is an error, since the kind sets them."""
    train = copy.deepcopy(template)
    data = train.setdefault("data", {})
    if "sources" in data:
        raise CptlabError(f"options.train.data.sources: {why_no_sources}; leave it out")
    data["sources"] = dict(sources)
    if "cache_dir" not in data and "corpus" not in data:
        data["corpus"] = corpus_path
    m = train.setdefault("model", {})
    m["name"] = model
    m.setdefault("init", "pretrained")
    train.setdefault("optimizer", {})["lr"] = lr
    train["seed"] = seed
    train.setdefault("checkpoint", {"at_end": False})
    train.setdefault("tensorboard", False)
    return train


def _safe(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "x"


def model_fingerprint(path: str) -> str | None:
    """Names, sizes and modification times of a local model dir's files (hashed): a retrained base at the same
    path changes it, so its runs' config hashes change and they re-run. None for a hub name."""
    import hashlib

    p = Path(path)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _bases(spec: StudySpec, spec_dir: Path) -> dict[str, str]:
    bases = {**({"base": spec.base} if spec.base else {}), **spec.bases}
    if not bases:
        raise CptlabError("base: an adaptation-matrix study needs a `base` (or `bases: {label: path}`)")
    return {label: _resolve_location(path, spec_dir) for label, path in bases.items()}


def expand(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    opts = MatrixOptions.model_validate(spec.options)
    for key in ("grid", "steps", "include", "exclude"):
        if getattr(spec, key):
            raise CptlabError(f"{key}: set by the adaptation-matrix kind from its options (domains, lrs, seeds, "
                              "bases); leave it out")
    corpora = {**({"corpus": spec.corpus} if spec.corpus else {}), **spec.corpora}
    if len(corpora) != 1:
        raise CptlabError("corpus: an adaptation-matrix study needs exactly one corpus (train and test domains)")
    corpus_path = _resolve_location(next(iter(corpora.values())), spec_dir)
    bases = _bases(spec, spec_dir)
    evaluated = opts.evaluated()
    attribution = opts.attribution if isinstance(opts.attribution, dict) else ({} if opts.attribution else None)
    control_sources = opts.control_weights or {d: 1.0 for d in opts.general}
    many_bases, many_seeds = len(bases) > 1, len(opts.seeds) > 1

    def eval_step(model: str, label: str) -> dict[str, Any]:
        step = {"kind": "eval", "name": "eval", "model": model, "label": label, "corpus": corpus_path,
                "split": opts.split, "domains": evaluated, **opts.eval}
        if attribution is not None:
            step["token_losses"] = True
        return step

    def make(name: str, role: str, steps: list[dict[str, Any]], axes: dict[str, Any], meta: dict[str, Any],
             baseline: str | None, where: str) -> RunSpec:
        resolved = resolve_steps(steps, {"corpus_path": corpus_path}, spec_dir, where, role=role)
        return RunSpec(name=name, kind=spec.kind, role=role, axes=axes, steps=resolved, baseline=baseline,
                       meta=meta)

    tasks = opts.tasks
    task_files = [_resolve_location(t, spec_dir) for t in tasks.files] if tasks is not None else []

    def task_steps(model: str, label: str, seed: int, adapted: str | None) -> list[dict[str, Any]]:
        """eval-tasks of `model`, then (with tasks.sft, for the chosen targets) SFT from it and eval-tasks."""
        if tasks is None:
            return []
        from cptlab.study.kind_cpt_then_sft import measure_tasks, sft_step

        steps = [measure_tasks(task_files, model, label, "tasks", tasks.eval_tasks)]
        target = adapted or "base"
        if tasks.sft is not None and (adapted is None or tasks.sft_targets is None or target in tasks.sft_targets):
            steps += [sft_step(tasks.sft, model, seed),
                      measure_tasks(task_files, "${steps.sft.final_dir}", f"{label}+sft", "tasks-sft",
                                    tasks.eval_tasks)]
        return steps

    runs: list[RunSpec] = []
    common = {"general": list(opts.general), "domains": list(opts.domains), "eval_domains": evaluated,
              "split": opts.split}
    for label, base_path in bases.items():
        common["base_fingerprint"] = model_fingerprint(base_path)
        before = f"before-{_safe(label)}"
        base_label = "base" if not many_bases else f"base:{label}"
        runs.append(make(before, "baseline", [eval_step(base_path, "before"),
                                              *task_steps(base_path, base_label, spec.seed, None)], {"base": label},
                         {"seed": spec.seed, "adaptation": {"base": label, "target": None, "control": False,
                                                            "lr": None, "seed": None, **dict(common)}},
                         None, "options (baseline)"))
        before_tl = f"${{study.dir}}/runs/{before}/eval/token_losses.parquet"
        for lr in opts.lrs:
            for seed in opts.seeds:
                for target in [CONTROL, *opts.domains]:
                    is_control = target == CONTROL
                    parts = [CONTROL if is_control else "adapt"] + ([_safe(label)] if many_bases else []) \
                        + ([] if is_control else [_safe(target)]) + [f"lr{lr:g}"] + ([f"s{seed}"] if many_seeds else [])
                    name = "-".join(parts)
                    sources = control_sources if is_control else {target: 1.0}
                    steps = [{"kind": "train", "name": "train",
                              "config": train_config(opts, base_path, corpus_path, sources, lr, seed)},
                             eval_step("${steps.train.final_dir}", "after")]
                    if attribution is not None:
                        steps.append({"kind": "attribution", "name": "attribution", "before": before_tl,
                                      "after": "${steps.eval.token_losses}",
                                      "targets": list(opts.general) if is_control else [target],
                                      "label": name, **attribution})
                    arm = "cpt:" + "-".join(([label] if many_bases else []) + [target]
                                            + ([f"lr{lr:g}"] if len(opts.lrs) > 1 else []))
                    steps += task_steps("${steps.train.final_dir}", arm, seed, target)
                    axes = {"base": label, "target": target, "lr": lr, "seed": seed}
                    meta = {"seed": seed, "adaptation": {"base": label, "target": None if is_control else target,
                                                         "control": is_control, "lr": lr, "seed": seed,
                                                         **dict(common)}}
                    runs.append(make(name, CONTROL if is_control else "run", steps, axes, meta, before,
                                     f"options ({name})"))

    runs += _diagnostic_runs(spec, opts, corpus_path, next(iter(bases.values())), evaluated, spec_dir)
    return runs


def _diagnostic_runs(spec: StudySpec, opts: MatrixOptions, corpus_path: str, tokenizer: str,
                     evaluated: list[str], spec_dir: Path) -> list[RunSpec]:
    """`similarity` and `overlap` runs (role "diagnostic"), unless turned off."""
    out = []
    wanted = {
        "similarity": (opts.similarity, {"reference": opts.reference or f"{corpus_path}:{','.join(opts.general)}",
                                         "corpus": corpus_path, "domains": evaluated, "tokenizer": tokenizer}),
        "overlap": (opts.overlap, {"corpus": corpus_path, "domains": evaluated}),
    }
    for kind, (given, defaults) in wanted.items():
        if given is False:
            continue
        step = {"kind": kind, "name": kind, **defaults, **(given if isinstance(given, dict) else {})}
        steps = resolve_steps([step], {"corpus_path": corpus_path}, spec_dir, f"options.{kind}", role="diagnostic")
        out.append(RunSpec(name=kind, kind=spec.kind, role="diagnostic", axes={}, steps=steps,
                           meta={"seed": spec.seed}))
    return out


register_study_kind(StudyKind(
    "adaptation-matrix", expand, options=MatrixOptions, sections=SECTIONS,
    description="Adapt each base to each domain (and the control: its own pretraining mix); ΔPPL on every domain, "
                "similarity vs ΔPPL, token attribution, split overlap.",
))
