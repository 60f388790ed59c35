"""Turn a GGUF file (llama.cpp's format) into a plain HF dir: weights dequantized to float32 by transformers.

The tokenizer (with its chat template) comes from the GGUF metadata; the embeddings stay tied exactly when the GGUF
has no separate `output.weight` tensor (llama.cpp stores a tied head once). The result is a normal cptlab model dir:
`cptlab train/eval/sft/eval-tasks --model OUT` and `AutoModelForCausalLM.from_pretrained(OUT)` load it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cptlab.errors import CptlabError

GGUF_MAGIC = b"GGUF"


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise CptlabError("reading GGUF files needs the `gguf` package: pip install gguf "
                          "(or pip install 'cptlab[real]')")


def _check_file(gguf_file: Path) -> None:
    if not gguf_file.is_file():
        raise CptlabError(f"GGUF file {gguf_file}: not found")
    with open(gguf_file, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CptlabError(f"GGUF file {gguf_file}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


def gguf_info(gguf_file: str | Path) -> dict:
    """What the GGUF itself says: architecture, vocabulary size, whether the output head is tied, tensor count."""
    _require_gguf()
    gguf_file = Path(gguf_file).expanduser()
    _check_file(gguf_file)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_file))
    except Exception as e:  # noqa: BLE001 - a corrupt file raises anything from struct/numpy
        raise CptlabError(f"GGUF file {gguf_file}: could not be read: {e}") from None
    names = {t.name for t in reader.tensors}

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        value = f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]
        return value

    arch = field("general.architecture")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "vocab_size": len(tokens.data) if tokens is not None else None,
        "tied_embeddings": "output.weight" not in names,
        "chat_template": field("tokenizer.chat_template"),
        "tensors": len(names),
    }


def load_gguf(gguf_file: str | Path, dtype: str = "fp32"):
    """(model, tokenizer) straight from a GGUF file through transformers (weights dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptlab.model.io import DTYPES, _quiet_hf_bars

    _require_gguf()
    gguf_file = Path(gguf_file).expanduser().resolve()
    _check_file(gguf_file)
    if dtype not in DTYPES:
        raise CptlabError(f"precision {dtype!r}: expected one of fp32, bf16, fp16")
    _quiet_hf_bars()
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, DTYPES[dtype]))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CptlabError(f"GGUF file {gguf_file}: transformers could not load it: {first}") from None
    return model, tok


def gguf_to_hf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """Dequantize `gguf_file` into an HF dir at `out_dir` (config + safetensors + tokenizer with chat template).

    The saved config has no `quantization_config` (the weights are plain tensors now), and
    `tie_word_embeddings` is what the GGUF says. Returns `out_dir`.
    """
    from cptlab.model.io import save_model

    info = gguf_info(gguf_file)
    model, tok = load_gguf(gguf_file, dtype=dtype)
    tied = info["tied_embeddings"]
    # The weights are dequantized: the saved dir must load as an ordinary model, not through the GGUF quantizer.
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    model.is_quantized = False
    model.config.tie_word_embeddings = tied
    if tied:
        model.tie_weights()
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if tied and head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
        raise CptlabError(f"GGUF file {gguf_file}: the GGUF ties the output head to the embeddings but the "
                          f"loaded model does not")
    if getattr(tok, "chat_template", None) is None and info.get("chat_template"):
        tok.chat_template = info["chat_template"]
    model.config.name_or_path = ""
    for key in ("local_files_only", "is_local"):  # how this GGUF happened to be loaded, not part of the tokenizer
        tok.init_kwargs.pop(key, None)
    return save_model(model, tok, out_dir)
