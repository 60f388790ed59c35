"""Chunked cross-entropy: same value and gradients as the full-logits reference; no [N, V] logits kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cptlab.train.loss import CausalLMLoss, linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_matches_full_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(53, 24, generator=g, dtype=torch.float64).float().requires_grad_()
    w = torch.randn(97, 24, generator=g).requires_grad_()
    y = torch.randint(0, 97, (53,), generator=g)
    y[[0, 10, 52]] = -100
    loss = linear_cross_entropy(h, w, y, chunk)
    (loss / 7).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=-100, reduction="sum")
    (ref / 7).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-6)


def test_model_loss_equals_hf_loss_and_masks_documents(tiny_tokenizer):
    from cptlab.model import build_preset

    model = build_preset("llama-micro", tiny_tokenizer, seed=0)
    ids = torch.randint(3, 500, (2, 33), generator=torch.Generator().manual_seed(1))
    hf = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # HF shifts internally: 31 targets per row
    nll, reg = CausalLMLoss(model, chunk=5)(ids[:, :-2], None, ids[:, 1:-1])
    assert reg is None
    assert (nll / (2 * 31)).item() == pytest.approx(hf.item(), rel=1e-5)
    # document masking: a row that restarts positions at token 16 scores its second half as a fresh document
    pos = torch.cat([torch.arange(16), torch.arange(16)]).expand(2, -1)
    masked, _ = CausalLMLoss(model, chunk=8, document_masking=True)(ids[:, :32], pos, ids[:, 1:33])
    second, _ = CausalLMLoss(model, chunk=8)(ids[:, 16:32], None, ids[:, 17:33])
    first, _ = CausalLMLoss(model, chunk=8)(ids[:, :16], None, ids[:, 1:17])
    assert masked.item() == pytest.approx((first + second).item(), rel=1e-5)


def test_bf16_autocast_matches_reference_in_the_same_precision():
    """Under bf16 autocast: the matmuls in bf16, softmax and gradient accumulation in fp32; the chunk size does
    not change the loss, and changes the output-matrix gradient only by the order of its fp32 sums."""
    g = torch.Generator().manual_seed(3)
    h0 = torch.randn(300, 32, generator=g)
    w0 = torch.randn(211, 32, generator=g) * 0.3
    y = torch.randint(0, 211, (300,), generator=g)
    y[5] = -100

    def ours(chunk):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(h, w, y, chunk)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    one, several = ours(1000), ours(16)
    # reference: bf16 logits (as autocast computes them), fp32 cross-entropy, fp32 autograd
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    logits = (h.bfloat16() @ w.bfloat16().t()).float()
    ref = F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")
    ref.backward()
    assert one[0].item() == pytest.approx(ref.item(), rel=1e-5)
    assert several[0].item() == pytest.approx(one[0].item(), rel=1e-6)
    torch.testing.assert_close(one[1], several[1], rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(one[2], several[2], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(one[1], h.grad, rtol=2e-2, atol=2e-2)  # bf16 gradient matmuls vs fp32 autograd
    torch.testing.assert_close(one[2], w.grad, rtol=2e-2, atol=2e-2)
