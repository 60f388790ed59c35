"""SFT data: which tokens are targets (token by token, against independent encodings), and bad input -> FILE:LINE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptlab.errors import CptlabError
from cptlab.sft.config import SFTDataConfig
from cptlab.sft.data import encode_pair, load_sft_data
from tests.sft.conftest import write_jsonl


def cfg(**over) -> SFTDataConfig:
    return SFTDataConfig(train="unused.jsonl", **over)


def test_prompt_tokens_are_never_targets(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Question: what is 2+2?\nAnswer:", "response": " four"},
            {"prompt": "Name a colour. ", "response": "blue, or any other"},  # trailing space moves to the response
            {"prompt": "x", "response": "a much longer response that spans many tokens of the tiny BPE vocabulary"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_sft_data(path, tiny_tokenizer, cfg(), seq_len=128)
    eos = tiny_tokenizer.eos_token_id
    for row, ex in zip(rows, data.examples):
        prompt = row["prompt"].rstrip()
        response = row["prompt"][len(prompt):] + row["response"]
        # independently: the prompt alone, and the whole text, encoded by the tokenizer itself
        p_ids = tiny_tokenizer(prompt)["input_ids"]
        whole = tiny_tokenizer(prompt + response)["input_ids"]
        assert ex.ids.tolist() == whole + [eos]
        for j, (tok, is_target) in enumerate(zip(ex.ids.tolist(), ex.target.tolist())):
            assert is_target == (j >= len(p_ids)), f"token {j} ({tiny_tokenizer.decode([tok])!r}): target={is_target}"
        decoded = tiny_tokenizer.decode(ex.ids[ex.target].tolist()[:-1])
        assert decoded == response  # the targets are exactly the response (+ EOS)
        assert ex.targets == len(whole) - len(p_ids) + 1


def test_encode_pair_matches_lm_eval(tiny_model_dir, tiny_tokenizer):
    """The split of (prompt, response) into ids is lm-evaluation-harness's (_encode_pair of HFLM)."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_model_dir), backend="causal", batch_size=1, device="cpu")
    for prompt, response in [("Question: x?\nAnswer:", " yes"), ("Say it twice ", "twice twice"), ("a", "b c")]:
        assert encode_pair(tiny_tokenizer, prompt, response) == tuple(lm._encode_pair(prompt, response))


def test_chat_masks_only_assistant_turns(tmp_path, chat_tokenizer):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is json?"},
            {"role": "assistant", "content": "A text format."}, {"role": "user", "content": "And csv?"},
            {"role": "assistant", "content": "Comma separated values."}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": conv}])
    ex = load_sft_data(path, chat_tokenizer, cfg(), seq_len=256).examples[0]
    text = chat_tokenizer.apply_chat_template(conv, tokenize=False)
    assert ex.ids.tolist() == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    # the targets, decoded run by run, are the assistant turns with their end-of-turn marker
    runs, cur = [], []
    for tok, t in zip(ex.ids.tolist(), ex.target.tolist()):
        if t:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    got = [chat_tokenizer.decode(r) for r in runs]
    assert got == ["A text format.<|im_end|>\n", "Comma separated values.<|im_end|>\n"]


def test_prompt_response_through_chat_template(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "response": "Hello there"}])
    ex = load_sft_data(path, chat_tokenizer, cfg(chat_template=True), seq_len=64).examples[0]
    assert chat_tokenizer.decode(ex.ids[ex.target].tolist()) == "Hello there<|im_end|>\n"
    assert chat_tokenizer.decode(ex.ids[~ex.target].tolist()).startswith("<|im_start|>user\nHi<|im_end|>")


def test_long_response_is_cut_and_counted(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "Q:", "response": " word" * 200},
                                              {"prompt": "Q:", "response": " ok"}])
    data = load_sft_data(path, tiny_tokenizer, cfg(), seq_len=32)
    assert data.truncated == 1 and len(data.examples[0].ids) == 33 and data.examples[0].positions == 32


BAD = [
    ({"response": "x"}, r"bad\.jsonl:2: missing field 'prompt'"),
    ({"prompt": "x"}, r"bad\.jsonl:2: missing field 'response'"),
    ({"prompt": "x", "response": "   "}, r"bad\.jsonl:2: empty 'response'"),
    ({"prompt": "x", "response": 3}, r"bad\.jsonl:2: field 'response' must be a string"),
    ({"prompt": "word " * 200, "response": "y"}, r"bad\.jsonl:2: the prompt is \d+ tokens, longer than the context"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"bad\.jsonl:2: field 'messages': no assistant message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     r"bad\.jsonl:2: messages\[1\]: empty assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, r"bad\.jsonl:2: messages\[0\]: role 'robot'"),
    ({"messages": [{"content": "hi"}]}, r"bad\.jsonl:2: messages\[0\]: missing field 'role'"),
    ({"text": "plain"}, r"bad\.jsonl:2: no 'prompt'/'response' fields and no 'messages' list"),
    ("[1, 2]", r"bad\.jsonl:2: expected a JSON object, got list"),
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
]


@pytest.mark.parametrize("row,message", BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_bad_input_names_file_and_line(tmp_path, chat_tokenizer, row, message):
    good = json.dumps({"prompt": "Q:", "response": " fine"})
    bad = row if isinstance(row, str) else json.dumps(row)
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + bad + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(CptlabError, match=message):
        load_sft_data(path, chat_tokenizer, cfg(), seq_len=64)
    data = load_sft_data(path, chat_tokenizer, cfg(skip_invalid=True), seq_len=64)  # or skipped and counted
    assert len(data.examples) == 2 and sum(data.skipped.values()) == 1 and [e.line for e in data.examples] == [1, 3]


def test_messages_need_a_chat_template(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "b"}]}])
    with pytest.raises(CptlabError, match=r"m\.jsonl:1: a 'messages' row needs a chat template"):
        load_sft_data(path, tiny_tokenizer, cfg(), seq_len=64)


def test_empty_and_missing_files(tmp_path, tiny_tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CptlabError, match=r"data\.train: .*empty\.jsonl: no examples"):
        load_sft_data(tmp_path / "empty.jsonl", tiny_tokenizer, cfg(), seq_len=64)
    with pytest.raises(CptlabError, match=r"data\.valid: .*nope\.jsonl: not found"):
        load_sft_data(tmp_path / "nope.jsonl", tiny_tokenizer, cfg(), seq_len=64, what="data.valid")


def test_example_arrays(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q:", "response": " A"}])
    ex = load_sft_data(path, tiny_tokenizer, cfg(add_eos=False), seq_len=64).examples[0]
    assert ex.ids.dtype == np.int64 and ex.target.dtype == bool and ex.ids[-1] != tiny_tokenizer.eos_token_id
