"""Data points of the mixture law: (N, D, r, loss) from a CSV, from arrays, or from a study's results database.

r is always the **domain** ratio (the fraction of continued-pretraining tokens drawn from the domain corpus); N is
the model's parameter count; D the number of continued-pretraining tokens (domain and general together). A point
with D = 0 (the base model before training) is not a point of the law.

Optional per-point columns `k1`, `k2` feed the cross-domain form (`mixlaw_fit`): k1 is the domain's validation
loss before continued pretraining, k2 its early rate of loss decline (`domain_coefficients`).

`points_from_study` reads a `mixture-grid` study's results database: each finished run's domain ratio (from its
config's meta) and the validation losses its train step recorded during training (see the section below).
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError

REQUIRED_COLUMNS = ("N", "D", "r", "loss")
TARGET_KEYS = {"general": "general_loss", "domain": "domain_loss"}


@dataclass
class Points:
    N: np.ndarray
    D: np.ndarray
    r: np.ndarray  # domain ratio
    loss: np.ndarray
    where: list[str] = field(default_factory=list)  # "file:line" (or "point i") of each point, for messages
    source: str = "points"
    k1: np.ndarray | None = None  # cross-domain coefficients (optional, per point)
    k2: np.ndarray | None = None
    group: list[str] = field(default_factory=list)  # run name / domain of each point (plots), may be empty

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def has_k(self) -> bool:
        return self.k1 is not None and self.k2 is not None

    def subset(self, keep: np.ndarray) -> "Points":
        idx = np.flatnonzero(keep)
        pick = (lambda a: None if a is None else a[idx])
        return Points(self.N[idx], self.D[idx], self.r[idx], self.loss[idx], [self.where[i] for i in idx],
                      self.source, pick(self.k1), pick(self.k2),
                      [self.group[i] for i in idx] if self.group else [])


def make_points(N, D, r, loss, source: str = "points", where: list[str] | None = None, k1=None, k2=None,
                group: list[str] | None = None) -> Points:
    """Points from arrays (broadcast), validated like a CSV (errors name the point index)."""
    arrays = [np.asarray(v, dtype=np.float64) for v in (N, D, r, loss)]
    has_k = k1 is not None or k2 is not None
    if has_k:
        if k1 is None or k2 is None:
            raise CptlabError(f"{source}: the cross-domain coefficients need both k1 and k2")
        arrays += [np.asarray(k1, dtype=np.float64), np.asarray(k2, dtype=np.float64)]
    arrays = [a.ravel().copy() for a in np.broadcast_arrays(*arrays)]
    n = arrays[3].size
    where = where or [f"{source}: point {i}" for i in range(n)]
    pts = Points(*arrays[:4], where=where, source=source, k1=arrays[4] if has_k else None,
                 k2=arrays[5] if has_k else None, group=list(group or []))
    validate_points(pts)
    return pts


def validate_points(p: Points) -> None:
    """Every value finite; N, D, loss > 0; r in [0, 1]; k1 > 0 and k2 >= 0. Errors name the point's origin."""
    if len(p) == 0:
        raise CptlabError(f"{p.source}: no points")
    cols = {"N": p.N, "D": p.D, "r": p.r, "loss": p.loss}
    if p.has_k:
        cols.update(k1=p.k1, k2=p.k2)
    for name, col in cols.items():
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            i = int(bad[0])
            raise CptlabError(f"{p.where[i]}: column {name} is {col[i]}; every value must be a finite number")
    for name in ("N", "D", "loss", "k1"):
        if name not in cols:
            continue
        bad = np.flatnonzero(cols[name] <= 0)
        if bad.size:
            i = int(bad[0])
            hint = (" (D counts continued-pretraining tokens; the base model before any training is not a point "
                    "of the law)") if name == "D" else ""
            raise CptlabError(f"{p.where[i]}: column {name} = {cols[name][i]:g} must be > 0{hint}")
    bad = np.flatnonzero((p.r < 0) | (p.r > 1))
    if bad.size:
        i = int(bad[0])
        raise CptlabError(f"{p.where[i]}: column r = {p.r[i]:g} is outside [0, 1] (r is the domain ratio)")
    if p.has_k:
        bad = np.flatnonzero(p.k2 < 0)
        if bad.size:
            i = int(bad[0])
            raise CptlabError(f"{p.where[i]}: column k2 = {p.k2[i]:g} must be >= 0 (a rate of loss decline)")


def load_points(path: str | Path, need_k: bool = False) -> Points:
    """Points from a CSV whose header names at least N, D, r, loss (and k1, k2 when `need_k`; extra columns
    are ignored, except `domain`/`run`, kept to group points in plots)."""
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: file not found")
    required = REQUIRED_COLUMNS + (("k1", "k2") if need_k else ())
    cols: dict[str, list[float]] = {c: [] for c in required}
    where: list[str] = []
    group: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise CptlabError(f"{path}: empty file (expected a header N,D,r,loss)")
            names = [h.strip() for h in header]
            missing = [c for c in required if c not in names]
            if missing:
                raise CptlabError(f"{path}:1: header {','.join(names)} lacks column(s) {', '.join(missing)} "
                                  f"(expected {','.join(required)}; r is the domain ratio)")
            pos = {c: names.index(c) for c in required}
            gcol = next((names.index(c) for c in ("domain", "run") if c in names), None)
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise CptlabError(f"{path}:{line}: {len(row)} fields, the header has {len(names)}")
                for c in required:
                    text = row[pos[c]].strip()
                    try:
                        cols[c].append(float(text))
                    except ValueError:
                        raise CptlabError(f"{path}:{line}: column {c} is {text!r}, not a number") from None
                where.append(f"{path}:{line}")
                if gcol is not None:
                    group.append(row[gcol].strip())
    except UnicodeDecodeError as e:
        raise CptlabError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise CptlabError(f"{path}: not a readable CSV ({e})") from None
    if not where:
        raise CptlabError(f"{path}: no data rows after the header")
    arr = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    pts = Points(arr["N"], arr["D"], arr["r"], arr["loss"], where=where, source=str(path),
                 k1=arr.get("k1"), k2=arr.get("k2"), group=group)
    validate_points(pts)
    return pts


def write_points_csv(pts: Points, path: str | Path) -> None:
    from cptlab.fsutil import atomic_write_text

    header = list(REQUIRED_COLUMNS) + (["k1", "k2"] if pts.has_k else []) + (["run"] if pts.group else [])
    lines = [",".join(header)]
    for i in range(len(pts)):
        vals = [pts.N[i], pts.D[i], pts.r[i], pts.loss[i]] + ([pts.k1[i], pts.k2[i]] if pts.has_k else [])
        lines.append(",".join([repr(float(v)) for v in vals] + ([pts.group[i]] if pts.group else [])))
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# From training metrics and from a study.

def domain_coefficients(tokens, losses, early_tokens: float | None = None) -> tuple[float, float]:
    """(k1, k2) of a domain from its validation-loss curve (tokens ascending, tokens[0] = 0 the base model):
    k1 = the loss before training; k2 = the relative loss decline per million tokens over the early part of the
    run (up to `early_tokens`, default: the first evaluation after the start), (k1 − L(t)) / k1 / (t / 1e6)."""
    t = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if t.size < 2 or t[0] != 0:
        raise CptlabError("cross-domain coefficients need the loss before training (tokens 0) and one later point")
    k1 = float(y[0])
    idx = 1 if early_tokens is None else max(1, int(np.searchsorted(t, early_tokens, side="right")) - 1)
    k2 = max(0.0, (k1 - float(y[idx])) / k1 / (t[idx] / 1e6))
    return k1, k2


def _points_by_step(step_tokens: dict[int, float], evals: dict[int, dict[str, float]], domain: str,
                    general: list[str], where: str) -> list[dict]:
    """Per evaluated step: {step, tokens (training tokens so far), general_loss, domain_loss}."""
    seen = sorted({d for v in evals.values() for d in v})
    for name in [domain, *general]:
        if name not in seen:
            raise CptlabError(f"{where}: no eval records for domain {name!r} (domains evaluated: "
                              f"{', '.join(seen) or 'none'}); list it in the train config's eval.domains")
    known = sorted(step_tokens.items())
    ks = np.array([0.0] + [float(s) for s, _ in known])
    kt = np.array([0.0] + [t for _, t in known])
    out = []
    for step in sorted(evals):
        losses = evals[step]
        if step in step_tokens:
            tokens = step_tokens[step]
        elif step == 0:
            tokens = 0.0  # an evaluation before training: the base model
        elif known and step <= ks[-1]:
            tokens = float(np.interp(step, ks, kt))
        elif known:  # past the last training record: the last tokens per step
            tokens = kt[-1] / ks[-1] * step
        else:
            raise CptlabError(f"{where}: eval at step {step} but no training record gives its tokens")
        g = [losses.get(d) for d in general]
        out.append({"step": step, "tokens": tokens,
                    "general_loss": float(np.mean(g)) if g and all(v is not None for v in g) else None,
                    "domain_loss": losses.get(domain)})
    return out


def points_from_metrics(metrics_path: str | Path, domain: str, general: list[str], split: str = "valid"
                        ) -> list[dict]:
    """Per evaluation of a trainer's metrics.jsonl: {step, tokens, general_loss, domain_loss}.

    Training records carry `step` and `tokens` (cumulative training tokens); eval records `step`, `split`,
    `domain`, `loss` (their `tokens` is the number of tokens evaluated, not trained, and is not used). The general
    loss is the mean over the `general` domains. A torn line (a killed writer) is skipped."""
    path = Path(metrics_path)
    if not path.is_file():
        raise CptlabError(f"{path}: metrics file not found")
    step_tokens: dict[int, float] = {}
    evals: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        step = int(row["step"])
        if isinstance(row.get("domain"), str):
            if str(row.get("split")) == split and isinstance(row.get("loss"), (int, float)):
                evals.setdefault(step, {})[row["domain"]] = float(row["loss"])
        elif isinstance(row.get("tokens"), (int, float)):
            step_tokens[step] = float(row["tokens"])
    if not evals:
        raise CptlabError(f"{path}: no eval records of split {split!r} (lines with step, split, domain, loss); "
                          f"set the train config's eval.interval and eval.split")
    return _points_by_step(step_tokens, evals, domain, general, str(path))


# ---------------------------------------------------------------------------------------------------------------
# From a study's results database.
#
# A `mixture-grid` run carries in its config's `meta` (cptlab.study.kind_mixture_grid):
#   {"mixlaw": {"r": 0.33, "domain": "code", "general": ["prose"], "split": "valid", "train_step": "train",
#               "N": 1234567 or null}}
# and its train step records the trainer's metrics.jsonl in the `metrics` table (StepContext.add_metrics_jsonl):
# `tokens` per training step and `<split>_loss/<domain>` per evaluation. N, when the meta has none, is counted
# from the safetensors headers of the train step's `final_dir`.

def study_db_path(study_dir: str | Path) -> Path:
    p = Path(study_dir)
    db = p / "results.sqlite" if p.is_dir() else p
    if not db.is_file():
        raise CptlabError(f"{study_dir}: not a study directory (no results.sqlite)")
    return db


def mixture_runs(conn: sqlite3.Connection, study_dir: str | Path) -> list[dict]:
    """Every finished mixture-grid run: {run, r, N, domain, general, split, points: [...]}, in run order."""
    out = []
    runs = conn.execute("SELECT name, config FROM runs WHERE status = 'done' ORDER BY position, name").fetchall()
    for name, config in runs:
        meta = (json.loads(config).get("meta") or {}).get("mixlaw")
        if not meta:
            continue
        where = f"{study_dir}: run {name}"
        step_name = meta.get("train_step", "train")
        step_tokens, evals = {}, {}
        prefix = f"{meta.get('split', 'valid')}_loss/"
        for step, key, value in conn.execute(
                "SELECT step, key, value FROM metrics WHERE run = ? AND step_name = ? AND (key = 'tokens' OR "
                "key LIKE ?)", (name, step_name, prefix + "%")):
            if value is None or not (key == "tokens" or key.startswith(prefix)):
                continue  # (LIKE's `_` matches any character)
            if key == "tokens":
                step_tokens[int(step)] = float(value)
            else:
                evals.setdefault(int(step), {})[key[len(prefix):]] = float(value)
        if not evals:
            raise CptlabError(f"{where}: step {step_name!r} recorded no {prefix}<domain> metrics (set the train "
                              f"config's eval.interval so that validation loss is measured during training)")
        N = meta.get("N")
        if N is None:
            N = _count_parameters(conn, name, step_name)
        if N is None:
            raise CptlabError(f"{where}: model size unknown (set options.n_params in the study, or keep the "
                              f"trained model dir)")
        points = _points_by_step(step_tokens, evals, meta["domain"], list(meta.get("general") or []), where)
        out.append({"run": name, "r": float(meta["r"]), "N": float(N), "domain": meta["domain"],
                    "general": meta.get("general"), "points": points})
    return out


def _count_parameters(conn: sqlite3.Connection, run: str, step_name: str) -> int | None:
    row = conn.execute("SELECT result FROM steps WHERE run = ? AND name = ?", (run, step_name)).fetchone()
    final_dir = json.loads(row[0]).get("final_dir") if row else None
    if not final_dir:
        return None
    from cptlab.diagnose.checkpoint_series import parameters_in_dir

    return parameters_in_dir(final_dir)


def points_from_runs(runs: list[dict], target: str, source: str) -> Points:
    """Points of one target from `mixture_runs` records (the base model, 0 tokens, is left out)."""
    key = TARGET_KEYS[target]
    cols: dict[str, list[float]] = {c: [] for c in ("N", "D", "r", "loss")}
    where, group = [], []
    for run in runs:
        for p in run["points"]:
            if not p.get("tokens") or p.get(key) is None:
                continue
            for c, v in (("N", run["N"]), ("D", p["tokens"]), ("r", run["r"]), ("loss", p[key])):
                cols[c].append(float(v))
            where.append(f"{source}: run {run['run']}, step {p['step']}")
            group.append(run["run"])
    if not where:
        raise CptlabError(f"{source}: no {target}-loss points in {len(runs)} finished mixture-grid run(s)")
    arr = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    pts = Points(arr["N"], arr["D"], arr["r"], arr["loss"], where, source, group=group)
    validate_points(pts)
    return pts


def read_study_runs(study_dir: str | Path) -> list[dict]:
    db = study_db_path(study_dir)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = mixture_runs(conn, study_dir)
    except sqlite3.DatabaseError as e:
        raise CptlabError(f"{db}: cannot read the results database ({e})") from None
    finally:
        conn.close()
    if not runs:
        raise CptlabError(f"{study_dir}: no finished mixture-grid run (a study of kind mixture-grid records the "
                          f"domain ratio of each run; has `cptlab study run` finished some?)")
    return runs


def points_from_study(study_dir: str | Path, target: str) -> Points:
    """Points (N, D, r, loss) of a mixture-grid study's results database (its finished runs)."""
    return points_from_runs(read_study_runs(study_dir), target, str(study_dir))


def read_points(path: str | Path, target: str, need_k: bool = False) -> Points:
    """A CSV file, or a study directory (its `results.sqlite`)."""
    p = Path(path)
    if p.is_dir():
        if need_k:
            raise CptlabError(f"{path}: the cross-domain law reads k1, k2 from a CSV (columns N,D,r,loss,k1,k2)")
        return points_from_study(p, target)
    return load_points(p, need_k=need_k)
