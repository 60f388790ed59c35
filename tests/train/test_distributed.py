"""`torchrun --nproc_per_node 2` (gloo, CPU) gives the same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cptlab.train import run
from tests.train.conftest import final_tensors, train_records

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from cptlab.train import run
run(json.loads(open(sys.argv[1]).read()))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(base_config, tmp_path):
    over = dict(max_steps=4, grad_accum=2, eval={"interval": 2, "max_tokens": 512}, checkpoint__interval=2)
    one = base_config("one", **over)
    run(one)
    two = base_config("two", **over)
    proc = _torchrun(two, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_records(one["out_dir"]), train_records(two["out_dir"])
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 and x["tokens_by_source"] == y["tokens_by_source"]
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4
    from cptlab.train.metrics import read_metrics

    ea = [r for r in read_metrics(one["out_dir"] + "/metrics.jsonl") if "domain" in r]
    eb = [r for r in read_metrics(two["out_dir"] + "/metrics.jsonl") if "domain" in r]
    assert [(r["step"], r["domain"], r["tokens"]) for r in ea] == [(r["step"], r["domain"], r["tokens"]) for r in eb]
    assert all(abs(x["loss"] - y["loss"]) <= 1e-5 for x, y in zip(ea, eb))
    assert os.path.isdir(two["out_dir"] + "/checkpoints/step-00000004")
    # same final weights (DDP averaged the ranks' gradients of the same global batch)
    from tests.train.conftest import final_tensors

    wa, wb = final_tensors(one["out_dir"]), final_tensors(two["out_dir"])
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

    # accelerate's launcher gives the same (its --multi_gpu means "several processes": gloo on a CPU machine)
    launched = base_config("accelerate", **over)
    proc = _launch(launched, tmp_path, ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                        "--main_process_port", str(_free_port())])
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = train_records(launched["out_dir"])
    assert len(c) == 4 and all(abs(x["loss"] - y["loss"]) <= 1e-5 for x, y in zip(a, c))
    from cptlab.train.checkpoint import load_trainer_state

    last = "/checkpoints/step-00000004"
    assert [load_trainer_state(r["out_dir"] + last)["world_size"] for r in (one, two, launched)] == [1, 2, 2]


def _launch(cfg: dict, tmp_path, launcher: list[str], program: list[str] | None = None,
            **env) -> subprocess.CompletedProcess:
    """`python -m LAUNCHER... PROGRAM cfg.json`: train `cfg` in the processes the launcher starts; the program is
    a script calling `cptlab.train.run`, or e.g. ["-m", "cptlab", "train"] for the command line."""
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.json"
    path.write_text(json.dumps(cfg))
    (tmp_path / "script.py").write_text(SCRIPT)
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-m", *launcher, *(program or [str(tmp_path / "script.py")]), str(path)],
                          env=full_env, capture_output=True, text=True, timeout=180)


def _torchrun(cfg: dict, tmp_path, program: list[str] | None = None, **env) -> subprocess.CompletedProcess:
    return _launch(cfg, tmp_path, ["torch.distributed.run", "--nproc_per_node", "2",
                                   "--master_port", str(_free_port())], program, **env)


def _resume_copy(src: str, dst: str, last_step: int) -> None:
    """A copy of a finished run that ends at checkpoint `last_step` (later checkpoints and the export removed)."""
    import shutil
    from pathlib import Path

    shutil.copytree(src, dst)
    for p in Path(dst, "checkpoints").iterdir():
        if int(p.name.split("-")[1]) > last_step:
            shutil.rmtree(p)
    shutil.rmtree(Path(dst, "final"))


def test_fsdp_two_processes_match_one_with_kill_and_resume_across_modes(base_config, tmp_path):
    """fsdp: true under torchrun shards the model (torch's fully_shard, gloo on CPU): the same losses, grad norms
    and final weights as one unsharded process; SIGKILLed and resumed; its checkpoints resume without FSDP and
    an unsharded run's checkpoints resume with it (the optimizer state is stored by parameter name either way)."""
    from cptlab.train.checkpoint import load_tensors

    over = dict(max_steps=6, grad_accum=2, eval={"interval": 3, "max_tokens": 512}, checkpoint__interval=2)
    one = base_config("one", **over)
    run(one)
    sharded = base_config("fsdp", fsdp=True, quiet=False, **over)
    killed = _torchrun(sharded, tmp_path, CPTLAB_TEST_KILL_AT_STEP=3)
    # Each rank kills itself at step 3; torchrun may stop rank 0 before it logs step 3 when rank 1 is first.
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert train_records(sharded["out_dir"])[-1]["step"] in (2, 3) and not os.path.exists(sharded["out_dir"] + "/final")
    resumed = _torchrun({**sharded, "resume": True}, tmp_path, ["-m", "cptlab", "train"], CPTLAB_QUIET="")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout == sharded["out_dir"] + "/final\n"  # the command's result, printed by one process
    said = " ".join(resumed.stderr.split())  # (rich wraps long lines)
    assert said.count("fsdp: parameters, gradients and optimizer state sharded over 2 processes (50% of the "
                      "weights on each)") == 1  # logged once: only the main process speaks
    a, b = train_records(one["out_dir"]), train_records(sharded["out_dir"])
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4
        assert x["tokens_by_source"] == y["tokens_by_source"]
    wa, wb = final_tensors(one["out_dir"]), final_tensors(sharded["out_dir"])
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(sharded["out_dir"] + "/final")  # a plain HF dir
    opt = load_tensors(sharded["out_dir"] + "/checkpoints/step-00000004/state/optimizer.pt")
    assert all(isinstance(k, str) for k in opt["state"])  # by parameter name, full (unsharded) tensors
    assert {k: v["exp_avg"].shape for k, v in opt["state"].items()} == {k: v.shape for k, v in wa.items()
                                                                        if k in opt["state"]}

    # FSDP checkpoint -> one unsharded process, and an unsharded checkpoint -> FSDP: steps 5-6 as in one go
    cross = base_config("cross", **over)
    _resume_copy(sharded["out_dir"], cross["out_dir"], 4)
    run({**cross, "resume": True})
    back = base_config("back", fsdp=True, **over)
    _resume_copy(one["out_dir"], back["out_dir"], 4)
    proc = _torchrun({**back, "resume": True}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("cross", "back"):
        c = train_records(tmp_path / name)
        assert [r["step"] for r in c] == [1, 2, 3, 4, 5, 6]
        assert all(abs(x["loss"] - y["loss"]) <= 1e-5 for x, y in zip(a[4:], c[4:]))

    # LoRA is not sharded: a clear message, no traceback from inside torch
    lora = base_config("lora", fsdp=True, max_steps=2, lora={"r": 4, "alpha": 8})
    proc = _torchrun(lora, tmp_path, CPTLAB_QUIET="")
    assert proc.returncode != 0 and "fsdp: LoRA runs are not sharded" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_fsdp_with_compile_matches_one_process(base_config, tmp_path):
    """compile: true compiles the blocks in place before fully_shard wraps them (cold compile: ~30 s a process)."""
    over = dict(max_steps=3, checkpoint__interval=2)
    one = base_config("one", **over)
    run(one)
    both = base_config("compiled", fsdp=True, compile=True, **over)
    proc = _torchrun(both, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_records(one["out_dir"]), train_records(both["out_dir"])
    assert len(b) == 3 and all(abs(x["loss"] - y["loss"]) <= 1e-4 for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["kl", pytest.param("lssd", marks=pytest.mark.slow)])
def test_fsdp_with_regularizer_matches_one_process(base_config, tmp_path, kind):
    """The forgetting-control regularizers run inside the sharded loss module (the reference model stays whole)."""
    over = dict(max_steps=3, regularizer={"kind": kind, "weight": 0.5, "reference": "base"})
    one = base_config("one", **over)
    run(one)
    sharded = base_config("sharded", fsdp=True, **over)
    proc = _torchrun(sharded, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_records(one["out_dir"]), train_records(sharded["out_dir"])
    assert len(b) == 3
    assert all(abs(x["loss"] - y["loss"]) <= 1e-5 and abs(x["reg_loss"] - y["reg_loss"]) <= 1e-5 for x, y in zip(a, b))
