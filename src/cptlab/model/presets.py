"""Named tiny models built from a config (no download), sized to a tokenizer.

Sizes follow ../shared/RESEARCH-NOTES.md: `llama-tiny` (2 layers, 128 wide) trains at ~15 k tok/s on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from cptlab.errors import CptlabError


@dataclass(frozen=True)
class Preset:
    family: str  # "llama" | "gpt2"
    layers: int
    hidden: int
    heads: int
    ffn: int  # llama only (GPT-2 uses 4 * hidden)
    context: int


PRESETS: dict[str, Preset] = {
    # ~0.3 M non-embedding params: for unit tests.
    "llama-micro": Preset("llama", layers=2, hidden=64, heads=4, ffn=172, context=128),
    # The demo model (RESEARCH-NOTES: 1.44 M params with vocab 4096).
    "llama-tiny": Preset("llama", layers=2, hidden=128, heads=4, ffn=344, context=256),
    "llama-small": Preset("llama", layers=4, hidden=256, heads=8, ffn=688, context=256),
    # ~7 M params with vocab 8192: the trainer benchmark's model.
    "llama-7m": Preset("llama", layers=6, hidden=256, heads=8, ffn=688, context=256),
    "gpt2-micro": Preset("gpt2", layers=2, hidden=64, heads=4, ffn=256, context=128),
    "gpt2-tiny": Preset("gpt2", layers=2, hidden=128, heads=4, ffn=512, context=256),
}


def preset_config(name: str, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None,
                  context: int | None = None):
    """The transformers config of a preset, with the tokenizer's vocabulary and special ids."""
    from transformers import GPT2Config, LlamaConfig

    if name not in PRESETS:
        raise CptlabError(f"model preset {name!r} is unknown; known presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    ctx = context or p.context
    if p.family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=p.hidden,
            intermediate_size=p.ffn,
            num_hidden_layers=p.layers,
            num_attention_heads=p.heads,
            num_key_value_heads=p.heads,
            max_position_embeddings=ctx,
            rms_norm_eps=1e-5,
            initializer_range=0.02,
            tie_word_embeddings=True,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=p.hidden,
        n_layer=p.layers,
        n_head=p.heads,
        n_inner=p.ffn,
        n_positions=ctx,
        initializer_range=0.02,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def build_preset(name: str, tokenizer, seed: int = 0, context: int | None = None):
    """A freshly initialised model of preset `name`, with the tokenizer's vocab size and special tokens.

    The vocabulary is `len(tokenizer)` (base vocab plus added special tokens). Initialisation is seeded so the
    same preset, tokenizer and seed give the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = preset_config(
        name,
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        context=context,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def count_parameters(model, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
    seen: set[int] = set()
    total = 0
    emb = {id(p) for n, p in model.named_parameters() if "embed" in n or "wte" in n or "wpe" in n or "lm_head" in n}
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad) or (exclude_embeddings and id(p) in emb):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
