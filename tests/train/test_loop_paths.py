"""Loop paths not covered by the resume tests: accumulation, clipping, fp16 (GradScaler), document masking,
re-warming, the FSDP switch on CPU, torch.compile (slow), the spike detector and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cptlab.train import run
from cptlab.train.metrics import SpikeDetector
from tests.train.conftest import final_tensors, train_records


def _spy_optimizer(monkeypatch):
    """Record, before every optimizer step, the global norm of the gradients the optimizer is about to apply."""
    from cptlab.train import loop

    norms = []
    original = loop.setup.build_optimizer

    def build(cfg, model, device):
        opt = original(cfg, model, device)

        def pre(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        opt.register_step_pre_hook(pre)
        return opt

    monkeypatch.setattr(loop.setup, "build_optimizer", build)
    return norms


def test_accumulation_equals_one_batch_and_clipping_bounds_the_update(base_config, monkeypatch):
    norms = _spy_optimizer(monkeypatch)
    one = base_config("one", max_steps=3, optimizer={"lr": 3e-3, "grad_clip": 0.5})
    run(one)
    clipped = list(norms)
    two = base_config("two", max_steps=3, grad_accum=4, optimizer={"lr": 3e-3, "grad_clip": 0.5})
    run(two)
    a, b = train_records(one["out_dir"]), train_records(two["out_dir"])
    for x, y in zip(a, b):  # the loss is the mean over the step's tokens however the batch is split
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
        assert y["tokens_by_source"] == x["tokens_by_source"]
    # grad_norm is reported before clipping; the optimizer sees gradients of norm <= grad_clip
    assert all(r["grad_norm"] > 0.5 for r in a)
    assert len(clipped) == 3 and all(n == pytest.approx(0.5, rel=1e-4) for n in clipped)
    ta, tb = final_tensors(one["out_dir"]), final_tensors(two["out_dir"])
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)


def test_fp16_with_grad_scaler_and_document_masking(base_config):
    ref = base_config("fp32", max_steps=3)
    run(ref)
    half = base_config("fp16", max_steps=3, precision="fp16")
    run(half)
    masked = base_config("masked", max_steps=3, data__document_masking=True)
    run(masked)
    r, h, m = (train_records(c["out_dir"]) for c in (ref, half, masked))
    assert not any(x["skipped"] for x in h)
    # fp16 autocast really ran (different rounding) and stays close to fp32
    assert [x["loss"] for x in h] != [x["loss"] for x in r]
    assert all(abs(x["loss"] - y["loss"]) < 1e-2 for x, y in zip(h, r))
    # no attention across packed documents changes the loss, a little (most context is within a document)
    assert m[0]["loss"] != r[0]["loss"] and abs(m[0]["loss"] - r[0]["loss"]) < 0.05


def test_init_from_without_rewarm_starts_at_peak_lr(base_config):
    first = base_config("first", max_steps=2)
    run(first)
    ckpt = str(Path(first["out_dir"]) / "checkpoints" / "step-00000002")
    for rewarm, lr0 in ((False, 3e-3), (True, 3e-3 / 3)):
        cfg = base_config(f"rewarm-{rewarm}", max_steps=4, model={"name": "llama-micro", "init_from": ckpt},
                          schedule={"kind": "wsd", "warmup_steps": 3, "rewarm": rewarm, "decay_fraction": 0.25})
        run(cfg)
        lrs = [x["lr"] for x in train_records(cfg["out_dir"])]
        assert lrs[0] == pytest.approx(lr0)
        assert lrs[-1] == pytest.approx(3e-3 * 0.1)  # wsd: the last quarter decays to min_lr_ratio


def test_fsdp_switch_with_one_process_says_nothing_is_sharded(base_config, monkeypatch):
    """(Sharding itself, over two processes: tests/train/test_distributed.py.)"""
    from cptlab.train import loop

    said = []
    monkeypatch.setattr(loop, "log", said.append)
    plain = base_config("plain", max_steps=2)
    run(plain)
    assert not any(m.startswith("fsdp:") for m in said)
    cfg = base_config("fsdp", max_steps=2, fsdp=True)
    run(cfg)
    assert any(m.startswith("fsdp: one process, nothing to shard") for m in said)
    assert [x["loss"] for x in train_records(cfg["out_dir"])] == [x["loss"] for x in train_records(plain["out_dir"])]


@pytest.mark.slow
def test_compile_matches_eager(base_config):
    eager = base_config("eager", max_steps=3)
    run(eager)
    compiled = base_config("compiled", max_steps=3, compile=True)
    run(compiled)
    for x, y in zip(train_records(eager["out_dir"]), train_records(compiled["out_dir"])):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4)


def test_spike_detector():
    det = SpikeDetector(window=20, z=4.0)
    flat = [2.0 + 0.01 * ((i * 7) % 5 - 2) for i in range(10)]
    assert [det.update(x)[1] for x in flat] == [None] * 10  # window not full enough yet
    spike, z = det.update(2.0)
    assert not spike and abs(z) < 1
    spike, z = det.update(5.0)
    mean = sum(flat + [2.0]) / 11
    std = (sum((x - mean) ** 2 for x in flat + [2.0]) / 10) ** 0.5
    assert spike and z == pytest.approx((5.0 - mean) / std)
    assert not det.update(float("nan"))[0] and len(det.history) == 12  # non-finite losses stay out of the window
    resumed = SpikeDetector(20, 4.0, list(det.history))
    assert resumed.update(2.5) == det.update(2.5)


def test_cli_train_json_and_resume_noop(base_config, tmp_path, capsys):
    import yaml

    from cptlab.cli import main

    cfg = base_config("cli", max_steps=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "quiet"}))
    for extra in ([], ["--resume"]):
        with pytest.raises(SystemExit) as e:
            main(["train", str(path), "--quiet", "--json", "--set", "optimizer.lr=1e-3", *extra])
        assert e.value.code in (0, None)
        out = json.loads(capsys.readouterr().out)
        assert out["steps"] == 2 and out["tokens"] == 2 * 8 * 64
    assert [r["step"] for r in train_records(cfg["out_dir"])] == [1, 2]
    assert train_records(cfg["out_dir"])[0]["lr"] == pytest.approx(1e-3 / 3)
