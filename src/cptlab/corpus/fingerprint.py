"""Fingerprints of a corpus's source files (size, mtime, sha256), for caches that must notice a changed source."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cptlab.errors import CptlabError


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file, read in `block`-byte chunks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                h.update(chunk)
    except OSError as e:
        raise CptlabError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def _files_of(source) -> list[Path]:
    from cptlab.corpus.layout import Corpus, SplitSource

    if isinstance(source, Corpus):
        files = {str(Path(f).resolve()) for s in source.sources() for f in _files_of(s)}
        return [Path(f) for f in sorted(files)]  # by path string: the order `ls -R | sort` shows
    if isinstance(source, SplitSource):
        if source.hf:
            return _local_hf_files(source.hf)
        return [Path(f) for f in source.files]
    if isinstance(source, (str, Path)):
        return [Path(source)]
    return [Path(f) for f in source]


def _local_hf_files(hf: dict) -> list[Path]:
    """The local files behind a datasets spec (a local folder or local data_files); [] for a hub dataset."""
    out: list[Path] = []
    p = Path(hf["path"])
    if p.is_dir():
        out += sorted(f for f in p.rglob("*") if f.is_file() and not any(x.startswith(".") for x in
                                                                        f.relative_to(p).parts))
    files = hf.get("data_files")
    if files:
        items = files.values() if isinstance(files, dict) else [files]
        for item in items:
            for f in [item] if isinstance(item, str) else item:
                if Path(f).is_file():
                    out.append(Path(f))
    return out


def corpus_fingerprint_files(source) -> list[dict]:
    """`[{"path", "size", "mtime", "mtime_ns", "sha256"}]` for the files a source reads, in reading order.

    `source`: a `SplitSource` (a datasets spec gives its local files, none for a hub dataset), a `Corpus` (every
    file once, sorted by its absolute path as a string), a path, or a list of paths. Paths are absolute; sha256 is streamed in 1 MiB chunks.
    """
    out = []
    for f in _files_of(source):
        p = Path(f).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise CptlabError(f"{p}: cannot read ({e.strerror or e})") from None
        out.append({"path": str(p), "size": st.st_size, "mtime": st.st_mtime, "mtime_ns": st.st_mtime_ns,
                    "sha256": sha256_file(p)})
    return out
