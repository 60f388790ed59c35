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

    PEFT (LoRA) models are merged into plain weights first, so the result needs no peft to load.
    """
    out_dir = Path(out_dir)
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        _quiet_hf_bars()
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir
