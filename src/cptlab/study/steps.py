"""Step kinds: what one step of a study run does. A plug-in contract (the study runner calls them).

A step kind is a function `fn(step: dict, ctx: StepContext) -> dict`: `step` is the step's resolved config
(every `${...}` filled, defaults of its options model applied, plus `name` and `kind`); the returned dict (JSON-able)
is the step's outputs, which later steps of the same run read as `${steps.<step name>.<key>}`. Whatever the
step wants in the results database goes through the context's helpers; the runner commits all of it in one
transaction when the whole run has succeeded.

    # src/cptlab/study/step_my_probe.py      (module name: "step_" + kind name with "-" -> "_")
    from cptlab.config import StrictModel
    from cptlab.study.steps import register_step_kind

    class MyProbeStep(StrictModel):
        model: str
        data: str
        seed: int | None = None

    def my_probe(step: dict, ctx) -> dict:
        result = {"accuracy": 0.9}                       # ... real work, files under ctx.step_dir ...
        ctx.add_diagnostic("my-probe", result)
        return result                                    # -> ${steps.<name>.accuracy}

    register_step_kind("my-probe", my_probe, options=MyProbeStep)

`get_step_kind("my-probe")` imports `cptlab.study.step_my_probe` on first use. `options` (a StrictModel) is
checked when the study is expanded (unknown keys, and types where no run-time placeholder is left) and fully at
run time. Built-in kinds: `train` (cptlab.train.run) and `eval` (cptlab.evaluate.perplexity), in
`cptlab.study.builtin_steps`. Step kinds kept outside the package are imported from the modules named in the
environment variable `CPTLAB_PLUGINS` (comma-separated), e.g. `CPTLAB_PLUGINS=my_lab.steps cptlab study run ...`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from cptlab.config import StrictModel, format_validation_error
from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_write_json
from cptlab.plugins import import_plugin, load_builtins
from cptlab.study.spec import RunSpec, has_runtime_placeholder
from cptlab.study.store import EVAL_METRICS, RunRecord

# Keys every step has; never passed to the options model.
STEP_KEYS = ("name", "kind")


@dataclass
class StepContext:
    """What a step kind gets besides its config: where to write, what earlier steps produced, where to record."""

    run: RunSpec
    run_dir: Path
    step_dir: Path
    study_dir: Path
    step_name: str
    outputs: dict[str, dict[str, Any]]
    record: RunRecord
    seed: int = 0
    launcher: dict[str, Any] = field(default_factory=dict)  # e.g. {"kind": "torchrun", "nproc": 2}
    rank: int = 0  # under a torchrun launcher: this process's rank (only rank 0's record is kept)

    def __post_init__(self) -> None:
        self.step_dir = Path(self.step_dir)
        self.step_dir.mkdir(parents=True, exist_ok=True)

    def relpath(self, path: str | Path) -> str:
        """A path as stored in the database: relative to the study dir when inside it, else absolute."""
        p = Path(path).resolve()
        try:
            return p.relative_to(Path(self.study_dir).resolve()).as_posix()
        except ValueError:
            return str(p)

    def add_metric(self, step: int, key: str, value: float | None) -> None:
        """One training-curve point (e.g. step 10, "loss", 3.2); stored in the `metrics` table."""
        v = None if value is None else float(value)
        self.record.metrics.append((self.step_name, int(step), str(key), v))

    def add_metrics_jsonl(self, path: str | Path, step_key: str = "step") -> int:
        """Every numeric field of every record of a trainer's metrics.jsonl; returns the points added.

        Train records give their keys as they are (`loss`, `lr`, `grad_norm`; nested dicts as
        `tokens_by_source/<source>`); eval records (those with a `domain`) give `<split>_<key>/<domain>`,
        e.g. `valid_loss/code`. A torn last line (a killed writer) is ignored."""
        import json

        n = 0
        path = Path(path)
        if not path.is_file():
            return 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get(step_key), (int, float)):
                continue
            step = int(row[step_key])
            domain = row.get("domain")
            prefix = f"{row.get('split', 'eval')}_" if isinstance(domain, str) else ""
            suffix = f"/{domain}" if isinstance(domain, str) else ""
            for key, value in row.items():
                if key in (step_key, "domain", "split"):
                    continue
                items = value.items() if isinstance(value, dict) else [(None, value)]
                for sub, v in items:
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        name = f"{prefix}{key}" + (f"/{sub}" if sub is not None else "") + suffix
                        self.add_metric(step, name, v)
                        n += 1
        return n

    def add_evaluation(self, model_label: str, eval_dict: dict[str, Any],
                       token_losses_path: str | Path | dict[str, str | Path] | None = None) -> None:
        """Per-domain perplexities of one model (an `EvalResult.to_dict()`); `token_losses_path` is the
        per-token parquet file (one for all domains, or {domain: path})."""
        settings = dict(eval_dict.get("settings") or {})
        split = str(settings.get("split", "test"))
        domains = eval_dict.get("domains")
        if not isinstance(domains, dict):
            raise CptlabError(f"step {self.step_name}: an evaluation needs a `domains` mapping")
        for domain, numbers in domains.items():
            if isinstance(token_losses_path, dict):
                tl = token_losses_path.get(domain)
            else:
                tl = token_losses_path
            extra = {k: v for k, v in numbers.items() if k not in EVAL_METRICS}
            self.record.evaluations.append({
                "step_name": self.step_name, "model": str(model_label), "domain": str(domain), "split": split,
                **{m: numbers.get(m) for m in EVAL_METRICS},
                "extra": {"settings": settings, **extra} if extra else {"settings": settings},
                "token_losses": self.relpath(tl) if tl else None,
            })
            if tl:
                self.add_artifact("token-losses", tl)

    def add_task_results(self, model_label: str, result: dict[str, Any]) -> int:
        """Downstream task accuracy of one model (the JSON of `cptlab eval-tasks`, `TasksResult.to_dict()`):
        one `task_results` row per numeric metric of each task (its `<metric>_stderr` beside it; n, and the
        task's other fields with the result's settings in `extra`). Returns the rows added."""
        tasks = result.get("tasks")
        if not isinstance(tasks, dict):
            raise CptlabError(f"step {self.step_name}: task results need a `tasks` mapping")
        settings = _jsonable(dict(result.get("settings") or {}))
        added = 0
        for task, numbers in tasks.items():
            if not isinstance(numbers, dict):
                raise CptlabError(f"step {self.step_name}: task {task!r}: expected a mapping of metrics")
            n = numbers.get("n")
            n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
            metrics = {k: v for k, v in numbers.items() if _is_number(v) and k != "n" and not k.endswith("_stderr")}
            other = {k: v for k, v in numbers.items() if k != "n" and k not in metrics
                     and not (k.endswith("_stderr") and k[:-len("_stderr")] in metrics)}
            extra = _jsonable({**other, "settings": settings})
            for metric, value in metrics.items():
                stderr = numbers.get(f"{metric}_stderr")
                self.record.task_results.append((
                    self.step_name, str(model_label), str(task), str(metric), float(value),
                    float(stderr) if _is_number(stderr) else None, n, extra))
                added += 1
        return added

    def add_diagnostic(self, kind: str, result_json: Any) -> None:
        """Any JSON-able result of a diagnostic (similarity matrix, fitted law, probe accuracy...)."""
        self.record.diagnostics.append((self.step_name, str(kind), _jsonable(result_json)))

    def add_artifact(self, kind: str, path: str | Path) -> None:
        """A file the database points to (stored relative to the study dir)."""
        entry = (self.step_name, str(kind), self.relpath(path))
        if entry not in self.record.artifacts:
            self.record.artifacts.append(entry)

    def write_json_artifact(self, kind: str, data: Any) -> Path:
        """Write `data` to `<kind>.json` in the step dir (atomically) and record it as artifact `kind`."""
        path = self.step_dir / f"{kind}.json"
        atomic_write_json(path, data)
        self.add_artifact(kind, path)
        return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python, Paths -> str: what json.dumps can store."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


StepFn = Callable[[dict[str, Any], StepContext], dict[str, Any]]


@dataclass
class StepKind:
    name: str
    fn: StepFn
    options: type[StrictModel] | None = None
    # True when the step can run under `--launcher torchrun` (every rank calls fn; rank 0's record is kept).
    distributed: bool = False
    description: str = ""

    def _params(self, step: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in step.items() if k not in STEP_KEYS}

    def prepare(self, step: dict[str, Any], where: str, role: str = "run") -> dict[str, Any]:
        """Check a step at expansion time: unknown keys always; values where no run-time placeholder is left."""
        if self.options is None:
            return step
        params = self._params(step)
        fields = self.options.model_fields
        unknown = sorted(k for k in params if k not in fields)
        if unknown:
            raise CptlabError(f"{where}: unknown key(s) {unknown} for step kind {self.name!r} "
                              f"(known: {', '.join(fields)})")
        static = {k: v for k, v in params.items() if not has_runtime_placeholder(v)}
        try:
            self.options.model_validate(static)
        except ValidationError as e:
            # Missing fields may come from run-time placeholders; report only real errors.
            errors = [err for err in e.errors() if not (err["type"] == "missing" and err["loc"]
                                                        and err["loc"][0] in params)]
            if errors:
                raise CptlabError(format_validation_error(
                    ValidationError.from_exception_data(e.title, errors), where)) from None
        return step

    def resolve(self, step: dict[str, Any], where: str) -> dict[str, Any]:
        """The full check at run time (placeholders filled): defaults applied, types coerced."""
        if self.options is None:
            return step
        try:
            model = self.options.model_validate(self._params(step))
        except ValidationError as e:
            raise CptlabError(format_validation_error(e, where)) from None
        return {**{k: step[k] for k in STEP_KEYS if k in step}, **model.model_dump()}


_STEP_KINDS: dict[str, StepKind] = {}


def register_step_kind(name: str, fn: StepFn, options: type[StrictModel] | None = None, *,
                       distributed: bool = False, description: str = "") -> StepKind:
    """Register (or replace) a step kind under `name`."""
    kind = StepKind(name, fn, options, distributed=distributed, description=description or (fn.__doc__ or ""))
    _STEP_KINDS[name] = kind
    return kind


def _load_builtins() -> None:
    load_builtins("cptlab.study.builtin_steps", user_plugins=True)


def get_step_kind(name: str, where: str = "kind") -> StepKind:
    """The registered kind; imports `cptlab.study.step_<name with - as _>` on first use."""
    _load_builtins()
    if name not in _STEP_KINDS:
        import_plugin("cptlab.study.step_", name)
    if name not in _STEP_KINDS:
        raise CptlabError(f"{where}: unknown step kind {name!r}; known kinds: {', '.join(sorted(_STEP_KINDS))}")
    return _STEP_KINDS[name]


def step_kinds() -> dict[str, StepKind]:
    _load_builtins()
    return dict(_STEP_KINDS)
