"""The results database of a study: `DIR/results.sqlite` (stdlib sqlite3, WAL mode, versioned schema).

Tables:
  runs         name, kind, role, axes + config (JSON), hash, status (pending|running|done|failed), claimed_by
               (host:pid), claimant start time, heartbeat, started/ended (unix s), attempts, error (one line)
  steps        per run and step: kind, result (JSON), started/ended
  metrics      per run, step name and training step: key -> value (from metrics.jsonl)
  evaluations  per run, step, model label, domain, split: the perplexity numbers (+ extra JSON, token-loss file)
  diagnostics  per run and step: kind -> result JSON
  artifacts    per run and step: kind -> path (relative to the study dir), e.g. per-token parquet files
  task_results per run, step, model label, task, metric (acc, acc_norm, ...): value, stderr, n (+ extra JSON:
               source, file, settings); from `cptlab eval-tasks`' JSON (`StepContext.add_task_results`)

Writes are transactional. A run's results are written in the one transaction that marks it done, so a run
killed mid-way leaves nothing but its claim; a claim whose process is dead (same host: the pid is gone; any
host: no heartbeat for `stale_after` seconds) is taken over and the run redone.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cptlab.errors import CptlabError

DB_NAME = "results.sqlite"
STATUSES = ("pending", "running", "done", "failed")
EVAL_METRICS = ("documents", "tokens", "words", "bytes", "nll_sum", "token_perplexity", "word_perplexity",
                "byte_perplexity", "bits_per_byte")

# Migration i (1-based) takes the schema from version i-1 to i. Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL DEFAULT 0,
        kind TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'run',
        baseline TEXT,
        axes TEXT NOT NULL DEFAULT '{}',
        config TEXT NOT NULL,
        hash TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
        claimed_by TEXT,
        claimant_started REAL,
        heartbeat REAL,
        started REAL,
        ended REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE TABLE steps (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        result TEXT NOT NULL DEFAULT '{}',
        started REAL,
        ended REAL,
        PRIMARY KEY (run, name)
    );
    CREATE TABLE metrics (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        step_name TEXT NOT NULL,
        step INTEGER NOT NULL,
        key TEXT NOT NULL,
        value REAL,
        PRIMARY KEY (run, step_name, step, key)
    );
    CREATE TABLE evaluations (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        step_name TEXT NOT NULL,
        model TEXT NOT NULL,
        domain TEXT NOT NULL,
        split TEXT NOT NULL,
        documents INTEGER, tokens INTEGER, words INTEGER, bytes INTEGER,
        nll_sum REAL, token_perplexity REAL, word_perplexity REAL, byte_perplexity REAL, bits_per_byte REAL,
        extra TEXT NOT NULL DEFAULT '{}',
        token_losses TEXT,
        PRIMARY KEY (run, step_name, model, domain, split)
    );
    CREATE TABLE diagnostics (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        step_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        result TEXT NOT NULL,
        PRIMARY KEY (run, step_name, kind)
    );
    CREATE TABLE artifacts (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        step_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (run, step_name, kind, path)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX metrics_run ON metrics (run, step_name, key);
    CREATE INDEX evaluations_run ON evaluations (run, domain);
    """,
    # 2: downstream task accuracy (cptlab eval-tasks / the eval-tasks step): one row per metric of a task
    """
    CREATE TABLE task_results (
        run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
        step_name TEXT NOT NULL,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        stderr REAL,
        n INTEGER,
        extra TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (run, step_name, model, task, metric)
    );
    CREATE INDEX task_results_task ON task_results (task, metric);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
RESULT_TABLES = ("steps", "metrics", "evaluations", "diagnostics", "artifacts", "task_results")


@dataclass
class RunRecord:
    """Everything a run produced, committed in one transaction when the run ends. Plain data (picklable)."""

    steps: list[dict[str, Any]] = field(default_factory=list)  # name, kind, result, started, ended
    metrics: list[tuple[str, int, str, float | None]] = field(default_factory=list)  # step_name, step, key, value
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[tuple[str, str, Any]] = field(default_factory=list)  # step_name, kind, result
    artifacts: list[tuple[str, str, str]] = field(default_factory=list)  # step_name, kind, relative path
    # step_name, model, task, metric, value, stderr, n, extra (dict)
    task_results: list[tuple[str, str, str, str, float | None, float | None, int | None, dict]] = \
        field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    run: str
    claimed_by: str
    claimant_started: float


def this_claimant() -> tuple[str, float]:
    """`host:pid` of this process and its start time (so that a reused pid is not taken for the claimant)."""
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}", psutil.Process().create_time()


def claimant_alive(claimed_by: str | None, claimant_started: float | None, heartbeat: float | None,
                   stale_after: float, now: float | None = None) -> bool:
    """Same host: the pid exists, is not a zombie and started when the claim says. Else: a recent heartbeat."""
    import psutil

    if not claimed_by:
        return False
    now = time.time() if now is None else now
    host, _, pid = claimed_by.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            proc = psutil.Process(int(pid))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return claimant_started is None or abs(proc.create_time() - claimant_started) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    return heartbeat is not None and now - heartbeat < stale_after


def _clean(value: Any) -> Any:
    """NaN/inf are stored as NULL in number columns (SQLite has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Store:
    """One connection to a study's database. Use one Store per thread/process."""

    def __init__(self, path: str | Path, create: bool = True, timeout: float = 60.0):
        path = Path(path)
        if path.is_dir() or path.suffix != ".sqlite":
            path = path / DB_NAME
        if not create and not path.is_file():
            raise CptlabError(f"{path.parent}: not a study directory (no {DB_NAME}); run `cptlab study run` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA synchronous = FULL")
        self._retry(lambda: self.conn.execute("PRAGMA journal_mode = WAL"))
        try:
            self.migrate()
        except BaseException:
            self.conn.close()
            raise

    # -- plumbing

    def _retry(self, fn, attempts: int = 100):
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or i == attempts - 1:
                    raise
                time.sleep(0.05)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: takes the write lock at once, so read-then-write decisions (claims) are atomic."""
        self._retry(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        if row is None:
            return 0
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> None:
        """Apply the migrations this database lacks, all in one transaction (a failed one changes nothing)."""
        latest = len(MIGRATIONS)
        if self.schema_version() == latest:
            return
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = self.schema_version()
            if version > latest:
                raise CptlabError(f"{self.path}: schema version {version} is newer than this cptlab's "
                                  f"({latest}); upgrade cptlab")
            for i in range(version, latest):
                for statement in MIGRATIONS[i].split(";"):
                    if statement.strip():
                        try:
                            c.execute(statement)
                        except sqlite3.Error as e:
                            raise CptlabError(f"{self.path}: migrating the results schema from version {version} "
                                              f"to {latest} failed at migration {i + 1} ({e}); the database is "
                                              f"unchanged") from None
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version (version) VALUES (?)", (latest,))

    # -- meta

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- runs

    def sync_runs(self, runs: list, stale_after: float) -> dict[str, str]:
        """Insert new runs as pending; a run whose config hash changed goes back to pending with its results
        deleted (unless a live process is running it). Returns {name: what happened}."""
        actions: dict[str, str] = {}
        with self.transaction() as c:
            for run in runs:
                config = json.dumps(run.config, sort_keys=True, default=str)
                row = c.execute("SELECT hash, status, claimed_by, claimant_started, heartbeat FROM runs "
                                "WHERE name = ?", (run.name,)).fetchone()
                if row is None:
                    c.execute("INSERT INTO runs (name, position, kind, role, baseline, axes, config, hash) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (run.name, run.order, run.kind, run.role, run.baseline,
                               json.dumps(run.axes, default=str), config, run.hash))
                    actions[run.name] = "new"
                elif row["hash"] != run.hash:
                    if row["status"] == "running" and claimant_alive(row["claimed_by"], row["claimant_started"],
                                                                     row["heartbeat"], stale_after):
                        actions[run.name] = "changed-but-running"
                        continue
                    for table in RESULT_TABLES:
                        c.execute(f"DELETE FROM {table} WHERE run = ?", (run.name,))
                    c.execute("UPDATE runs SET position=?, kind=?, role=?, baseline=?, axes=?, config=?, hash=?, "
                              "status='pending', claimed_by=NULL, claimant_started=NULL, heartbeat=NULL, "
                              "started=NULL, ended=NULL, attempts=0, error=NULL WHERE name=?",
                              (run.order, run.kind, run.role, run.baseline, json.dumps(run.axes, default=str),
                               config, run.hash, run.name))
                    actions[run.name] = "changed"
                else:
                    c.execute("UPDATE runs SET position = ? WHERE name = ?", (run.order, run.name))
                    actions[run.name] = row["status"]
        return actions

    def prune(self, keep: set[str]) -> list[str]:
        with self.transaction() as c:
            gone = [r[0] for r in c.execute("SELECT name FROM runs") if r[0] not in keep]
            for name in gone:
                c.execute("DELETE FROM runs WHERE name = ?", (name,))
        return gone

    def claim(self, name: str, run_hash: str, stale_after: float, retry_failed_before: float | None = None,
              claimant: tuple[str, float] | None = None) -> Claim | None:
        """Atomically take a run: pending; or running with a dead claimant; or failed before the given time
        (a new `study run` retries earlier failures, never one that failed during its own lifetime)."""
        who, born = claimant or this_claimant()
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT status, hash, claimed_by, claimant_started, heartbeat, ended FROM runs "
                            "WHERE name = ?", (name,)).fetchone()
            if row is None or row["hash"] != run_hash:
                return None
            status = row["status"]
            ok = status == "pending"
            if status == "running" and row["claimed_by"] != who:
                ok = not claimant_alive(row["claimed_by"], row["claimant_started"], row["heartbeat"], stale_after,
                                        now)
            if status == "failed" and retry_failed_before is not None:
                ok = (row["ended"] or 0) < retry_failed_before
            if not ok:
                return None
            cur = c.execute(
                "UPDATE runs SET status='running', claimed_by=?, claimant_started=?, heartbeat=?, started=?, "
                "ended=NULL, error=NULL, attempts=attempts+1 WHERE name=? AND status=? AND hash=? "
                "AND coalesce(claimed_by, '') = ?",
                (who, born, now, now, name, status, run_hash, row["claimed_by"] or ""))
            if cur.rowcount != 1:
                return None
        return Claim(name, who, born)

    def heartbeat(self, claim: Claim) -> bool:
        cur = self._retry(lambda: self.conn.execute(
            "UPDATE runs SET heartbeat = ? WHERE name = ? AND claimed_by = ? AND status = 'running'",
            (time.time(), claim.run, claim.claimed_by)))
        return cur.rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give a claimed run back (interrupted by the user): pending again, no results."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='pending', claimed_by=NULL, claimant_started=NULL, heartbeat=NULL, "
                      "started=NULL WHERE name=? AND claimed_by=? AND status='running'",
                      (claim.run, claim.claimed_by))

    def finish(self, claim: Claim, record: RunRecord, started: float | None = None) -> bool:
        """Record a run's results and mark it done, in one transaction. False if the claim was lost."""
        with self.transaction() as c:
            cur = c.execute("UPDATE runs SET status='done', ended=?, heartbeat=?, error=NULL "
                            "WHERE name=? AND claimed_by=? AND status='running'",
                            (time.time(), time.time(), claim.run, claim.claimed_by))
            if cur.rowcount != 1:
                return False
            if started is not None:
                c.execute("UPDATE runs SET started = ? WHERE name = ?", (started, claim.run))
            self._write_record(c, claim.run, record)
        return True

    def fail(self, claim: Claim, error: str) -> bool:
        with self.transaction() as c:
            for table in RESULT_TABLES:
                c.execute(f"DELETE FROM {table} WHERE run = ?", (claim.run,))
            cur = c.execute("UPDATE runs SET status='failed', ended=?, error=? "
                            "WHERE name=? AND claimed_by=? AND status='running'",
                            (time.time(), error, claim.run, claim.claimed_by))
            return cur.rowcount == 1

    @staticmethod
    def _write_record(c: sqlite3.Connection, run: str, record: RunRecord) -> None:
        for table in RESULT_TABLES:
            c.execute(f"DELETE FROM {table} WHERE run = ?", (run,))
        for i, s in enumerate(record.steps):
            c.execute("INSERT INTO steps (run, position, name, kind, result, started, ended) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (run, i, s["name"], s["kind"], json.dumps(s.get("result") or {}, sort_keys=True, default=str),
                       s.get("started"), s.get("ended")))
        c.executemany("INSERT OR REPLACE INTO metrics (run, step_name, step, key, value) VALUES (?, ?, ?, ?, ?)",
                      [(run, sn, int(st), k, _clean(v)) for sn, st, k, v in record.metrics])
        for e in record.evaluations:
            c.execute(
                "INSERT OR REPLACE INTO evaluations (run, step_name, model, domain, split, "
                + ", ".join(EVAL_METRICS) + ", extra, token_losses) VALUES (?, ?, ?, ?, ?, "
                + ", ".join("?" for _ in EVAL_METRICS) + ", ?, ?)",
                (run, e["step_name"], e["model"], e["domain"], e["split"],
                 *(_clean(e.get(m)) for m in EVAL_METRICS),
                 json.dumps(e.get("extra") or {}, sort_keys=True, default=str), e.get("token_losses")))
        c.executemany("INSERT OR REPLACE INTO diagnostics (run, step_name, kind, result) VALUES (?, ?, ?, ?)",
                      [(run, sn, k, json.dumps(r, sort_keys=True, default=str)) for sn, k, r in record.diagnostics])
        c.executemany("INSERT OR REPLACE INTO artifacts (run, step_name, kind, path) VALUES (?, ?, ?, ?)",
                      [(run, sn, k, p) for sn, k, p in record.artifacts])
        c.executemany("INSERT OR REPLACE INTO task_results (run, step_name, model, task, metric, value, stderr, n, "
                      "extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [(run, sn, mo, t, me, _clean(v), _clean(se), n, json.dumps(x or {}, sort_keys=True, default=str))
                       for sn, mo, t, me, v, se, n, x in getattr(record, "task_results", [])])

    # -- reading

    def runs(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM runs ORDER BY position, name").fetchall()

    def run(self, name: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for status, n in self.conn.execute("SELECT status, count(*) FROM runs GROUP BY status"):
            out[status] = n
        return out


def read_task_results(study: str | Path, task: str | None = None, metric: str | None = None) -> list[dict[str, Any]]:
    """Task accuracy rows of a study (dir or results.sqlite) with each run's status, kind, role and axes:
    [{run, status, kind, role, axes, step_name, model, task, metric, value, stderr, n, extra}], ordered by run
    position, step, model, task, metric; optionally only one task and/or metric."""
    where, args = [], []
    if task is not None:
        where.append("t.task = ?")
        args.append(task)
    if metric is not None:
        where.append("t.metric = ?")
        args.append(metric)
    sql = ("SELECT t.*, r.status, r.kind, r.role, r.axes FROM task_results t JOIN runs r ON r.name = t.run"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY r.position, t.run, t.step_name, t.model, t.task, t.metric")
    with Store(study, create=False) as store:
        rows = store.conn.execute(sql, args).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["axes"] = json.loads(d["axes"] or "{}")
        d["extra"] = json.loads(d["extra"] or "{}")
        out.append(d)
    return out


def to_dataframes(study: str | Path) -> dict[str, "pandas.DataFrame"]:  # noqa: F821
    """Every table of a study's database as a pandas DataFrame (runs get one `axis.<name>` column per axis)."""
    import pandas as pd

    with Store(study, create=False) as store:
        frames = {}
        for table in ("runs", *RESULT_TABLES, "meta"):
            frames[table] = pd.read_sql_query(f"SELECT * FROM {table}", store.conn)
    runs = frames["runs"]
    if len(runs):
        axes = pd.json_normalize([json.loads(a) for a in runs["axes"]]).add_prefix("axis.")
        frames["runs"] = pd.concat([runs.reset_index(drop=True), axes], axis=1).sort_values(["position", "name"]) \
            .reset_index(drop=True)
    return frames


def export_csv(study: str | Path, out_dir: str | Path) -> list[Path]:
    from cptlab.fsutil import atomic_write_text

    out_dir = Path(out_dir)
    written = []
    for table, df in to_dataframes(study).items():
        path = out_dir / f"{table}.csv"
        atomic_write_text(path, df.to_csv(index=False))
        written.append(path)
    return written
