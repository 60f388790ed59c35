"""Learning-rate schedules at key steps, checkpoint steps from token schedules, and retention."""

from __future__ import annotations



import pytest

from cptlab.train.checkpoint import apply_retention, checkpoint_steps, list_checkpoints
from cptlab.train.schedules import lr_at


def test_warmup_then_constant():
    assert [lr_at(s, 10, 1.0, "constant", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_key_steps():
    lr, total, warm = 3e-3, 300, 30
    f = [lr_at(s, total, lr, "cosine", warm, min_lr_ratio=0.1) for s in range(total)]
    assert f[0] == pytest.approx(lr / warm) and f[warm - 1] == pytest.approx(lr) and f[warm] == pytest.approx(lr)
    mid = warm + (total - 1 - warm) / 2
    assert lr_at(mid, total, lr, "cosine", warm, 0.1) == pytest.approx((lr + 3e-4) / 2)
    assert f[-1] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))


def test_linear_and_wsd():
    assert lr_at(0, 11, 1.0, "linear", 0, 0.0) == 1.0
    assert lr_at(5, 11, 1.0, "linear", 0, 0.0) == pytest.approx(0.5)
    assert lr_at(10, 11, 1.0, "linear", 0, 0.0) == pytest.approx(0.0)
    # wsd: 100 steps, last 20 decay: stable through step 79, then 20 decaying steps down to the min at step 99
    w = [lr_at(s, 100, 1.0, "wsd", 10, 0.0, 0.2) for s in range(100)]
    assert w[9] == 1.0 and w[10] == 1.0 and w[79] == 1.0
    assert w[80] == pytest.approx(1 - 1 / 20) and w[89] == pytest.approx(0.5) and w[99] == pytest.approx(0.0)
    assert sum(x < 1.0 for x in w[10:]) == 20
    # one decay step (4 steps x 0.25): the last step is at the minimum; min_lr_ratio respected
    assert [lr_at(s, 4, 2.0, "wsd", 0, 0.1, 0.25) for s in range(4)] == [2.0, 2.0, 2.0, pytest.approx(0.2)]


def test_rewarm_switch():
    from cptlab.train.config import ScheduleConfig
    from cptlab.train.schedules import schedule_fn

    cfg = ScheduleConfig(kind="cosine", warmup_steps=4)
    assert schedule_fn(cfg, 20, 1.0)(0) == 0.25
    assert schedule_fn(cfg, 20, 1.0, warmup=False)(0) == 1.0


def test_log_spaced_and_token_checkpoints():
    steps, pinned = checkpoint_steps(total_steps=1000, tokens_per_step=100, interval=None, at_tokens=[250, 100_000],
                                     log_spaced=4, at_end=True)
    # log-spaced tokens 100, 1000, 10000, 100000 -> steps 1, 10, 100, 1000; 250 tokens -> step 3
    assert steps == pinned == {1, 3, 10, 100, 1000}
    steps, pinned = checkpoint_steps(20, 10, interval=8, at_tokens=None, log_spaced=None, at_end=False)
    assert steps == {8, 16} and pinned == set()


def test_retention_keeps_pinned_and_newest(tmp_path):
    for s in (1, 2, 3, 4, 5, 6):
        d = tmp_path / f"step-{s:08d}"
        d.mkdir()
        (d / "COMPLETE").write_text("")
    (tmp_path / "step-00000007.tmp").mkdir()
    apply_retention(tmp_path, keep_last=2, pinned={2})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5, 6]
    apply_retention(tmp_path, keep_last=1, pinned={2, 6})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5, 6]  # pinned newest: one unpinned kept
