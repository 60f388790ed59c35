"""One run with a 0.8/0.2 mixture: token ratios, epochs, eval records, log-spaced checkpoints, final dir."""

from __future__ import annotations

from pathlib import Path

from cptlab.train import run
from cptlab.train.checkpoint import list_checkpoints
from cptlab.train.metrics import read_metrics


def test_mixture_eval_and_token_schedule(base_config):
    cfg = base_config(max_steps=40, batch_size=10, data__sources={"code": 0.8, "prose": 0.2},
                      checkpoint={"log_spaced": 4, "interval": 7, "keep_last": 1},
                      eval={"interval": 20, "max_tokens": 640}, precision="bf16", tensorboard=True)
    result = run(cfg)
    out = Path(cfg["out_dir"])
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "domain" not in r]
    assert [r["step"] for r in train] == list(range(1, 41))
    last = train[-1]
    assert last["tokens"] == result.tokens == 40 * 10 * 64
    for name, w in {"code": 0.8, "prose": 0.2}.items():
        assert abs(last["tokens_by_source"][name] / last["tokens"] - w) <= 0.01
    assert abs(last["epochs_by_source"]["prose"] - 80 * 64 / (64 * 103)) < 0.2  # 80 prose windows
    for key in ("loss", "lr", "grad_norm", "skipped"):
        assert key in last
    evals = [r for r in records if "domain" in r]
    assert sorted((r["step"], r["domain"]) for r in evals) == [(20, "code"), (20, "prose"), (40, "code"),
                                                               (40, "prose")]
    assert all(r["split"] == "valid" and r["tokens"] == 640 and r["loss"] > 0 for r in evals)
    # 4 log-spaced targets from 640 to 25600 tokens: steps 1, 3, 12, 40 (pinned) + the newest interval one (35)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1, 3, 12, 35, 40]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert list((out / "tensorboard").iterdir())
    assert train[-1]["loss"] < train[0]["loss"]
