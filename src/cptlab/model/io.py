"""Load any HF causal LM (local dir or hub name) and save one as an HF dir (config + safetensors + tokenizer)."""

from __future__ import annotations

from pathlib import Path

from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_dir

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def _looks_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def _quiet_hf_bars() -> None:
    """transformers' own bars ("Loading weights", "Writing model shards") only where cptlab shows bars."""
    import sys

    from transformers.utils import logging as hf_logging

    from cptlab.console import is_quiet

    if is_quiet() or not sys.stderr.isatty():
        hf_logging.disable_progress_bar()


def load_model(name_or_path: str | Path, dtype: str = "fp32", trust_remote_code: bool = False, device=None):
    """A causal LM from a local HF dir or a hub name (hub names need network or the HF cache).

    `trust_remote_code` stays off unless the user asks: a model's own code is never run by default.
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise CptlabError(f"model {name}: directory not found")
    if dtype not in DTYPES:
        raise CptlabError(f"precision {dtype!r}: expected one of fp32, bf16, fp16")
    _quiet_hf_bars()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(Path(name).expanduser()) if _looks_local(name) else name,
            dtype=getattr(torch, DTYPES[dtype]),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CptlabError(f"model {name}: could not load a causal LM: {first}") from None
    if device is not None:
        model.to(device)
    return model


def load_model_and_tokenizer(name_or_path: str | Path, dtype: str = "fp32", trust_remote_code: bool = False,
                             tokenizer: str | Path | None = None, device=None):
    """The model and its tokenizer (from the model dir unless `tokenizer` names another)."""
    from cptlab.tokens.tokenizer import load_tokenizer

    model = load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    tok = load_tokenizer(tokenizer or name_or_path, trust_remote_code=trust_remote_code)
    check_vocab(model, len(tok) - 1, f"tokenizer {tokenizer or name_or_path}")
    return model, tok


def check_vocab(model, max_token_id: int, source: str) -> None:
    """Guard: every token id the model will see must have an embedding row."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if max_token_id >= vocab:
        raise CptlabError(
            f"{source}: token id {max_token_id} does not fit the model's vocabulary of {vocab} "
            f"(the tokenizer or token cache was made for another model)"
        )


def save_model(model, tokenizer, out_dir: str | Path, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write an HF dir atomically: `AutoModelForCausalLM.from_pretrained(out_dir)` loads identical logits.

    PEFT (LoRA) models are merged into plain weights first, so the result needs no peft to load. When LoRA adapts
    an embedding matrix that the model ties to its output head (`lora.target_modules` naming `lm_head` or
    `embed_tokens`), the two are no longer equal in the trained model, so the saved one is untied.
    """
    out_dir = Path(out_dir)
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        untied = _untied_embeddings_of_tied_lora(model)
        model = copy.deepcopy(model).merge_and_unload()
        if untied is not None:
            _set_untied_embeddings(model, *untied)
    with atomic_dir(out_dir) as tmp:
        _quiet_hf_bars()
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir


def _untied_embeddings_of_tied_lora(peft_model):
    """(input embedding, output head) weights as the PEFT model computes them, when the base ties the two and a
    LoRA layer wraps either; None otherwise. Taken from the modules' forward (one-hot inputs), so it is what
    training used: a LoRA delta on the embedding lookup does not reach the head, nor a head delta the lookup."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    if head is None or not getattr(config, "tie_word_embeddings", False):
        return None
    if not (isinstance(emb, LoraLayer) or isinstance(head, LoraLayer)):
        return None
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            emb_w = emb.get_base_layer().weight if isinstance(emb, LoraLayer) else emb.weight
            vocab, dim = emb_w.shape
            e = emb(torch.arange(vocab, device=emb_w.device)) if isinstance(emb, LoraLayer) else emb_w
            if isinstance(head, LoraLayer):
                eye = torch.eye(dim, dtype=emb_w.dtype, device=emb_w.device)
                h = head(eye)
                bias = getattr(head.get_base_layer(), "bias", None)
                if bias is not None:
                    h = h - bias
                h = h.T
            else:
                h = emb_w
            return e.detach().clone().contiguous(), h.detach().clone().contiguous()
    finally:
        base.train(was_training)


def _set_untied_embeddings(model, emb_weight, head_weight) -> None:
    import torch

    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    for cfg in configs:
        cfg.tie_word_embeddings = False
    model.get_input_embeddings().weight = torch.nn.Parameter(emb_weight, requires_grad=False)
    model.get_output_embeddings().weight = torch.nn.Parameter(head_weight, requires_grad=False)
