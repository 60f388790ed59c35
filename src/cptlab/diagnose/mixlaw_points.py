"""Data points of the mixture law: (N, D, r, loss) from a CSV, from arrays, or from a study's results database.

r is always the **domain** ratio (the fraction of continued-pretraining tokens drawn from the domain corpus); N is
the model's parameter count; D the number of continued-pretraining tokens (domain and general together). A point
with D = 0 (the base model before training) is not a point of the law.

Optional per-point columns `k1`, `k2` feed the cross-domain form (`mixlaw_fit`): k1 is the domain's validation
loss before continued pretraining, k2 its early rate of loss decline (`domain_coefficients`).

A `mixture-grid` study records, per run, one diagnostic of kind ``mixlaw-points`` (written by the step kind in
`cptlab.study.kind_mixture_grid`):

    {"r": 0.33, "N": 1.2e6, "domain": "code", "general": ["prose"], "split": "valid", "k1": 6.1, "k2": 0.21,
     "points": [{"step": 10, "tokens": 20480, "general_loss": 5.2, "domain_loss": 4.9}, ...]}

`points_from_study` reads those (runs whose status is ``done``) for the general or the domain loss.
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
DIAGNOSTIC_KIND = "mixlaw-points"
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


def points_from_metrics(metrics_path: str | Path, domain: str, general: list[str], split: str = "valid"
                        ) -> tuple[list[dict], dict]:
    """Per evaluation step of a trainer's metrics.jsonl: {step, tokens, general_loss, domain_loss}.

    Training lines carry `step` and `tokens` (cumulative); eval lines `step`, `split`, `domain`, `loss` (and
    `tokens` when the trainer writes it; otherwise it is read, or interpolated, from the training lines; step 0
    without a training line is the base model, 0 tokens). The general loss is the mean over the `general`
    domains. Returns (points, info) with info counting lines skipped."""
    path = Path(metrics_path)
    if not path.is_file():
        raise CptlabError(f"{path}: metrics file not found")
    step_tokens: dict[int, float] = {}
    evals: dict[int, dict[str, float]] = {}
    eval_tokens: dict[int, float] = {}
    bad_lines = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad_lines += 1
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        step = int(row["step"])
        if "split" in row and "domain" in row:
            if str(row["split"]) != split or row.get("loss") is None:
                continue
            evals.setdefault(step, {})[str(row["domain"])] = float(row["loss"])
            if isinstance(row.get("tokens"), (int, float)):
                eval_tokens[step] = float(row["tokens"])
        elif isinstance(row.get("tokens"), (int, float)):
            step_tokens[step] = float(row["tokens"])
    if not evals:
        raise CptlabError(f"{path}: no eval records of split {split!r} (lines with step, split, domain, loss); "
                          f"set the train config's eval interval and evaluate the {split} split")
    seen = sorted({d for v in evals.values() for d in v})
    for name in [domain, *general]:
        if name not in seen:
            raise CptlabError(f"{path}: no eval records for domain {name!r} (split {split!r}; domains evaluated: "
                              f"{', '.join(seen)})")
    known = sorted(step_tokens.items())
    ks = np.array([0.0] + [float(s) for s, _ in known])
    kt = np.array([0.0] + [t for _, t in known])
    out = []
    for step in sorted(evals):
        losses = evals[step]
        if step in eval_tokens:
            tokens = eval_tokens[step]
        elif step in step_tokens:
            tokens = step_tokens[step]
        elif step == 0:
            tokens = 0.0
        elif len(known):
            if step > ks[-1]:  # past the last training line: extrapolate at the last tokens per step
                tokens = kt[-1] / ks[-1] * step
            else:
                tokens = float(np.interp(step, ks, kt))
        else:
            raise CptlabError(f"{path}: eval at step {step} but no training line gives tokens")
        g = [losses.get(d) for d in general]
        out.append({"step": step, "tokens": tokens,
                    "general_loss": float(np.mean(g)) if all(v is not None for v in g) else None,
                    "domain_loss": losses.get(domain)})
    return out, {"bad_lines": bad_lines}


def study_db_path(study_dir: str | Path) -> Path:
    p = Path(study_dir)
    db = p / "results.sqlite" if p.is_dir() else p
    if not db.is_file():
        raise CptlabError(f"{study_dir}: not a study directory (no results.sqlite)")
    return db


def diagnostics_from_db(conn: sqlite3.Connection) -> list[tuple[str, dict]]:
    """(run name, mixlaw-points result) of every finished run, in run order."""
    rows = conn.execute(
        "SELECT d.run, d.result FROM diagnostics d JOIN runs r ON r.name = d.run "
        "WHERE d.kind = ? AND r.status = 'done' ORDER BY r.position, r.name", (DIAGNOSTIC_KIND,)).fetchall()
    return [(row[0], json.loads(row[1])) for row in rows]


def points_from_diagnostics(diags: list[tuple[str, dict]], target: str, source: str,
                            with_k: bool = False) -> Points:
    key = TARGET_KEYS[target]
    cols: dict[str, list[float]] = {c: [] for c in ("N", "D", "r", "loss", "k1", "k2")}
    where, group = [], []
    for run, d in diags:
        for p in d.get("points") or []:
            if not p.get("tokens") or p.get(key) is None:
                continue  # the base model (0 tokens), or this loss not evaluated at this step
            cols["N"].append(float(d["N"]))
            cols["D"].append(float(p["tokens"]))
            cols["r"].append(float(d["r"]))
            cols["loss"].append(float(p[key]))
            cols["k1"].append(float(d.get("k1") or math.nan))
            cols["k2"].append(float(d.get("k2") or 0.0))
            where.append(f"{source}: run {run}, step {p.get('step')}")
            group.append(run)
    if not where:
        raise CptlabError(f"{source}: no {target}-loss points in the finished runs' {DIAGNOSTIC_KIND} records "
                          f"({len(diags)} run(s) recorded)")
    arr = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    pts = Points(arr["N"], arr["D"], arr["r"], arr["loss"], where, source,
                 k1=arr["k1"] if with_k else None, k2=arr["k2"] if with_k else None, group=group)
    validate_points(pts)
    return pts


def points_from_study(study_dir: str | Path, target: str, with_k: bool = False) -> Points:
    """Points (N, D, r, loss) of a study's results database: the `mixlaw-points` records of its finished runs."""
    db = study_db_path(study_dir)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        try:
            diags = diagnostics_from_db(conn)
        except sqlite3.DatabaseError as e:
            raise CptlabError(f"{db}: cannot read the results database ({e})") from None
    finally:
        conn.close()
    if not diags:
        raise CptlabError(f"{study_dir}: no finished run recorded {DIAGNOSTIC_KIND} (is it a mixture-grid study, "
                          f"and has `cptlab study run` finished some runs?)")
    return points_from_diagnostics(diags, target, str(study_dir), with_k)


def read_points(path: str | Path, target: str, need_k: bool = False) -> Points:
    """A CSV file, or a study directory (its `results.sqlite`)."""
    p = Path(path)
    if p.is_dir():
        return points_from_study(p, target, with_k=need_k)
    return load_points(p, need_k=need_k)
