"""The fast suite's stand-in for a real hub model: a tiny random SmolLM2-shaped Llama (tied embeddings, GQA,
vocab 49152, SmolLM2's real tokenizer with its ChatML template) through `cptlab prepare`, `train` (full and LoRA)
and `eval`. Together ~15 s on one core of the dev machine (build ~5 s, each train + eval ~3-4 s)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.realmodel.helpers import (assert_hf_dir_like, cli, cpt_config, eval_ppl, reference_first_loss, train_losses,
                                    write_yaml)
from tests.realmodel.tiny_smollm import DATA, VOCAB


def test_structure_and_token_cache(tiny_smollm_dir, tiny_smollm_cache):
    """Tied embeddings survive save/load; the cache of a 49152-token vocabulary is uint16 and holds ids above
    32767 (nothing may treat them as signed); every id is below the vocabulary."""
    from cptlab.tokens.token_cache import open_tokens

    assert_hf_dir_like(tiny_smollm_dir, tiny_smollm_dir, (DATA / "chat_template.jinja").read_text())
    arr = open_tokens(tiny_smollm_cache, "docs", "train")
    assert arr.ids.dtype == np.uint16
    assert 32767 < int(arr.ids.max()) < VOCAB
    # the document separator is the tokenizer's EOS (<|im_end|>, id 2)
    assert int(arr.ids[int(arr.doc_offsets[1]) - 1]) == 2 or int(arr.ids[int(arr.doc_offsets[1])]) == 2


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}], ids=["full", "lora"])
def test_train_two_steps_then_eval(tiny_smollm_dir, tiny_smollm_cache, english_corpus, tmp_path, capsys, lora):
    """`cptlab train` 2 steps (bf16, chunked loss over 64 positions) + `cptlab eval` of final/. The first loss of a
    near-uniform random init is ln(49152); with the head tied, the head's gradient moves embedding rows of tokens
    that never occur in the batch (no weight decay), so training touched the tied matrix through the head too."""
    import torch
    from safetensors.torch import load_file

    over = {"max_steps": 2, "loss_chunk": 64, "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
            "eval": {"at_end": False}}
    if lora:
        over["lora"] = lora
    cfg = cpt_config(tiny_smollm_dir, tiny_smollm_cache, tmp_path / "run", **over)
    code = cli(["train", str(write_yaml(tmp_path / "cpt.yaml", cfg)), "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["steps"] == 2
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(VOCAB)) < 0.05, losses

    final = tmp_path / "run" / "final"
    assert_hf_dir_like(final, tiny_smollm_dir, (DATA / "chat_template.jinja").read_text())
    before = load_file(str(tiny_smollm_dir / "model.safetensors"))["model.embed_tokens.weight"]
    after = load_file(str(final / "model.safetensors"))["model.embed_tokens.weight"]
    if lora:  # LoRA on attention only: the (tied) embedding is frozen and saved unchanged
        assert torch.equal(before, after)
    else:
        seen = np.unique(np.asarray(__import__("cptlab.tokens.token_cache", fromlist=["x"])
                                    .open_tokens(tiny_smollm_cache, "docs", "train").ids))
        unseen = torch.ones(VOCAB, dtype=torch.bool)
        unseen[torch.from_numpy(seen.astype(np.int64))] = False
        moved = (after[unseen] != before[unseen]).any(dim=1).float().mean().item()
        assert moved > 0.99, moved

    ppl = eval_ppl(capsys, final, english_corpus, tmp_path, extra=["--max-documents", "3"])["domains"]["docs"]
    assert math.isfinite(ppl["token_perplexity"]) and ppl["token_perplexity"] > 1000  # still near-random


@pytest.mark.parametrize("chunk", [37, 4096])
def test_chunked_loss_with_tied_head_equals_transformers(tiny_smollm_dir, tiny_smollm_cache, tmp_path, monkeypatch,
                                                         chunk):
    """fp32, one step: the trainer's loss (chunked over `loss_chunk` positions, the head tied to the embedding,
    vocab 49152) equals plain transformers' full-logits loss on the same windows."""
    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")
    from cptlab.train import run

    cfg = cpt_config(tiny_smollm_dir, tiny_smollm_cache, tmp_path / "run", precision="fp32", max_steps=1,
                     loss_chunk=chunk, eval={"at_end": False}, checkpoint={"at_end": False})
    run(cfg)
    ref = reference_first_loss(tiny_smollm_dir, tiny_smollm_cache, tmp_path / "run")
    assert abs(train_losses(tmp_path / "run")[0] - ref) < 1e-5
