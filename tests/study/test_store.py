"""Results store: schema migration, atomic claims, stale-claim takeover, transactional results."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from cptlab.errors import CptlabError
from cptlab.study.spec import RunSpec
from cptlab.study.store import MIGRATIONS, SCHEMA_VERSION, RunRecord, Store


def make_runs(n=3):
    return [RunSpec(name=f"r{i}", kind="grid", role="run", axes={"i": i}, steps=[{"kind": "toy", "name": "toy"}],
                    order=i) for i in range(n)]


def test_new_database_is_wal_and_versioned(tmp_path):
    with Store(tmp_path) as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    with pytest.raises(CptlabError, match="not a study directory"):
        Store(tmp_path / "nothing", create=False)


def test_a_newer_schema_is_refused(tmp_path):
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(CptlabError, match="newer than this cptlab's"):
        Store(tmp_path)


def test_an_older_database_is_migrated_in_place_and_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    from cptlab.study import store as store_mod

    runs = make_runs(2)
    with Store(tmp_path) as s:  # a study written by the current schema (version 1 ... SCHEMA_VERSION)
        s.sync_runs(runs, 60)
        s.finish(s.claim("r0", runs[0].hash, 60), RunRecord(metrics=[("toy", 1, "loss", 2.5)]))
    # A later cptlab adds a migration: the old database is upgraded when opened, its rows kept.
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT DEFAULT 'n/a';"
                                                              "CREATE INDEX runs_status ON runs (status)"])
    with Store(tmp_path) as s:
        assert s.schema_version() == SCHEMA_VERSION + 1
        assert [(r["name"], r["status"], r["note"]) for r in s.runs()] == [("r0", "done", "n/a"),
                                                                          ("r1", "pending", "n/a")]
        assert tuple(s.conn.execute("SELECT step, value FROM metrics").fetchone()) == (1, 2.5)
        assert s.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_status'").fetchone() is not None
    # A migration that fails half-way rolls back whole: same version, same tables.
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, "CREATE TABLE extra (x INTEGER);"
                                                                         "ALTER TABLE nowhere ADD COLUMN y INTEGER"])
    v = SCHEMA_VERSION + 1
    with pytest.raises(CptlabError, match=f"from version {v} to {v + 1} failed at migration {v + 1} .*nowhere.*"
                                          f"unchanged"):
        Store(tmp_path)
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION + 1,)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()


def test_claims_are_exclusive_and_results_commit_with_done(tmp_path):
    runs = make_runs()
    with Store(tmp_path) as a, Store(tmp_path) as b:
        assert a.sync_runs(runs, 60) == {"r0": "new", "r1": "new", "r2": "new"}
        me = (f"{socket.gethostname()}:{__import__('os').getpid()}", None)
        ca = a.claim("r0", runs[0].hash, 60, claimant=me)
        assert ca is not None
        assert b.claim("r0", runs[0].hash, 60) is None  # running, and the claimant (this process) is alive
        assert a.claim("r1", "wrong-hash", 60) is None
        rec = RunRecord(steps=[{"name": "toy", "kind": "toy", "result": {"v": 1}}],
                        metrics=[("toy", 1, "loss", 2.0), ("toy", 2, "loss", float("nan"))],
                        evaluations=[{"step_name": "toy", "model": "m", "domain": "d", "split": "test",
                                      "token_perplexity": 3.0, "tokens": 10}])
        assert a.finish(ca, rec)
        assert a.counts()["done"] == 1
        vals = a.conn.execute("SELECT step, value FROM metrics WHERE run='r0' ORDER BY step").fetchall()
        assert [tuple(v) for v in vals] == [(1, 2.0), (2, None)]
        assert not a.finish(ca, rec)  # done: the claim is over
        assert b.claim("r0", runs[0].hash, 60) is None  # done runs are never claimed again


def test_a_dead_claimants_run_is_taken_over(tmp_path):
    runs = make_runs(1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(tmp_path) as s:
        s.sync_runs(runs, 60)
        c = s.claim("r0", runs[0].hash, 60, claimant=(f"{socket.gethostname()}:{dead.pid}", time.time()))
        assert c is not None and s.run("r0")["status"] == "running"
        c2 = s.claim("r0", runs[0].hash, 60)
        assert c2 is not None and s.run("r0")["attempts"] == 2 and c2.claimed_by != c.claimed_by
        assert not s.finish(c, RunRecord())  # the old claimant lost its claim


def test_other_hosts_claims_expire_without_heartbeat(tmp_path):
    runs = make_runs(1)
    with Store(tmp_path) as s:
        s.sync_runs(runs, 60)
        other = s.claim("r0", runs[0].hash, 60, claimant=("elsewhere:123", 0.0))
        assert s.claim("r0", runs[0].hash, stale_after=60) is None  # fresh heartbeat
        assert s.heartbeat(other)
        s.conn.execute("UPDATE runs SET heartbeat = ? WHERE name='r0'", (time.time() - 61,))
        assert s.claim("r0", runs[0].hash, stale_after=60) is not None


def test_changed_hash_resets_only_that_run_and_deletes_its_results(tmp_path):
    runs = make_runs(2)
    with Store(tmp_path) as s:
        s.sync_runs(runs, 60)
        for r in runs:
            c = s.claim(r.name, r.hash, 60)
            s.finish(c, RunRecord(metrics=[("toy", 0, "loss", 1.0)]))
        runs[1].steps = [{"kind": "toy", "name": "toy", "scale": 2}]
        assert s.sync_runs(runs, 60) == {"r0": "done", "r1": "changed"}
        assert [r["status"] for r in s.runs()] == ["done", "pending"]
        assert [tuple(r) for r in s.conn.execute("SELECT run FROM metrics")] == [("r0",)]
        assert s.prune({"r1"}) == ["r0"] and tuple(s.conn.execute("SELECT count(*) FROM metrics").fetchone()) == (0,)


def test_failed_runs_are_retried_by_a_later_invocation_only(tmp_path):
    runs = make_runs(1)
    with Store(tmp_path) as s:
        s.sync_runs(runs, 60)
        c = s.claim("r0", runs[0].hash, 60)
        assert s.fail(c, "boom")
        assert s.claim("r0", runs[0].hash, 60, retry_failed_before=time.time() - 10) is None
        assert s.claim("r0", runs[0].hash, 60, retry_failed_before=time.time() + 1) is not None
