"""What a token cache holds on disk besides the ids: format version, entry manifests, the index, staleness.

An entry `CACHE/<domain>/<split>/` is current when its manifest's format version, tokenizer fingerprint, read
options (template included) and source record (settings + files' path, size, mtime_ns, sha256) match what a
build would write now. Size and mtime are compared first; a file's sha256 is computed only when those differ
(a touched but identical file is reused and its manifest refreshed) or when `verify_hash=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_write_json

FORMAT_VERSION = 1


def entry_dir(cache_dir: str | Path, domain: str, split: str) -> Path:
    return Path(cache_dir) / domain / split


def list_entries(cache_dir: str | Path) -> list[str]:
    """`domain/split` names of the complete entries under a cache dir."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in root.glob("*/*/manifest.json")
        if not p.parent.name.endswith((".tmp", ".old"))
    )


def stat_files(source) -> list[dict]:
    """`[{"path", "size", "mtime_ns"}]` of a plain source's files, without hashing (the cheap check)."""
    out = []
    for f in source.files:
        p = Path(f).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise CptlabError(f"{p}: cannot read ({e.strerror})") from None
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def source_settings(source) -> dict:
    settings = {k: getattr(source, k, None) for k in ("hf", "format", "text_field", "txt_mode")}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))  # as the manifest will hold it


def source_record(source) -> dict:
    """What an entry depends on: the source's settings and its files (path, size, mtime_ns, sha256)."""
    from cptlab.corpus import corpus_fingerprint_files

    files = [{k: f[k] for k in ("path", "size", "mtime_ns", "sha256")} for f in corpus_fingerprint_files(source)]
    return {**source_settings(source), "files": files}


def stale_reason(d: Path, source, tok_info: dict, options: dict, verify_hash: bool) -> str | None:
    """None when the entry at `d` is current; else why it must be (re)built. Refreshes touched mtimes."""
    from cptlab.corpus import sha256_file

    mpath = d / "manifest.json"
    if not mpath.is_file():
        return "new"
    try:
        m = read_json(mpath)
    except CptlabError:
        return "unreadable manifest"
    if m.get("format_version") != FORMAT_VERSION:
        return "format version"
    if m.get("tokenizer", {}).get("fingerprint") != tok_info["fingerprint"]:
        return "tokenizer changed"
    if (m.get("read_options") or {}).get("template") != options.get("template"):
        return "template changed"
    if m.get("read_options") != options:
        return "read options changed"
    old = m.get("source", {})
    if {k: old.get(k) for k in source_settings(source)} != source_settings(source):
        return "source settings changed"
    if getattr(source, "hf", None):  # a datasets spec: its local files, if any, hashed every time
        return None if source_record(source)["files"] == old.get("files") else "dataset files changed"
    now = stat_files(source)
    old_files = old.get("files", [])
    if [f["path"] for f in now] != [f["path"] for f in old_files]:
        return "source files changed"
    touched = False
    for new, prev in zip(now, old_files):
        if new["size"] != prev["size"]:
            return f"{new['path']} changed"
        if new["mtime_ns"] != prev["mtime_ns"] or verify_hash:
            if sha256_file(new["path"]) != prev.get("sha256"):
                return f"{new['path']} changed"
            if new["mtime_ns"] != prev["mtime_ns"]:
                prev["mtime_ns"] = new["mtime_ns"]
                touched = True
    bin_path = d / "tokens.bin"
    if not bin_path.is_file() or bin_path.stat().st_size != m["counts"]["tokens"] * np.dtype(m["dtype"]).itemsize:
        return "tokens.bin missing or truncated"
    if touched:  # same content, new mtime: remember it so the next check is cheap again
        atomic_write_json(mpath, m)
    return None




def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CptlabError(f"{path}: unreadable ({e})") from None


def write_index(cache_dir: Path) -> None:
    """`CACHE/cache.json`: every complete entry with its counts, rebuilt from the manifests on disk."""
    entries: dict[str, Any] = {}
    for name in list_entries(cache_dir):
        domain, split = name.split("/")
        try:
            m = read_json(entry_dir(cache_dir, domain, split) / "manifest.json")
        except CptlabError:
            continue
        entries[name] = {
            "domain": domain, "split": split, "path": f"{domain}/{split}",
            "documents": m["counts"]["documents"], "tokens": m["counts"]["tokens"],
            "dtype": m["dtype"], "vocab_size": m["vocab_size"], "eos_id": m["eos_id"], "max_id": m["max_id"],
            "tokenizer_fingerprint": m["tokenizer"]["fingerprint"],
        }
    atomic_write_json(cache_dir / "cache.json", {"format_version": FORMAT_VERSION, "entries": entries})


def read_index(cache_dir: str | Path) -> dict:
    """The `cache.json` of a cache dir (entries keyed `domain/split`)."""
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise CptlabError(f"{path}: not found; is {cache_dir} a token cache (made by `cptlab prepare`)?")
    return read_json(path)
