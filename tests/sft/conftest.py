"""Fixtures for SFT: prompt/response and chat jsonl built from real stdlib text, a ChatML template, configs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from tests.train.conftest import apply_over

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qa_pairs(n: int = 60) -> list[tuple[str, str]]:
    """(question, answer) pairs: 'What does json.dumps do?' -> the first line of its docstring."""
    import argparse
    import json as json_mod
    import string
    import textwrap

    pairs = []
    for mod in (json_mod, textwrap, string, argparse, inspect):
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = (inspect.getdoc(obj) or "").strip().split("\n")[0].strip()
            if len(doc) > 12:
                pairs.append((f"What does {mod.__name__}.{name} do?", doc))
    return pairs[:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory) -> dict[str, Path]:
    """train/valid prompt-response files and a chat (messages) file of the same pairs."""
    root = tmp_path_factory.mktemp("sft")
    pairs = qa_pairs()
    rows = [{"prompt": f"Question: {q}\nAnswer:", "response": f" {a}"} for q, a in pairs]
    chat = [{"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in pairs]
    return {"train": write_jsonl(root / "train.jsonl", rows[:48]), "valid": write_jsonl(root / "valid.jsonl", rows[48:]),
            "chat": write_jsonl(root / "chat.jsonl", chat[:48]), "root": root}


@pytest.fixture(scope="session")
def chatml_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("template") / "chatml.jinja"
    p.write_text(CHATML, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_tokenizer_dir):
    """The tiny BPE with the ChatML template and its two special tokens."""
    from cptlab.tokens.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def sft_config(out_dir, model_dir, files, **over) -> dict:
    cfg = {
        "kind": "sft",
        "model": {"name": str(model_dir)},
        "data": {"train": str(files["train"]), "valid": str(files["valid"]), "seq_len": 128},
        "optimizer": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "batch_size": 4,
        "max_steps": 8,
        "eval": {"at_end": True},
        "checkpoint": {"at_end": True},
        "out_dir": str(out_dir),
        "seed": 3,
        "tensorboard": False,
        "quiet": True,
    }
    return apply_over(cfg, over)


@pytest.fixture
def sft_base(tmp_path, tiny_model_dir, sft_files):
    def make(name="sft", **over) -> dict:
        return sft_config(tmp_path / name, tiny_model_dir, sft_files, **over)

    return make
