"""Causal-LM loss on the last hidden state, chunk by chunk: full [B, T, V] logits never exist.

`linear_cross_entropy(hidden [N, H], weight [V, H], labels [N])` returns the SUM of token NLLs (labels -100
are ignored). Its forward pass walks the positions in chunks: logits of one chunk (fp32 softmax), the NLL,
and right away the gradients for the hidden states and for the output matrix; backward only scales them.
So memory is one chunk of logits, and no logits are recomputed.

With a regularizer (KL / LSSD, `cptlab.train.regularizers`), which needs the chunk's logits with gradients,
each chunk runs under activation checkpointing instead: same memory bound, one extra matmul per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(device_type: str) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, compute_dtype: torch.dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device_type = hidden.device.type
        with torch.autocast(device_type, enabled=False):
            h = hidden.to(compute_dtype)
            w = weight.to(compute_dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for s in range(0, h.shape[0], chunk):
                hc, yc = h[s : s + chunk], labels[s : s + chunk]
                logits = (hc @ w.t()).float()
                valid = yc != -100
                safe = yc.clamp(min=0)
                rows = torch.arange(logits.shape[0], device=logits.device)
                # One exp pass serves both the loss and its gradient: with m = max, e = exp(logits - m),
                # lse = m + log(sum e), NLL = lse - logit[label], softmax = e / sum e.
                m = logits.amax(dim=-1, keepdim=True)
                gold = logits[rows, safe] - m.squeeze(1)
                e = logits.sub_(m).exp_()
                z = e.sum(dim=-1)
                nll = z.log() - gold
                total += torch.where(valid, nll, 0.0).sum()
                if need_h or need_w:
                    # d(sum NLL)/d logits = softmax - onehot(label), zero for ignored positions.
                    g = e.mul_((valid / z).unsqueeze(1))
                    g[rows, safe] -= valid.to(g.dtype)
                    g = g.to(compute_dtype)
                    if need_h:
                        grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.dtypes[1]) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Sum of NLLs of `labels` under logits `hidden @ weight.T`, computed `chunk` positions at a time."""
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk, _compute_dtype(hidden.device.type))


def _chunk_with_regularizer(hc, yc, ref_c, head, reg, model):
    logits = head(hc).float()
    nll = F.cross_entropy(logits, yc, ignore_index=-100, reduction="sum")
    return nll, reg.chunk_loss(model, logits, ref_c, yc)


def causal_lm_parts(model):
    """(decoder, lm_head) of an HF causal LM (PEFT-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


class CausalLMLoss(nn.Module):
    """`forward(input_ids, position_ids, labels) -> (nll_sum, reg_sum)` over the given tokens.

    The model is a submodule, so DDP/FSDP wrap this module and gradient sync happens as usual. `position_ids`
    are passed only with document masking: transformers then masks attention across packed documents.
    """

    def __init__(self, model, chunk: int = 1024, document_masking: bool = False, regularizer=None):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.document_masking = document_masking
        self._reg = [regularizer]  # a list: the regularizer's frozen reference is not a submodule

    def forward(self, input_ids, position_ids, labels):
        decoder, head = causal_lm_parts(self.model)
        pos = position_ids if self.document_masking else None
        # use_cache=False: no KV cache in training, and with a cache transformers ignores packed position ids.
        hidden = decoder(input_ids=input_ids, position_ids=pos, use_cache=False).last_hidden_state
        h = hidden.reshape(-1, hidden.shape[-1])
        y = labels.reshape(-1)
        reg = self._reg[0]
        # The fused path needs a plain bias-free Linear head: a LoRA-wrapped head (peft) computes more than
        # `head.weight` (its base weight), so it goes through head(...) chunk by chunk below.
        if reg is None and type(head) is nn.Linear and head.bias is None:
            return linear_cross_entropy(h, head.weight, y, self.chunk), None
        from torch.utils.checkpoint import checkpoint

        ref = reg.reference_hidden(input_ids, pos) if reg is not None else None
        ref = ref.reshape(-1, ref.shape[-1]) if ref is not None else None
        nll_total, reg_total = 0.0, 0.0
        for s in range(0, h.shape[0], self.chunk):
            part = slice(s, s + self.chunk)
            if reg is None:
                nll = checkpoint(lambda a, b: F.cross_entropy(head(a).float(), b, ignore_index=-100,
                                                              reduction="sum"), h[part], y[part],
                                 use_reentrant=False)
                nll_total = nll_total + nll
                continue
            nll, r = checkpoint(_chunk_with_regularizer, h[part], y[part],
                                None if ref is None else ref[part], head, reg, self.model, use_reentrant=False)
            nll_total, reg_total = nll_total + nll, reg_total + r
        return nll_total, (reg_total if reg is not None else None)
