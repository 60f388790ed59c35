"""Shared fixtures: a small real-text corpus, a tokenizer trained on it, a tiny model saved as an HF dir.

Everything is built on the fly, offline; session-scoped so each test worker builds them once.
"""

from __future__ import annotations

import inspect
import json
import os
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CPTLAB_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # one thread per test worker


def _module_texts(names: list[str]) -> tuple[list[str], list[str]]:
    """(code chunks, docstring paragraphs) from stdlib modules: real text, present on every machine."""
    import importlib

    code, prose = [], []
    for name in names:
        mod = importlib.import_module(name)
        src = inspect.getsource(mod)
        for chunk in src.split("\n\n\n"):
            if chunk.strip():
                code.append(chunk.strip("\n"))
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc and len(doc) > 40:
                prose.append(textwrap.dedent(doc).strip())
    return code, prose


def write_corpus(root: Path, domains: dict[str, list[str]], fmt: str = "txt") -> Path:
    """M2D2 layout from lists of documents: 70/15/15 split per domain, in order."""
    for domain, docs in domains.items():
        d = root / domain
        d.mkdir(parents=True, exist_ok=True)
        n = len(docs)
        cut1, cut2 = int(n * 0.7), int(n * 0.85)
        for split, part in (("train", docs[:cut1]), ("valid", docs[cut1:cut2]), ("test", docs[cut2:])):
            if fmt == "txt":
                # Blank lines separate documents, so documents themselves must not contain blank lines.
                clean = ["\n".join(line for line in doc.split("\n") if line.strip()) for doc in part]
                (d / f"{split}.txt").write_text("\n\n".join(clean) + "\n", encoding="utf-8")
            else:
                with open(d / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for doc in part:
                        f.write(json.dumps({"text": doc}) + "\n")
    return root


@pytest.fixture(scope="session")
def corpus_docs() -> dict[str, list[str]]:
    code, prose = _module_texts(["json.decoder", "json.encoder", "textwrap", "string", "argparse"])
    return {"code": code[:120], "prose": prose[:120]}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, corpus_docs) -> Path:
    """Two domains (`code`, `prose`) of real stdlib text in M2D2 layout (.txt)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), corpus_docs)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, corpus_docs) -> Path:
    from cptlab.tokens.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [t for docs in corpus_docs.values() for t in docs]
    train_bpe(texts, vocab_size=512, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from cptlab.tokens.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A randomly initialised `llama-micro` saved as an HF dir with its tokenizer."""
    from cptlab.model import build_preset, save_model

    model = build_preset("llama-micro", tiny_tokenizer, seed=0)
    out = tmp_path_factory.mktemp("models") / "llama-micro"
    save_model(model, tiny_tokenizer, out)
    return out
