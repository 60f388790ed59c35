"""LoRA (only adapters train; merged export loads in plain transformers) and init_from vs resume."""

from __future__ import annotations

from pathlib import Path

import torch

from cptlab.train import run
from cptlab.train.checkpoint import load_tensors
from tests.train.conftest import final_tensors, train_records


def test_lora_trains_only_adapters_and_exports_merged(base_config, tiny_model_dir, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cptlab.train import loop

    seen = {}
    original = loop.setup.apply_lora

    def spy(cfg, model):
        peft_model = original(cfg, model)
        seen["model"] = peft_model
        seen["before"] = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        return peft_model

    monkeypatch.setattr(loop.setup, "apply_lora", spy)
    cfg = base_config(model={"name": str(tiny_model_dir)}, tokenizer=None, max_steps=6,
                      lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    run(cfg)
    after = dict(seen["model"].named_parameters())
    changed = {n for n, p in seen["before"].items() if not torch.equal(p, after[n].detach())}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    # the export is plain transformers weights: adapted q/v projections, everything else as in the base
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = final_tensors(cfg["out_dir"])
    assert set(merged) == set(base)
    differ = {k for k in base if not torch.equal(base[k], merged[k])}
    assert differ and all(("q_proj" in k or "v_proj" in k) for k in differ)
    model = AutoModelForCausalLM.from_pretrained(Path(cfg["out_dir"]) / "final")
    assert not any("lora" in n for n, _ in model.named_parameters())
    # ... and computes what the trained adapter model computes
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    peft_model = seen["model"].eval()
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = model.eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - plain).abs().max() > 1e-3  # the adapters did change the function
    assert (Path(cfg["out_dir"]) / "checkpoints" / "step-00000006" / "state" / "adapter.safetensors").is_file()


def test_init_from_checkpoint_is_a_new_run(base_config):
    first = base_config("pretrain", max_steps=4)
    run(first)
    ckpt = Path(first["out_dir"]) / "checkpoints" / "step-00000004"
    keep = base_config("keep", max_steps=3, model={"init_from": str(ckpt), "name": "llama-micro",
                                                   "reset_optimizer": False},
                       data__sources={"prose": 1.0}, schedule={"kind": "constant", "warmup_steps": 2})
    reset = base_config("reset", max_steps=3, model={"init_from": str(ckpt), "name": "llama-micro"},
                        data__sources={"prose": 1.0}, schedule={"kind": "constant", "warmup_steps": 2})
    run(keep)
    run(reset)
    for cfg in (keep, reset):
        recs = train_records(cfg["out_dir"])
        assert [r["step"] for r in recs] == [1, 2, 3] and recs[0]["tokens"] == 8 * 64  # counters start afresh
        assert recs[0]["lr"] == 3e-3 / 2  # re-warmed
        assert recs[0]["tokens_by_source"] == {"prose": 8 * 64}
    steps = lambda d: {s["step"].item() for s in load_tensors(  # noqa: E731
        Path(d) / "checkpoints" / "step-00000003" / "state" / "optimizer.pt")["state"].values()}
    assert steps(keep["out_dir"]) == {7.0} and steps(reset["out_dir"]) == {3.0}
    # both start from the pretrained weights: step-1 loss is the same, then the optimizer state makes them differ
    k, r = train_records(keep["out_dir"]), train_records(reset["out_dir"])
    assert k[0]["loss"] == r[0]["loss"]
    assert not torch.equal(final_tensors(keep["out_dir"])["model.norm.weight"],
                           final_tensors(reset["out_dir"])["model.norm.weight"])
