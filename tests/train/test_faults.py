"""Non-finite loss: the update is not applied, the step is reported, and N in a row stop the run."""

from __future__ import annotations

import pytest
import torch

from cptlab.errors import CptlabError
from cptlab.train import run
from cptlab.train.checkpoint import load_tensors
from tests.train.conftest import train_records


def test_nan_step_is_skipped_and_reported(base_config, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("CPTLAB_TEST_NAN_STEPS", "3")
    cfg = base_config(max_steps=4, checkpoint__interval=1)
    result = run(cfg)
    recs = train_records(cfg["out_dir"])
    assert [r["skipped"] for r in recs] == [False, False, True, False]
    assert recs[2]["loss"] is None and result.skipped_steps == 1 and result.steps == 4
    root = cfg["out_dir"] + "/checkpoints/"
    w2 = load_file(root + "step-00000002/model/model.safetensors")
    w3 = load_file(root + "step-00000003/model/model.safetensors")
    w4 = load_file(root + "step-00000004/model/model.safetensors")
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # no update at the NaN step
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)  # training went on
    steps = [s["step"].item() for s in load_tensors(root + "step-00000003/state/optimizer.pt")["state"].values()]
    assert set(steps) == {2.0}  # AdamW took two steps by step 3


def test_consecutive_nonfinite_steps_stop_the_run(base_config, monkeypatch):
    monkeypatch.setenv("CPTLAB_TEST_NAN_STEPS", "2,3,4")
    cfg = base_config(max_steps=8, faults__max_consecutive_nonfinite=3)
    with pytest.raises(CptlabError, match="3 steps in a row with a non-finite loss"):
        run(cfg)
    assert [r["skipped"] for r in train_records(cfg["out_dir"])] == [False, True, True, True]
