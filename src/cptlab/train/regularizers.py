"""Regularizers that keep a continued-pretraining run close to what the base model knew.

Two kinds, both a KL divergence from a *target* distribution to the model's next-token distribution, added to the
LM loss by the trainer as ``weight · Σ_tokens KL / n_tokens``:

* ``kl``: target = the reference's distribution, ``softmax(ref_logits / T)``. With the frozen base as reference
  this is plain distillation towards the starting model.
* ``lssd``: logit-swap self-distillation (Mix-CPT, arXiv 2407.10804). Target = ``softmax(swap(ref_logits) / T)``
  where ``swap`` exchanges the gold token's logit with the largest logit, so the gold token becomes the argmax
  while the rest of the reference's ranking is kept; positions where the gold token already is the argmax are
  unchanged. Loss ``KL(target ‖ softmax(model_logits / T))``.

Per token: ``KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)`` with ``p`` the target, ``q`` the model. Not multiplied by
``T²`` (raise the weight instead if you raise T). Gradients reach the model's logits only: the target is a
constant (``d KL / d logits = (softmax(logits/T) − p) / T``).

Reference (``cfg.reference``):
* ``base`` (default): a frozen copy of the model taken when `build_regularizer` is called (before the first
  step), in ``cfg.reference_precision`` (fp32 or bf16). The copy is made parameter by parameter straight into the
  target dtype (no transient fp32 copy for bf16), tied weights stay tied, nothing is shared with the trained model,
  and it never requires grad. A LoRA (peft) model's adapters are merged into the copy.
* ``self``: the current model with stop-gradient (its own logits, detached). Only meaningful for ``lssd``; for
  ``kl`` the loss would be identically 0, so that combination is refused.

The trainer's chunked loss calls, per batch, ``reg.reference_hidden(input_ids, position_ids, attention_mask)``
(the reference's last hidden state, or None for ``self``) and, per chunk of positions,
``reg.chunk_loss(model, logits[b, V], ref_hidden[b, H], labels[b])`` -> the SUM of the per-token KL over the
chunk's labels that are not -100. The reference's logits are computed chunk by chunk from its hidden states, so
a ``[B, T, V]`` tensor of the reference is never materialised.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from cptlab.errors import CptlabError

IGNORE_INDEX = -100
KINDS = ("kl", "lssd")
REFERENCES = ("base", "self")
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


# ---------------------------------------------------------------------------------------------------------------
# The math (pure functions on tensors).

def logit_swap_targets(ref_logits, labels, ignore_index: int = IGNORE_INDEX, check: bool = True):
    """A copy of `ref_logits` ``[..., V]`` with, at each position, the gold token's logit swapped with the maximum.

    `labels` ``[...]``. Positions labelled `ignore_index` are left unchanged, as are positions where the gold
    token already has the largest logit (swapping equal values changes nothing). `check=False` skips the label
    range check (a device sync), for the training hot path.
    """
    import torch

    if tuple(labels.shape) != tuple(ref_logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(ref_logits.shape)}")
    vocab = ref_logits.shape[-1]
    valid = labels != ignore_index
    if check and bool(valid.any()) and (int(labels[valid].min()) < 0 or int(labels[valid].max()) >= vocab):
        raise ValueError(f"labels out of range for a vocabulary of {vocab} (ignore_index is {ignore_index})")
    out = ref_logits.detach().clone()
    lab = torch.where(valid, labels, 0).long().unsqueeze(-1)
    gold = out.gather(-1, lab)
    top, top_idx = out.max(dim=-1, keepdim=True)
    v = valid.unsqueeze(-1)
    # The gold logit goes where the max was, then the max where the gold was. When both are the same position
    # the two writes put back the same value; on ignored positions both writes are no-ops.
    out.scatter_(-1, top_idx, torch.where(v, gold, top))
    out.scatter_(-1, lab, torch.where(v, top, out.gather(-1, lab)))
    return out


def kl_rows(target_logits, logits, temperature: float = 1.0):
    """Per-row ``KL(softmax(target/T) ‖ softmax(logits/T))`` for ``[n, V]`` inputs -> ``[n]``.

    Work is in float32 (float64 for float64 logits). The target is a constant. Written as
    ``logsumexp(s) − Σ p·s + Σ p·log p`` (with ``s = logits/T``), whose gradient is ``softmax(s) − p``; autograd
    keeps ``s`` and ``p`` only (no log-softmax of the model is stored).
    """
    import torch

    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    s = logits.to(dtype)
    target = target_logits.detach().to(dtype)
    if temperature != 1:
        s, target = s / temperature, target / temperature
    with torch.no_grad():
        logp = torch.log_softmax(target, dim=-1)
        p = logp.exp()
        neg_entropy = torch.where(p > 0, p * logp, torch.zeros((), dtype=dtype, device=p.device)).sum(-1)
    return torch.logsumexp(s, dim=-1) - (p * s).sum(-1) + neg_entropy


# ---------------------------------------------------------------------------------------------------------------
# The regularizer the trainer holds.

def _field(cfg: Any, name: str, default):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _unwrap(model):
    """The module under DDP/FSDP/torch.compile wrappers (accelerate's `unwrap_model` does the same)."""
    while True:
        if hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def snapshot_model(model, dtype=None):
    """A frozen deep copy of `model` with its floating-point parameters in `dtype` (default: unchanged).

    Each parameter is copied straight into `dtype` (the copy never exists in the source precision as well), tied
    parameters stay tied, buffers are copied as they are, and no tensor is shared with `model`.
    """
    import torch

    model = _unwrap(model)
    memo: dict[int, Any] = {}
    for p in model.parameters():
        if id(p) in memo:
            continue
        data = p.detach()
        data = data.to(dtype, copy=True) if (dtype is not None and data.is_floating_point()) else data.clone()
        memo[id(p)] = torch.nn.Parameter(data, requires_grad=False)
    ref = copy.deepcopy(model, memo)
    if hasattr(ref, "merge_and_unload") and hasattr(ref, "peft_config"):
        ref = ref.merge_and_unload()
    ref.requires_grad_(False)
    ref.eval()
    return ref


@dataclass
class Regularizer:
    """KL or LSSD towards a reference; see the module docstring. Built by `build_regularizer`."""

    kind: str
    weight: float
    reference: str
    temperature: float
    ref_model: Any = None  # the frozen copy (reference="base"), else None

    def reference_hidden(self, input_ids, position_ids=None, attention_mask=None):
        """The reference's last hidden state ``[B, T, H]`` (no grad), or None when the reference is the model."""
        import torch

        if self.ref_model is None:
            return None
        device = input_ids.device
        first = next(self.ref_model.parameters(), None)
        if first is not None and first.device != device:
            self.ref_model.to(device)  # the trainer may move the model (accelerate) after building us
        kwargs = {"input_ids": input_ids, "use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        decoder = self.ref_model.get_decoder() if hasattr(self.ref_model, "get_decoder") else None
        with torch.no_grad():
            out = (decoder if decoder is not None else self.ref_model.base_model)(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def reference_logits(self, ref_hidden):
        """The reference's logits for hidden states ``[..., H]`` (no grad), with the model's logit post-processing."""
        import torch

        with torch.no_grad():
            logits = self.ref_model.get_output_embeddings()(ref_hidden)
            config = getattr(self.ref_model, "config", None)
            scale = getattr(self.ref_model, "logit_scale", None)  # e.g. Cohere
            if isinstance(scale, (int, float)) and scale != 1:
                logits = logits * scale
            cap = getattr(config, "final_logit_softcapping", None)  # e.g. Gemma 2
            if cap:
                logits = torch.tanh(logits / cap) * cap
        return logits

    def chunk_loss(self, model, logits, ref_hidden, labels):
        """SUM over the chunk's positions with ``labels != -100`` of the per-token KL (a scalar; grad to `logits`).

        `logits` ``[b, V]``: the model's logits for the chunk (grad flows). `ref_hidden` ``[b, H]``: the matching
        rows of `reference_hidden(...)` (None for reference="self"). `labels` ``[b]``: the next tokens.
        `model` is unused (the reference is either the snapshot or `logits` themselves); it is in the signature
        so that a reference computed from the live model stays possible.
        """
        import torch

        if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"chunk_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: "
                             f"expected [b, V] and [b]")
        valid = labels != IGNORE_INDEX
        if self.reference == "self":
            ref = logits.detach()
        else:
            if ref_hidden is None:
                raise ValueError("chunk_loss: reference='base' needs ref_hidden (from reference_hidden)")
            ref = self.reference_logits(ref_hidden)
            if ref.shape != logits.shape:
                raise ValueError(f"chunk_loss: reference logits {tuple(ref.shape)} and model logits "
                                 f"{tuple(logits.shape)} differ (different vocabularies?)")
        if self.kind == "lssd":
            ref = logit_swap_targets(ref, labels, check=False)
        per_token = kl_rows(ref, logits, self.temperature)
        return torch.where(valid, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)).sum()


def build_regularizer(cfg, model, reference_model=None) -> Regularizer:
    """A `Regularizer` from a `RegularizerConfig` (or a dict with its fields); call before the first step.

    reference="base" snapshots the model now, frozen, in `reference_precision`. When the model passed is not the
    base any more (a resumed run: its weights come from the checkpoint), pass the base as `reference_model`
    (a loaded model or an HF dir) and the snapshot is taken from it instead.
    """
    import torch

    kind = _field(cfg, "kind", None)
    weight = float(_field(cfg, "weight", 0.1))
    reference = _field(cfg, "reference", "base")
    precision = _field(cfg, "reference_precision", "fp32")
    temperature = float(_field(cfg, "temperature", 1.0))
    if kind not in KINDS:
        raise CptlabError(f"regularizer.kind: {kind!r}; expected one of {', '.join(KINDS)}")
    if reference not in REFERENCES:
        raise CptlabError(f"regularizer.reference: {reference!r}; expected one of {', '.join(REFERENCES)}")
    if precision not in PRECISIONS:
        raise CptlabError(f"regularizer.reference_precision: {precision!r}; expected one of "
                          f"{', '.join(PRECISIONS)}")
    if not temperature > 0:
        raise CptlabError(f"regularizer.temperature: {temperature}; must be > 0")
    if weight < 0:
        raise CptlabError(f"regularizer.weight: {weight}; must be >= 0")
    if kind == "kl" and reference == "self":
        raise CptlabError("regularizer.reference: 'self' with kind 'kl' is KL of the model to itself, always 0; "
                          "use reference 'base', or kind 'lssd' (whose swapped target differs from the model)")
    ref_model = None
    if reference == "base":
        dtype = getattr(torch, PRECISIONS[precision])
        if reference_model is None:
            ref_model = snapshot_model(model, dtype)
        elif isinstance(reference_model, (str, os.PathLike)):
            from cptlab.model import load_model

            ref_model = load_model(reference_model, dtype=precision)
            ref_model.requires_grad_(False)
            ref_model.eval()
            first = next(_unwrap(model).parameters(), None)
            if first is not None:
                ref_model.to(first.device)
        else:
            ref_model = snapshot_model(reference_model, dtype)
    return Regularizer(kind=kind, weight=weight, reference=reference, temperature=temperature, ref_model=ref_model)
