"""Downstream task accuracy: multiple-choice items scored by the log-likelihood of each choice.

Two sources, one result (`TasksResult.to_dict()` is the JSON of `cptlab eval-tasks`):
- local task files (`source: "cptlab"`), scored here exactly as lm-evaluation-harness's `multiple_choice`
  output type with its HFLM model does it (see `choice_scoring.py`);
- lm-evaluation-harness task names (or task YAML files / dirs via `include_path`), run through
  `lm_eval.simple_evaluate` on the same loaded model (`source: "lm-eval"`, see `lm_eval_tasks.py`).

A local task file is a `.jsonl` with one item per line:
    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}
`context` may be called `query` or `prompt`; it may be "" (lm-eval then conditions on the prefix token), never
only whitespace (lm-eval cannot score that). `choices`: at least 2 non-empty strings. `gold`: an index into
`choices`, or a string equal to one of them (the first equal one). Blank lines are ignored.
Or a small YAML task file naming one:
    name: capitals              # default: the file's stem
    path: capitals.jsonl        # relative to the YAML file
    target_delimiter: " "       # between context and choice (lm-eval's default)
    description: ""             # text before everything (lm-eval's `description`)
    num_fewshot: 0              # examples before each item: `context + target_delimiter + gold choice +
    fewshot_delimiter: "\\n\\n"   #   fewshot_delimiter`, drawn as lm-eval draws them (seeded random.Random,
    fewshot_path: null          #   the item itself left out when they come from the same file)
    fewshot_seed: 1234          # lm-eval's default fewshot_random_seed
    limit: null                 # the first N items
A YAML file with a `task:` key is an lm-eval task config and goes to lm-eval.

Metrics, as lm-eval defines them: `acc` = mean of [argmax_i loglik_i == gold], `acc_norm` = mean of
[argmax_i loglik_i / len(choice_i in characters) == gold] (first index on ties), stderr = sample standard
deviation / sqrt(n) (lm-eval's `mean_stderr`; None for n < 2).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from cptlab.config import StrictModel, format_validation_error, read_yaml
from cptlab.errors import CptlabError, UsageError

CONTEXT_FIELDS = ("context", "query", "prompt")
TASK_FILE_SUFFIXES = (".jsonl", ".yaml", ".yml")
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's DEFAULT_OTHER_SEED (fewshot_random_seed)


@dataclass
class ChoiceItem:
    context: str
    choices: list[str]
    gold: int
    line: int  # 1-based line of the jsonl file
    doc: dict  # the item as read (few-shot sampling compares items by it, as lm-eval does)


@dataclass
class ChoiceTask:
    name: str
    file: Path  # the file the user named (jsonl or YAML)
    path: Path  # the jsonl file of the items
    items: list[ChoiceItem]
    target_delimiter: str = " "
    description: str = ""
    num_fewshot: int = 0
    fewshot_delimiter: str = "\n\n"
    fewshot_items: list[ChoiceItem] | None = None  # None: from `items`, the item itself left out
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED
    limit: int | None = None

    def settings(self) -> dict[str, Any]:
        return {"target_delimiter": self.target_delimiter, "num_fewshot": self.num_fewshot,
                "fewshot_delimiter": self.fewshot_delimiter, "fewshot_seed": self.fewshot_seed,
                "description": self.description, "limit": self.limit}


class TaskFileConfig(StrictModel):
    name: str | None = None
    path: str
    target_delimiter: str = " "
    description: str = ""
    num_fewshot: int = Field(0, ge=0)
    fewshot_delimiter: str = "\n\n"
    fewshot_path: str | None = None
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED
    limit: int | None = Field(None, ge=1)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_items(path: str | Path) -> list[ChoiceItem]:
    """The items of a multiple-choice jsonl file; any problem is a CptlabError naming `FILE:LINE`."""
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: task file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CptlabError(f"{path}: not UTF-8 text (byte {e.start})") from None
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        items.append(_parse_item(line, f"{path}:{n}", n))
    if not items:
        raise CptlabError(f"{path}:1: empty task file (no items)")
    return items


def _parse_item(line: str, where: str, n: int) -> ChoiceItem:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise CptlabError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict):
        raise CptlabError(f"{where}: expected a JSON object, got {_type_name(doc)}")
    key = next((k for k in CONTEXT_FIELDS if k in doc), None)
    if key is None:
        raise CptlabError(f"{where}: missing field `context` (or `query` / `prompt`)")
    context = doc[key]
    if not isinstance(context, str):
        raise CptlabError(f"{where}: field `{key}`: expected a string, got {_type_name(context)}")
    if context and not context.strip():
        raise CptlabError(f"{where}: field `{key}`: only whitespace (lm-eval cannot score an item whose context "
                          f"is only whitespace; use \"\" for no context)")
    if "choices" not in doc:
        raise CptlabError(f"{where}: missing field `choices`")
    choices = doc["choices"]
    if not isinstance(choices, list):
        raise CptlabError(f"{where}: field `choices`: expected a list of strings, got {_type_name(choices)}")
    if len(choices) < 2:
        raise CptlabError(f"{where}: field `choices`: expected at least 2 choices, got {len(choices)}")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise CptlabError(f"{where}: field `choices`[{i}]: expected a string, got {_type_name(c)}")
        if not c:
            raise CptlabError(f"{where}: field `choices`[{i}]: empty string")
    if "gold" not in doc:
        raise CptlabError(f"{where}: missing field `gold`")
    gold = doc["gold"]
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise CptlabError(f"{where}: field `gold`: expected an index or one of the choices, got "
                          f"{_type_name(gold)}")
    if isinstance(gold, str):
        if gold not in choices:
            raise CptlabError(f"{where}: field `gold`: {gold!r} is not one of the choices")
        gold = choices.index(gold)
    elif not 0 <= gold < len(choices):
        raise CptlabError(f"{where}: field `gold`: index {gold} out of range for {len(choices)} choices")
    return ChoiceItem(context=context, choices=list(choices), gold=int(gold), line=n, doc=doc)


def is_lm_eval_yaml(path: Path) -> bool:
    """A YAML file with a `task` or `group` key is an lm-eval task config, not a cptlab task file."""
    data = read_yaml(path)
    return ("task" in data or "group" in data) and "path" not in data


def read_task(path: str | Path) -> ChoiceTask:
    """A local task from a `.jsonl` file or a cptlab task YAML file (see the module doc)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return ChoiceTask(name=path.stem, file=path, path=path, items=read_items(path))
    if path.suffix not in (".yaml", ".yml"):
        raise UsageError(f"{path}: a task file is .jsonl or .yaml/.yml")
    data = read_yaml(path)
    try:
        cfg = TaskFileConfig.model_validate(data)
    except ValidationError as e:
        raise CptlabError(format_validation_error(e, str(path))) from None
    base = path.parent
    jsonl = (base / cfg.path) if not Path(cfg.path).is_absolute() else Path(cfg.path)
    fewshot = None
    if cfg.fewshot_path is not None:
        fp = Path(cfg.fewshot_path)
        fewshot = read_items(fp if fp.is_absolute() else base / fp)
    task = ChoiceTask(name=cfg.name or path.stem, file=path, path=jsonl, items=read_items(jsonl),
                      target_delimiter=cfg.target_delimiter, description=cfg.description,
                      num_fewshot=cfg.num_fewshot, fewshot_delimiter=cfg.fewshot_delimiter, fewshot_items=fewshot,
                      fewshot_seed=cfg.fewshot_seed, limit=cfg.limit)
    pool = len(fewshot) if fewshot is not None else len(task.items) - 1
    if task.num_fewshot > pool:
        raise CptlabError(f"{path}: num_fewshot {task.num_fewshot}: only {pool} example(s) to draw from")
    return task


def split_task_args(tasks: list[str] | str) -> list[str]:
    """`--tasks a,b --tasks c` -> [a, b, c] (order kept, duplicates dropped)."""
    if isinstance(tasks, str):
        tasks = [tasks]
    out: list[str] = []
    for t in tasks:
        for part in str(t).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def classify_tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(local task files, lm-eval task specs): an existing .jsonl / cptlab YAML is local; an lm-eval YAML file
    or anything that is not a file is for lm-eval. A missing path that looks like a file is an error."""
    local, lm_eval = [], []
    for t in tasks:
        p = Path(t)
        if p.is_file():
            if p.suffix in (".yaml", ".yml") and is_lm_eval_yaml(p):
                lm_eval.append(str(p))
            elif p.suffix in TASK_FILE_SUFFIXES:
                local.append(t)
            else:
                raise UsageError(f"--tasks {t}: a task file is .jsonl or .yaml/.yml")
        elif p.suffix in TASK_FILE_SUFFIXES or "/" in t or p.is_dir():
            raise CptlabError(f"--tasks {t}: task file not found" if not p.is_dir() else
                              f"--tasks {t}: a directory (use --include-path for a dir of lm-eval task YAMLs)")
        else:
            lm_eval.append(t)
    return local, lm_eval


@dataclass
class TasksResult:
    """`to_dict()` = {"model": ..., "tasks": {name: {acc, acc_stderr, acc_norm, acc_norm_stderr, n, source,
    file, ...}}, "settings": {...}}."""

    model: str
    tasks: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tasks": {k: dict(v) for k, v in self.tasks.items()},
                "settings": dict(self.settings)}


def eval_tasks(model, tasks: list[str] | str, tokenizer=None, batch_size="auto", precision: str = "fp32",
               device=None, limit: int | None = None, include_path: str | Path | None = None,
               samples: str | Path | None = None) -> TasksResult:
    """Accuracy of `model` (an HF dir / hub name, or a loaded causal LM with its `tokenizer`) on each task.

    `tasks`: local task files (.jsonl / cptlab YAML) and lm-eval task names (or lm-eval task YAML files, or names
    found in `include_path`), comma-separated strings allowed. `limit`: the first N items of each task (a task
    file's own `limit` applies when smaller). `samples`: write one JSON line per item (both sources) to this file.
    """
    from cptlab.console import log
    from cptlab.evaluate.choice_scoring import ChoiceScorer
    from cptlab.evaluate.ppl import _resolve_model
    from cptlab.evaluate.scoring import check_precision, parse_batch_size

    names = split_task_args(tasks)
    if not names:
        raise UsageError("--tasks: no task given")
    check_precision(precision)
    parse_batch_size(batch_size)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1")
    if include_path is not None and not Path(include_path).is_dir():
        raise CptlabError(f"--include-path {include_path}: directory not found")
    local_files, lm_eval_specs = classify_tasks(names)
    local = [read_task(f) for f in local_files]  # every file checked before the model loads
    dup = [t.name for t in local if [u.name for u in local].count(t.name) > 1]
    if dup:
        raise CptlabError(f"--tasks: two task files are both named {dup[0]!r} (set `name:` in a task YAML)")

    m, tok, model_label, tok_label, device = _resolve_model(model, tokenizer, device, precision)
    was_training = getattr(m, "training", False)
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    sample_rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"batch_size": parse_batch_size(batch_size) or "auto", "precision": precision,
                                "limit": limit, "tokenizer": tok_label, "include_path": str(include_path)
                                if include_path else None}
    try:
        if local:
            scorer = ChoiceScorer(m, tok, batch_size=batch_size, precision=precision, device=device)
            settings.update(max_length=scorer.max_length, prefix_token_id=scorer.prefix)
            for task in local:
                res, rows = scorer.evaluate(task, limit=limit)
                results[task.name] = res
                sample_rows += rows
                log(f"{task.name}: {res['n']} items, acc {res['acc']:.4f}, acc_norm {res['acc_norm']:.4f}")
        if lm_eval_specs:
            from cptlab.evaluate.lm_eval_tasks import run_lm_eval

            res, rows, lm_settings = run_lm_eval(m, tok, lm_eval_specs, batch_size=batch_size, precision=precision,
                                                 limit=limit, include_path=include_path,
                                                 log_samples=samples is not None)
            clash = sorted(set(res) & set(results))
            if clash:
                raise CptlabError(f"--tasks: task {clash[0]!r} is both a task file and an lm-eval task")
            results.update(res)
            sample_rows += rows
            settings.update(lm_settings)
    finally:
        if was_training:
            m.train()
    seconds = time.perf_counter() - t0
    settings["device"] = str(next(m.parameters()).device)
    settings["seconds"] = round(seconds, 3)
    if samples is not None:
        write_samples(samples, sample_rows)
        settings["samples"] = str(samples)
    return TasksResult(model_label, results, settings, sample_rows, seconds)


def write_samples(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """One JSON line per item (task, index, line, gold, pred, pred_norm, acc, acc_norm, loglikelihoods)."""
    from cptlab.fsutil import atomic_write_text

    text = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return Path(path)
