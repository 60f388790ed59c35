"""KL-to-base and logit-swap self-distillation (LSSD): targets, losses and gradients against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cptlab.errors import CptlabError
from cptlab.train.regularizers import build_regularizer, kl_rows, logit_swap_targets, snapshot_model


def _model(seed=0, vocab=48):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _batch(vocab=48, b=2, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t + 1), generator=g)
    pos = torch.arange(t).repeat(b, 1)
    return ids[:, :-1], pos, ids[:, 1:].clone()


def _model_logits(model, ids, pos):
    h = model.base_model(input_ids=ids, position_ids=pos).last_hidden_state
    return model.get_output_embeddings()(h)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_logit_swap_target_exact_on_hand_made_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0],   # gold 0: swap with the max (index 1)
                           [1.0, 3.0, 2.0, -1.0],   # gold 1 is the argmax: unchanged
                           [0.5, -2.0, 4.0, 0.0],   # gold 3: swap with index 2
                           [0.5, -2.0, 4.0, 0.0],   # ignored position: unchanged
                           [2.0, 2.0, 1.0, 0.0]])   # gold 1 ties the max held by index 0: unchanged
    labels = torch.tensor([0, 1, 3, -100, 1])
    out = logit_swap_targets(logits, labels)
    expected = [[3.0, 1.0, 2.0, -1.0], [1.0, 3.0, 2.0, -1.0], [0.5, -2.0, 0.0, 4.0], [0.5, -2.0, 4.0, 0.0],
                [2.0, 2.0, 1.0, 0.0]]
    assert out.tolist() == expected
    assert logits[0, 0] == 1.0  # input untouched
    # The target distribution is the softmax of the swapped logits, exactly.
    target = torch.softmax(out.double(), -1)
    for row, exp_row in zip(target.tolist(), expected):
        assert row == pytest.approx(_softmax(exp_row), abs=1e-15)
    # Where it swapped, the gold token is now the argmax and holds the old max probability.
    assert target[0].argmax() == 0 and target[2].argmax() == 3
    # Works on [B, T, V] too.
    out3 = logit_swap_targets(logits.reshape(1, 5, 4), labels.reshape(1, 5))
    assert out3.reshape(5, 4).tolist() == expected


def test_logit_swap_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="out of range"):
        logit_swap_targets(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_kl_rows_matches_textbook_kl_and_gradient():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    logits = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    for temp in (1.0, 2.5):
        kl = kl_rows(target, logits, temp)
        p = torch.softmax(target / temp, -1)
        ref = (p * (torch.log(p) - torch.log_softmax(logits.detach() / temp, -1))).sum(-1)
        assert torch.allclose(kl.detach(), ref, atol=1e-12)
        (grad,) = torch.autograd.grad(kl.sum(), logits)
        assert torch.allclose(grad, (torch.softmax(logits.detach() / temp, -1) - p) / temp, atol=1e-12)


def test_kl_is_zero_when_model_equals_reference():
    model = _model()
    reg = build_regularizer({"kind": "kl", "weight": 0.5}, model)
    ids, pos, labels = _batch()
    ref_h = reg.reference_hidden(ids, pos)
    logits = _model_logits(model, ids, pos)
    loss = reg.chunk_loss(model, logits.reshape(-1, logits.shape[-1]), ref_h.reshape(-1, ref_h.shape[-1]),
                          labels.reshape(-1))
    assert abs(loss.item()) < 1e-5
    loss.backward()
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) < 1e-6


def test_base_reference_is_frozen_and_kl_matches_independent_computation():
    model = _model()
    reg = build_regularizer({"kind": "kl", "temperature": 2.0}, model)
    base_logits = _model_logits(_model(), *_batch()[:2]).detach()  # same seed: the base
    with torch.no_grad():  # the trained model moves away from the base
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert all(not p.requires_grad for p in reg.ref_model.parameters())
    ids, pos, labels = _batch()
    labels[0, :3] = -100  # ignored positions do not count
    logits = _model_logits(model, ids, pos).reshape(-1, 48)
    loss = reg.chunk_loss(model, logits, reg.reference_hidden(ids, pos).reshape(-1, 16), labels.reshape(-1))
    p = torch.softmax(base_logits.reshape(-1, 48).double() / 2, -1)
    q = torch.log_softmax(logits.detach().double() / 2, -1)
    per_tok = (p * (p.log() - q)).sum(-1)
    expected = per_tok[labels.reshape(-1) != -100].sum().item()
    assert expected > 1e-3
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # Chunking the positions gives the same sum.
    rh = reg.reference_hidden(ids, pos).reshape(-1, 16)
    parts = sum(reg.chunk_loss(model, logits[a:a + 7], rh[a:a + 7], labels.reshape(-1)[a:a + 7]).item()
                for a in range(0, 20, 7))
    assert parts == pytest.approx(loss.item(), rel=1e-5)


def test_lssd_self_reference_against_hand_computation():
    model = _model()
    reg = build_regularizer({"kind": "lssd", "reference": "self"}, model)
    assert reg.ref_model is None
    ids, pos, labels = _batch()
    assert reg.reference_hidden(ids, pos) is None
    logits = _model_logits(model, ids, pos).reshape(-1, 48)
    flat = labels.reshape(-1).clone()
    flat[-1] = logits[-1].argmax()  # one position where the gold token is already the argmax: contributes 0
    flat[0] = -100
    loss = reg.chunk_loss(model, logits, None, flat)
    expected = 0.0
    for row, gold in zip(logits.detach().double().tolist(), flat.tolist()):
        if gold == -100:
            continue
        swapped = list(row)
        top = max(range(len(row)), key=row.__getitem__)
        swapped[top], swapped[gold] = row[gold], row[top]
        p, q = _softmax(swapped), _softmax(row)
        expected += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))
    assert expected > 1e-3
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # The argmax-gold row alone gives exactly zero loss.
    assert reg.chunk_loss(model, logits[-1:], None, flat[-1:]).item() == pytest.approx(0.0, abs=1e-6)
    # The gradient raises the gold token's logit (stop-gradient through the target).
    loss_row = reg.chunk_loss(model, logits[1:2], None, flat[1:2])
    (grad,) = torch.autograd.grad(loss_row, logits)
    if flat[1] != logits[1].argmax():
        assert grad[1, flat[1]] < 0


def test_lssd_base_reference_uses_swapped_base_distribution():
    model = _model()
    reg = build_regularizer({"kind": "lssd", "reference": "base"}, model)
    ids, pos, labels = _batch()
    logits = _model_logits(model, ids, pos).reshape(-1, 48)
    flat = labels.reshape(-1)
    loss = reg.chunk_loss(model, logits, reg.reference_hidden(ids, pos).reshape(-1, 16), flat)
    # model == base here, so the loss is KL(swap(own) ‖ own) as with reference "self".
    own = build_regularizer({"kind": "lssd", "reference": "self"}, model).chunk_loss(model, logits, None, flat)
    assert loss.item() == pytest.approx(own.item(), rel=1e-5)


def test_all_ignored_gives_zero_and_no_gradient():
    model = _model()
    reg = build_regularizer({"kind": "lssd", "reference": "self"}, model)
    logits = torch.randn(4, 48, requires_grad=True)
    loss = reg.chunk_loss(model, logits, None, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().max().item() == 0.0


def test_bf16_snapshot_is_a_tied_independent_copy():
    model = _model()
    ref = snapshot_model(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    assert ref.lm_head.weight is ref.model.embed_tokens.weight  # tying kept
    assert ref.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())  # model untouched
    reg = build_regularizer({"kind": "kl", "reference_precision": "bf16"}, model)
    ids, pos, labels = _batch()
    h = reg.reference_hidden(ids, pos)
    assert h.dtype == torch.bfloat16
    logits = _model_logits(model, ids, pos).reshape(-1, 48)
    loss = reg.chunk_loss(model, logits, h.reshape(-1, 16), labels.reshape(-1))
    assert 0 <= loss.item() < 0.05  # bf16 rounding only


def test_lora_model_snapshot_merges_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    ref = snapshot_model(model)
    assert not hasattr(ref, "peft_config")
    assert not any("lora" in n for n, _ in ref.named_parameters())


@pytest.mark.parametrize("cfg, msg", [
    ({"kind": "kl", "reference": "self"}, "always 0"),
    ({"kind": "l2"}, "regularizer.kind"),
    ({"kind": "kl", "temperature": 0}, "temperature"),
    ({"kind": "kl", "reference_precision": "fp8"}, "reference_precision"),
])
def test_bad_configs_name_the_field(cfg, msg):
    with pytest.raises(CptlabError, match=msg):
        build_regularizer(cfg, _model())


def test_reference_model_given_as_dir_is_the_base(tiny_model_dir):
    from cptlab.model import load_model

    model = load_model(tiny_model_dir)
    with torch.no_grad():  # e.g. a resumed run: the model is not the base any more
        model.model.embed_tokens.weight.add_(0.1)
    reg = build_regularizer({"kind": "kl"}, model, reference_model=tiny_model_dir)
    base = load_model(tiny_model_dir)
    assert torch.equal(reg.ref_model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not any(p.requires_grad for p in reg.ref_model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# With the trainer

def _train(tmp_path, name, tiny_corpus, tiny_model_dir, regularizer=None, steps=3):
    import cptlab.train as train

    cfg = {"model": {"name": str(tiny_model_dir)}, "out_dir": str(tmp_path / name), "max_steps": steps,
           "data": {"corpus": str(tiny_corpus), "cache_dir": str(tmp_path / "cache"), "sources": {"code": 1.0},
                    "seq_len": 32},
           "batch_size": 2, "optimizer": {"lr": 3e-3}, "schedule": {"kind": "constant"}, "seed": 0,
           "eval": {"at_end": False}, "checkpoint": {"at_end": False}, "tensorboard": False, "quiet": True,
           "loss_chunk": 16}
    if regularizer is not None:
        cfg["regularizer"] = regularizer
    result = train.run(cfg)
    rows = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    return result, [r for r in rows if "loss" in r and r.get("split") is None]


def test_trainer_weight_zero_is_bit_identical_and_kl_starts_at_zero(tmp_path, tiny_corpus, tiny_model_dir):
    from safetensors.torch import load_file

    plain, plain_rows = _train(tmp_path, "plain", tiny_corpus, tiny_model_dir)
    zero, zero_rows = _train(tmp_path, "zero", tiny_corpus, tiny_model_dir, {"kind": "lssd", "weight": 0.0})
    assert [r["loss"] for r in plain_rows] == [r["loss"] for r in zero_rows]
    a = load_file(str(Path(plain.final_dir) / "model.safetensors"))
    b = load_file(str(Path(zero.final_dir) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # KL to the frozen base: the model is the base at step 1, so the first regularizer loss is 0; it grows.
    kl, kl_rows = _train(tmp_path, "kl", tiny_corpus, tiny_model_dir, {"kind": "kl", "weight": 1.0})
    assert abs(kl_rows[0]["reg_loss"]) < 1e-5
    assert kl_rows[-1]["reg_loss"] > 1e-4
    # Its gradient is 0 at step 1 too (the update equals plain training's); from step 2 on it pulls back.
    assert kl_rows[1]["loss"] == pytest.approx(plain_rows[1]["loss"], abs=1e-6)
    assert kl_rows[2]["loss"] != plain_rows[2]["loss"]
    c = load_file(str(Path(kl.final_dir) / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _resume_matches(tmp_path, tiny_corpus, tiny_model_dir, regularizer, **extra) -> bool:
    """Train 4 steps straight; then resume the same run from its step-2 checkpoint: same final weights?"""
    import shutil

    import cptlab.train as train
    from safetensors.torch import load_file

    cfg = {"model": {"name": str(tiny_model_dir)}, "out_dir": str(tmp_path / "run"), "max_steps": 4,
           "data": {"corpus": str(tiny_corpus), "cache_dir": str(tmp_path / "cache"), "sources": {"code": 1.0},
                    "seq_len": 32},
           "batch_size": 2, "optimizer": {"lr": 1e-2}, "schedule": {"kind": "constant"}, "seed": 0,
           "eval": {"at_end": False}, "checkpoint": {"interval": 2, "at_end": True}, "tensorboard": False,
           "quiet": True}
    cfg.update(extra)
    if regularizer is not None:
        cfg["regularizer"] = regularizer
    straight = train.run(cfg)
    want = load_file(str(Path(straight.final_dir) / "model.safetensors"))
    for d in (Path(cfg["out_dir"]) / "checkpoints").glob("step-*"):
        if int(d.name.split("-")[1]) > 2:
            shutil.rmtree(d)
    shutil.rmtree(straight.final_dir)
    resumed = train.run({**cfg, "resume": True})
    got = load_file(str(Path(resumed.final_dir) / "model.safetensors"))
    return all(torch.equal(want[k], got[k]) for k in want)


def test_resume_with_base_reference_is_exact(tmp_path, tiny_corpus, tiny_model_dir):
    assert _resume_matches(tmp_path, tiny_corpus, tiny_model_dir, {"kind": "kl", "weight": 1.0})


def test_resume_with_base_reference_and_lora_is_exact(tmp_path, tiny_corpus, tiny_model_dir):
    """LoRA: the resumed model is the base + trained adapters; the reference must be the base without them."""
    assert _resume_matches(tmp_path, tiny_corpus, tiny_model_dir, {"kind": "lssd", "weight": 1.0},
                           lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
