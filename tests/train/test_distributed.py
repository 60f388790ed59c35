"""`torchrun --nproc_per_node 2` (gloo, CPU) gives the same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from cptlab.train import run
from tests.train.conftest import train_records

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
    (tmp_path / "cfg.json").write_text(json.dumps(two))
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(tmp_path / "script.py"), str(tmp_path / "cfg.json")],
                          env=env, capture_output=True, text=True, timeout=120)
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
