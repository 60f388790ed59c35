"""Exact resume after a real SIGKILL: same per-step losses, same data, bit-identical final parameters (fp32 CPU)."""

from __future__ import annotations

import random
import signal

import pytest

from cptlab.train import run
from cptlab.train.checkpoint import list_checkpoints
from tests.train.conftest import final_tensors, run_subprocess, train_records


def assert_same_run(ref_dir, out_dir):
    ref, got = train_records(ref_dir), train_records(out_dir)
    assert [r["step"] for r in got] == list(range(1, len(ref) + 1)), "steps missing or repeated after resume"
    for a, b in zip(ref, got):
        assert b["loss"] == a["loss"], f"step {a['step']}: loss {b['loss']} != {a['loss']}"
        assert b["tokens"] == a["tokens"] and b["tokens_by_source"] == a["tokens_by_source"]
        assert b["lr"] == a["lr"] and b["grad_norm"] == a["grad_norm"]
        assert b["windows"] == a["windows"], f"step {a['step']}: different sequences"
    ta, tb = final_tensors(ref_dir), final_tensors(out_dir)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert (ta[k] == tb[k]).all(), f"{k} differs"


def assert_each_window_once_per_epoch(records, num_windows: dict):
    """Token accounting: within every epoch of a source each window is trained on exactly once."""
    seen: dict[tuple[str, int], list[int]] = {}
    for r in records:
        for src, epoch, k in r["windows"]:
            seen.setdefault((src, epoch), []).append(k)
    for (src, epoch), ks in seen.items():
        assert len(ks) == len(set(ks)), f"{src} epoch {epoch}: a window repeated"
        complete = any(e > epoch for s, e in seen if s == src)
        if complete:
            assert sorted(ks) == list(range(num_windows[src])), f"{src} epoch {epoch}: windows skipped"
    total = sum(len(ks) for ks in seen.values())
    assert total * 64 == records[-1]["tokens"] == sum(records[-1]["tokens_by_source"].values())


@pytest.fixture
def reference(base_config, monkeypatch):
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")

    def make(**over):
        cfg = base_config("reference", **over)
        run(cfg)
        return cfg["out_dir"]

    return make


def test_resume_after_sigkill_is_exact(base_config, reference, monkeypatch):
    over = dict(max_steps=16, checkpoint__interval=4)
    ref = reference(**over)
    kill_at = random.Random().randint(5, 14)
    cfg = base_config("killed", **over)
    proc = run_subprocess(cfg, CPTLAB_TEST_KILL_AT_STEP=kill_at, CPTLAB_TEST_RECORD_WINDOWS=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert train_records(cfg["out_dir"])[-1]["step"] == kill_at  # the killed run got past its last checkpoint
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")
    result = run(cfg, ["resume=true"])
    assert result.steps == 16 and result.tokens == 16 * 8 * 64
    assert_same_run(ref, cfg["out_dir"])


def test_resume_twice_with_accumulation_across_epoch_end(base_config, reference, train_cache, monkeypatch):
    """grad_accum 2; killed twice; the second resume starts before the end of prose's first epoch (step 26)."""
    from cptlab.tokens.packing import PackedSource
    from cptlab.tokens.token_cache import open_tokens

    over = dict(max_steps=30, grad_accum=2, checkpoint__interval=5)
    ref = reference(**over)
    windows = {d: PackedSource(open_tokens(train_cache, d, "train"), 64).num_windows for d in ("code", "prose")}
    epoch_end = windows["prose"] // 4 + 1  # 4 prose sequences per step
    assert 25 < epoch_end <= 30, windows
    cfg = base_config("killed", **over)
    rng = random.Random()
    for kill_at in (rng.randint(6, 14), rng.randint(epoch_end, 29)):
        proc = run_subprocess(cfg, CPTLAB_TEST_KILL_AT_STEP=kill_at, CPTLAB_TEST_RECORD_WINDOWS=1)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        cfg["resume"] = True
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")
    run(cfg)
    assert_same_run(ref, cfg["out_dir"])
    records = train_records(cfg["out_dir"])
    assert records[-1]["epochs_by_source"]["prose"] > 1.0
    assert_each_window_once_per_epoch(records, windows)


def test_kill_during_checkpoint_save_resumes_previous(base_config, reference, monkeypatch):
    over = dict(max_steps=10, checkpoint__interval=4)
    ref = reference(**over)
    cfg = base_config("killed", **over)
    proc = run_subprocess(cfg, CPTLAB_TEST_KILL_IN_SAVE=8, CPTLAB_TEST_RECORD_WINDOWS=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    root = cfg["out_dir"] + "/checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [4]
    leftovers = [p.name for p in __import__("pathlib").Path(root).iterdir()]
    assert "step-00000008.tmp" in leftovers  # the interrupted save, never mistaken for a checkpoint
    from cptlab.model import load_model

    load_model(root + "/step-00000004/model")  # the previous checkpoint still loads
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")
    run(cfg, ["resume=true"])
    assert [s for s, _ in list_checkpoints(root)] == [4, 8, 10]
    assert_same_run(ref, cfg["out_dir"])


def test_resume_of_finished_run_is_noop_and_new_run_refuses_existing_dir(base_config):
    from cptlab.errors import CptlabError

    cfg = base_config(max_steps=3)
    first = run(cfg)
    again = run(cfg, ["resume=true"])
    assert (again.steps, again.tokens, again.last_loss) == (first.steps, first.tokens, first.last_loss)
    assert len(train_records(cfg["out_dir"])) == 3
    with pytest.raises(CptlabError, match="already holds a run"):
        run(cfg)
