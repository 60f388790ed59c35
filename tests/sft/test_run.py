"""`cptlab sft` end to end: the trainer's loop on masked, packed rows — exact resume, accumulation, LoRA, torchrun."""

from __future__ import annotations

import json
import random
import signal

import pytest
import torch
import yaml

from cptlab.errors import CptlabError
from cptlab.sft import run
from tests.train.conftest import final_tensors, run_subprocess, train_records
from tests.train.test_distributed import _torchrun


def eval_records(out_dir) -> list[dict]:
    from cptlab.train.metrics import read_metrics

    return [r for r in read_metrics(f"{out_dir}/metrics.jsonl") if "domain" in r]


def test_sft_resume_after_sigkill_gives_identical_losses(sft_base, monkeypatch):
    over = dict(max_steps=14, checkpoint__interval=4, grad_accum=2)
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")
    ref = sft_base("reference", **over)
    run(ref)
    cfg = sft_base("killed", **over)
    kill_at = random.Random().randint(5, 13)
    proc = run_subprocess(cfg, CPTLAB_TEST_KILL_AT_STEP=kill_at, CPTLAB_TEST_RECORD_WINDOWS=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert train_records(cfg["out_dir"])[-1]["step"] == kill_at
    run(cfg, ["resume=true"])
    a, b = train_records(ref["out_dir"]), train_records(cfg["out_dir"])
    assert [r["step"] for r in b] == list(range(1, 15))
    assert a[-1]["epochs_by_source"]["sft"] > 1.0  # the run crossed an epoch end
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "lr", "tokens", "target_tokens", "windows"):
            assert x[key] == y[key], f"step {x['step']}: {key} {y[key]} != {x[key]}"
    ta, tb = final_tensors(ref["out_dir"]), final_tensors(cfg["out_dir"])
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert eval_records(cfg["out_dir"])[-1]["loss"] == eval_records(ref["out_dir"])[-1]["loss"]


def test_loss_is_the_mean_over_response_tokens_whatever_the_accumulation(sft_base):
    """Rows hold different numbers of response tokens: the step loss divides by the step's total, so one
    micro-batch of 4 rows and 4 micro-batches of 1 row give the same losses and updates."""
    one = sft_base("one", max_steps=3)
    four = sft_base("four", max_steps=3, grad_accum=4)
    run(one)
    run(four)
    a, b = train_records(one["out_dir"]), train_records(four["out_dir"])
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]) and x["target_tokens"] == y["target_tokens"]
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * x["grad_norm"]
    assert a[0]["target_tokens"] < a[0]["tokens"]  # prompts and padding are not targets


def test_sft_learns_the_responses(sft_base):
    cfg = sft_base("learn", max_steps=16, eval={"interval": 16, "at_end": True})
    result = run(cfg)
    ev = eval_records(cfg["out_dir"])
    assert ev[-1]["split"] == "valid" and ev[-1]["domain"] == "sft"
    recs = train_records(cfg["out_dir"])
    assert recs[-1]["loss"] < recs[0]["loss"] - 1.0
    info = json.loads((result.final_dir / "cptlab_train.json").read_text())
    assert info["kind"] == "sft" and info["target_tokens"] == recs[-1]["target_tokens"]


def test_chat_sft_with_lora_keeps_the_template(sft_base, sft_files, chatml_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = sft_base("chat", max_steps=3, lora={"r": 4, "alpha": 8}, data__train=str(sft_files["chat"]),
                   data__valid=None, data__chat_template_file=str(chatml_file))
    result = run(cfg)
    tok = AutoTokenizer.from_pretrained(result.final_dir)
    assert tok.chat_template == chatml_file.read_text()
    AutoModelForCausalLM.from_pretrained(result.final_dir)  # LoRA merged into a plain HF dir
    assert (result.out_dir / "checkpoints" / "step-00000003" / "state" / "adapter.safetensors").is_file()


def test_cli_sft_and_kind_check(tmp_path, sft_base, capsys):
    from cptlab.cli import main

    cfg = sft_base("cli", max_steps=2)
    del cfg["kind"]  # `cptlab sft` says what it runs
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        main(["sft", str(path), "--json", "--quiet"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["final_dir"].endswith("final")
    path.write_text(yaml.safe_dump({**cfg, "kind": "cpt"}))
    with pytest.raises(SystemExit) as e:
        main(["sft", str(path)])
    assert e.value.code == 1 and "kind: 'cpt', but this command runs 'sft'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": ""}\n')
    with pytest.raises(SystemExit) as e:
        main(["sft", str(path), "--set", "kind=sft", "--set", f"data.train={bad}", "--set", "overwrite=true"])
    msg = capsys.readouterr().err
    assert e.value.code == 1 and f"{bad}:1: empty 'response'" in msg and "Traceback" not in msg


def test_config_errors_name_the_field(sft_base):
    with pytest.raises(CptlabError, match=r"data\.sources"):
        run({**sft_base(), "data": {"train": "x.jsonl", "sources": {"a": 1}}})
    with pytest.raises(CptlabError, match=r"data\.train: .*missing\.jsonl: not found"):
        run(sft_base(data__train="missing.jsonl"))


def test_torchrun_two_processes_match_one(sft_base, tmp_path):
    over = dict(max_steps=3, grad_accum=2, eval={"interval": 3, "max_tokens": 1024})
    one = sft_base("one", **over)
    run(one)
    two = sft_base("two", **over)
    proc = _torchrun(two, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_records(one["out_dir"]), train_records(two["out_dir"])
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 and x["target_tokens"] == y["target_tokens"]
    assert abs(eval_records(one["out_dir"])[-1]["loss"] - eval_records(two["out_dir"])[-1]["loss"]) <= 1e-5
    wa, wb = final_tensors(one["out_dir"]), final_tensors(two["out_dir"])
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
