"""Supervised fine-tuning data: prompt/response or chat jsonl -> token ids with a loss mask (response only).

One example per line, in one of two forms (`data.format: auto` takes whichever fields the line has):

    {"prompt": "Translate: chat", "response": "cat"}                       # prompt-response
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}

Prompt-response rows are encoded as lm-evaluation-harness encodes a (context, continuation) pair: the tokenizer
encodes the prompt, then prompt + response, and the response tokens are the tail of the second encoding (trailing
spaces of the prompt move to the response first). So tokenizers that add a prefix space or merge across the
boundary give the same ids as at generation time, and the prompt gets the tokenizer's BOS if it adds one. EOS
follows the response (`add_eos`) and is a target: the model learns to stop.

Messages rows go through the tokenizer's chat template (or prompt-response rows, with `chat_template: true`).
An assistant turn's tokens are those between the rendering of the conversation before it (with the generation
prompt) and the rendering up to and including it; every rendering must be a token prefix of the whole
conversation, which holds for templates that put special tokens at turn boundaries (ChatML, Llama 3, ...). Only
assistant turns are targets, their end-of-turn token included.

Bad input stops with FILE:LINE and what is wrong (or, with `skip_invalid`, is skipped and counted): broken JSON,
missing or non-string fields, an empty response, a conversation without an assistant turn, and a prompt that
leaves no room for a response in `seq_len` positions. Responses that do not fit are cut at `seq_len` (counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    ids: np.ndarray  # int64 [n]: the whole example, prompt and response
    target: np.ndarray  # bool [n]: True where the token is a response token (its prediction has a loss)
    line: int  # 1-based line of the source file

    @property
    def positions(self) -> int:
        """Sequence positions the example takes when packed: inputs ids[:-1], labels ids[1:]."""
        return len(self.ids) - 1

    @property
    def targets(self) -> int:
        return int(self.target[1:].sum())


@dataclass
class SFTData:
    path: Path
    examples: list[SFTExample]
    lines: int = 0  # non-blank lines read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (skip_invalid)
    truncated: int = 0  # examples whose response was cut to fit seq_len
    format_counts: dict[str, int] = field(default_factory=dict)

    @property
    def max_id(self) -> int:
        return max((int(e.ids.max()) for e in self.examples), default=-1)

    def summary(self) -> dict:
        return {"path": str(self.path), "lines": self.lines, "examples": len(self.examples),
                "skipped": dict(self.skipped), "truncated": self.truncated, "formats": dict(self.format_counts),
                "tokens": int(sum(len(e.ids) for e in self.examples)),
                "target_tokens": int(sum(e.targets for e in self.examples))}


class _Bad(Exception):
    """One line's problem; becomes FILE:LINE: message (or a counted skip)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _text_field(row: dict, name: str) -> str:
    if name not in row:
        raise _Bad("missing field", f"missing field {name!r} (fields: {', '.join(map(repr, row)) or 'none'})")
    value = row[name]
    if not isinstance(value, str):
        raise _Bad("bad field", f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _row_format(row: dict, cfg) -> str:
    if cfg.format != "auto":
        return cfg.format
    if cfg.messages_field in row:
        return "messages"
    if cfg.prompt_field in row or cfg.response_field in row:
        return "prompt-response"
    raise _Bad("missing field", f"no {cfg.prompt_field!r}/{cfg.response_field!r} fields and no "
                                f"{cfg.messages_field!r} list (fields: {', '.join(map(repr, row)) or 'none'})")


def _messages(row: dict, name: str) -> list[dict]:
    if name not in row:
        raise _Bad("missing field", f"missing field {name!r}")
    msgs = row[name]
    if not isinstance(msgs, list) or not msgs:
        raise _Bad("bad field", f"field {name!r} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(msgs):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise _Bad("bad field", f"{where} must be an object with 'role' and 'content'")
        for key in ("role", "content"):
            if key not in m:
                raise _Bad("missing field", f"{where}: missing field {key!r}")
        if m["role"] not in ROLES:
            raise _Bad("bad field", f"{where}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise _Bad("bad field", f"{where}: 'content' must be a string")
        if m["role"] == "assistant" and not m["content"].strip():
            raise _Bad("empty response", f"{where}: empty assistant message")
        out.append(m)
    if not any(m["role"] == "assistant" for m in out):
        raise _Bad("no response", f"field {name!r}: no assistant message (nothing to learn)")
    return out


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) as lm-evaluation-harness splits a context/continuation pair."""
    n_spaces = len(prompt) - len(prompt.rstrip())
    if n_spaces > 0:
        response = prompt[-n_spaces:] + response
        prompt = prompt[:-n_spaces]
    whole = _encode(tokenizer, prompt + response, True)
    context = _encode(tokenizer, prompt, True)
    return whole[: len(context)], whole[len(context):]


def _prompt_response(tokenizer, prompt: str, response: str, add_eos: bool) -> tuple[list[int], list[bool]]:
    p, r = encode_pair(tokenizer, prompt, response)
    if add_eos and tokenizer.eos_token_id is not None:
        r = r + [int(tokenizer.eos_token_id)]
    return p + r, [False] * len(p) + [True] * len(r)


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    try:
        full = _encode(tokenizer, _render(tokenizer, messages, False), False)
    except Exception as e:  # a template that raises (e.g. roles it does not allow)
        raise _Bad("chat template", f"the chat template failed on this conversation: {e}") from None
    target = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _encode(tokenizer, _render(tokenizer, messages[:i], True), False) if i else []
        upto = _encode(tokenizer, _render(tokenizer, messages[: i + 1], False), False)
        for part, what in ((before, f"before message {i}"), (upto, f"up to message {i}")):
            if full[: len(part)] != part:
                raise _Bad("chat template", f"the chat template's rendering of the conversation {what} is not a "
                                            f"token prefix of the whole conversation; use prompt/response rows")
        for j in range(len(before), len(upto)):
            target[j] = True
    return full, target


def encode_example(tokenizer, row: dict, cfg) -> tuple[list[int], list[bool], str]:
    """(ids, target mask, format) of one parsed jsonl row; raises _Bad on invalid content."""
    fmt = _row_format(row, cfg)
    if fmt == "messages":
        if not getattr(tokenizer, "chat_template", None):
            raise _Bad("chat template", f"a {cfg.messages_field!r} row needs a chat template, and the tokenizer "
                                        f"has none (set data.chat_template_file, or use prompt/response rows)")
        if cfg.chat_template is False:
            raise _Bad("chat template", "a messages row with data.chat_template: false")
        ids, target = _chat(tokenizer, _messages(row, cfg.messages_field))
    else:
        prompt, response = _text_field(row, cfg.prompt_field), _text_field(row, cfg.response_field)
        if not response.strip():
            raise _Bad("empty response", f"empty {cfg.response_field!r}")
        if cfg.chat_template is True:
            if not getattr(tokenizer, "chat_template", None):
                raise _Bad("chat template", "data.chat_template: true, but the tokenizer has no chat template")
            ids, target = _chat(tokenizer, [{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}])
        else:
            ids, target = _prompt_response(tokenizer, prompt, response, cfg.add_eos)
    return ids, target, fmt


def load_sft_data(path: str | Path, tokenizer, cfg, seq_len: int, what: str = "data.train") -> SFTData:
    """Read, validate and tokenize a jsonl file of SFT examples (see the module doc)."""
    from cptlab.corpus.textio import iter_lines

    p = Path(path).expanduser()
    if not p.is_file():
        raise CptlabError(f"{what}: {p}: not found")
    data = SFTData(p, [])
    for line in iter_lines(p):
        text = line.text.strip()
        if not text:
            continue
        data.lines += 1
        try:
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise _Bad("broken JSON", f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise _Bad("bad row", f"expected a JSON object, got {type(row).__name__}")
            ids, target, fmt = encode_example(tokenizer, row, cfg)
            first = target.index(True) if True in target else len(target)
            if first < 1:
                raise _Bad("no prompt", "the response starts at the first token: nothing to condition on "
                                        "(the tokenizer adds no BOS and the prompt is empty)")
            if first >= seq_len:
                raise _Bad("prompt too long", f"the prompt is {first} tokens, longer than the context "
                                              f"(data.seq_len {seq_len}): no room for the response")
        except _Bad as bad:
            if cfg.skip_invalid:
                data.skipped[bad.reason] = data.skipped.get(bad.reason, 0) + 1
                continue
            raise CptlabError(f"{p}:{line.number}: {bad}") from None
        if len(ids) > seq_len + 1:
            ids, target = ids[: seq_len + 1], target[: seq_len + 1]
            data.truncated += 1
        data.format_counts[fmt] = data.format_counts.get(fmt, 0) + 1
        data.examples.append(SFTExample(np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=bool),
                                        line.number))
    if not data.examples:
        skipped = f" ({sum(data.skipped.values())} invalid lines skipped)" if data.skipped else ""
        raise CptlabError(f"{what}: {p}: no examples{skipped}")
    return data
