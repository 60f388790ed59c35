"""The demo corpora: a multi-domain M2D2 corpus built from real text on this machine, written by others.

Domains (each from one kind of source; `general` ones form the pretraining mix, `held_out` ones are adapted to):

    stdlib_core   general   Python standard library source, except tests, GUI code, codec tables, pydoc data
    stdlib_tests  general   Lib/test and the packages' test/ and tests/ folders
    changelogs    general   /usr/share/doc/*/changelog*.gz (Debian and upstream changelogs)
    man_en        general   English man pages /usr/share/man/man*/ (roff converted to text)
    gui_code      held_out  idlelib, tkinter, turtledemo, turtle.py
    pydoc_topics  held_out  the prose of pydoc_data/topics.py, one document per topic
    docstrings    held_out  docstrings (read with `ast`, nothing is imported) of the core modules that
                            stdlib_core did not use, one document per module: disjoint from stdlib_core by file
    legal         held_out  /usr/share/doc/*/copyright and /usr/share/common-licenses/*
    man_de_fr     held_out  German and French man pages /usr/share/man/{de,fr}/man*/

How documents are made: one document per file (per topic for pydoc_topics, per module for docstrings). The text is
decoded as strict UTF-8 (a file that is not is skipped and counted), line breaks are normalised to "\\n", control
characters other than tab are removed, trailing blanks are cut from every line and **blank or whitespace-only lines
are dropped**, because in the .txt layout a blank line separates documents (so paragraphs inside a document are no
longer separated by an empty line; nothing else is inserted). A document longer than `max_file_bytes` (UTF-8) is cut
at the last line break before the limit and counted as truncated. Documents with identical text (byte-identical
files included) are kept once; the others are counted as duplicates.

Split: sha256(f"{seed}:{key}") of the document's key (its file path relative to its source root, plus the topic
name for pydoc topics) puts it in train/valid/test (80/8/12). A second, independent part of the same hash orders
the documents when a domain's byte cap is applied: documents are taken in that order until the next one would
pass the cap, so the cap keeps an unbiased sample of files and the split proportions. In each split file the
documents are sorted by key. A domain with fewer than `min_documents` documents or an empty split is dropped and
recorded in the manifest's `dropped` with the reason (also when its source is missing on this machine).

Beside the domains: `manifest.json` (settings, source fingerprints, per-domain counts) and `provenance.json`
(domain -> split -> the key of each document, in file order: which file every document came from).
"""

from __future__ import annotations

import ast
import bz2
import glob
import gzip
import hashlib
import lzma
import os
import re
import stat
import sysconfig
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cptlab.demo.roff import roff_to_text
from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_dir, atomic_write_json

FORMAT = "cptlab-demo-corpus/1"
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.08, "test": 0.12}
GENERAL = ("stdlib_core", "stdlib_tests", "changelogs", "man_en")
# Per-domain byte caps (all splits together), measured with a 4096-token BPE trained on the general train splits:
# ~0.6-0.75 M train tokens per general domain (a ~2.6 M token pretraining mix, as in RESEARCH-NOTES) and
# ~0.1-0.6 M per held-out domain (pydoc_topics and docstrings are smaller: all there is), enough for a ~200 k
# token adaptation run.
DEFAULT_CAPS = {"stdlib_core": 2_500_000, "stdlib_tests": 2_500_000, "changelogs": 2_500_000, "man_en": 2_500_000,
                "gui_code": 1_500_000, "pydoc_topics": 1_500_000, "docstrings": 1_500_000, "legal": 1_500_000,
                "man_de_fr": 1_500_000}
DOMAINS = tuple(DEFAULT_CAPS)

_GUI = ("idlelib/", "tkinter/", "turtledemo/", "turtle.py")
_PRUNE = ("site-packages/", "dist-packages/", "encodings/", "lib-dynload/", "config-3")  # never walked into
_NOT_CORE = _PRUNE + ("pydoc_data/",)


class _Skip(Exception):
    """A unit that gives no document; the message is the reason counted in the manifest."""


@dataclass
class _Unit:
    key: str  # relative path (+ "#topic"): what the split and the order are hashed from
    load: Callable[[], str]


@dataclass
class _Plan:
    """What one domain reads: its units, the files behind them (fingerprint) and how to describe them."""

    name: str
    source: list[str]  # "stdlib:<glob>" descriptions for the manifest
    files: list[tuple[str, Path, int]] = field(default_factory=list)  # (key, path, size)
    units: Callable[[], list[_Unit]] | None = None
    unit: str = "file"
    missing: str | None = None  # why there is nothing to read


def default_sources() -> dict[str, str]:
    return {"stdlib": sysconfig.get_paths()["stdlib"], "doc": "/usr/share/doc",
            "licenses": "/usr/share/common-licenses", "man": "/usr/share/man"}


# ---------------------------------------------------------------- reading and cleaning

_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufeff]")


def clean_text(text: str) -> str:
    """Normalise line breaks, drop control characters, trailing blanks and every blank/whitespace-only line."""
    text = _CONTROL.sub("", _BREAKS.sub("\n", text))
    return "\n".join(s for s in (line.rstrip() for line in text.split("\n")) if s)


def clean_head(text: str, max_bytes: int) -> str:
    """clean_text(text), or, for a text far longer than `max_bytes`, the clean text of a head of whole lines
    that is already longer than `max_bytes`: truncate() gives the same document from both, faster."""
    limit = 4 * max_bytes + 1
    if len(text) > limit and (nl := text.rfind("\n", 0, limit)) > 0:
        head = clean_text(text[:nl])  # whole lines only: a prefix, line by line, of clean_text(text)
        if len(head.encode("utf-8")) > max_bytes:
            return head
    return clean_text(text)


def truncate(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cut `text` to at most `max_bytes` UTF-8 bytes, at the last line break before the limit if there is one."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text, False
    cut = data[:max_bytes].decode("utf-8", errors="ignore")
    nl = cut.rfind("\n")
    return (cut[:nl] if nl > 0 else cut).rstrip(), True


def read_text(path: Path) -> str:
    """A (possibly gzip/bz2/xz compressed) file as strict UTF-8 text; _Skip("binary"/"undecodable") otherwise."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise _Skip("unreadable") from e
    if b"\x00" in data:
        raise _Skip("binary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Skip("undecodable") from e


def _man_page(path: Path) -> str:
    text = roff_to_text(read_text(path))
    if text is None:
        raise _Skip("redirect")
    return text


def _parse_python(path: Path) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(read_text(path), filename=str(path))
        except (SyntaxError, ValueError) as e:
            raise _Skip("unparsable") from e


def module_docstrings(path: Path) -> str:
    """The docstrings of a module, its classes and functions, in source order, one after another."""
    docs: list[str] = []

    def visit(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            docs.append(doc)
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(_parse_python(path))
    return "\n".join(docs)


def pydoc_topics(path: Path) -> dict[str, str]:
    """The `topics` dict of pydoc_data/topics.py, read with `ast` (the module is not imported)."""
    for node in _parse_python(path).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    return {}


# ---------------------------------------------------------------- finding the sources

def _stat_size(path: str) -> int | None:
    """Size of a regular file (following links), None for anything else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _stdlib_files(root: Path) -> dict[str, list[tuple[str, Path, int]]]:
    """The stdlib's .py files as (relative path, path, size) by domain, plus pydoc's topics.py."""
    out: dict[str, list[tuple[str, Path, int]]] = {"stdlib_core": [], "stdlib_tests": [], "gui_code": [],
                                                   "pydoc_topics": []}
    top = str(root)
    for dirpath, dirnames, filenames in os.walk(top):
        reldir = os.path.relpath(dirpath, top).replace(os.sep, "/")
        prefix = "" if reldir == "." else reldir + "/"
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith(".")
                             and not (prefix + d + "/").startswith(_PRUNE))
        for name in sorted(filenames):
            rel = prefix + name
            if not name.endswith(".py") or (size := _stat_size(os.path.join(dirpath, name))) is None:
                continue
            parts = rel.split("/")
            if rel == "pydoc_data/topics.py":
                domain = "pydoc_topics"
            elif rel.startswith(_GUI):
                domain = "gui_code"
            elif rel.startswith(_NOT_CORE):
                continue
            elif parts[0] == "test" or "test" in parts[:-1] or "tests" in parts[:-1]:
                domain = "stdlib_tests"
            else:
                domain = "stdlib_core"
            out[domain].append((rel, Path(dirpath, name), size))
    return {k: sorted(v) for k, v in out.items()}


def _glob(root: Path, patterns: tuple[str, ...]) -> list[tuple[str, Path, int]]:
    rels = sorted({r.replace(os.sep, "/") for pat in patterns for r in glob.glob(pat, root_dir=str(root))})
    found = ((r, root / r, _stat_size(os.path.join(root, r))) for r in rels)
    return [(r, p, n) for r, p, n in found if n is not None]


def _plans(sources: dict[str, str | os.PathLike | None], only: list[str]) -> dict[str, _Plan]:
    roots = {k: Path(v) for k, v in sources.items() if v}
    plans = {name: _Plan(name, []) for name in only}

    def root_of(key: str) -> Path | None:
        r = roots.get(key)
        return r if r is not None and r.is_dir() else None

    stdlib = root_of("stdlib")
    py = _stdlib_files(stdlib) if stdlib else {}
    desc = {"stdlib_core": "STDLIB/**/*.py except test(s)/, GUI, encodings/, pydoc_data/, site-packages/",
            "stdlib_tests": "STDLIB/test/**/*.py, STDLIB/**/test(s)/**/*.py",
            "gui_code": "STDLIB/{idlelib,tkinter,turtledemo}/**/*.py, STDLIB/turtle.py",
            "pydoc_topics": "STDLIB/pydoc_data/topics.py (one document per topic)",
            "docstrings": "docstrings of the stdlib_core files that stdlib_core did not use"}
    for name in ("stdlib_core", "stdlib_tests", "gui_code", "pydoc_topics", "docstrings"):
        if name not in plans:
            continue
        plan = plans[name]
        plan.source = [desc[name].replace("STDLIB", str(stdlib or roots.get("stdlib", "<stdlib>")))]
        if stdlib is None:
            plan.missing = f"source 'stdlib' not found: {roots.get('stdlib')}"
            continue
        plan.files = py["stdlib_core" if name == "docstrings" else name]
        if name == "pydoc_topics":
            plan.unit = "topic"
            plan.units = lambda files=plan.files: [
                _Unit(f"{rel}#{topic}", lambda text=text: text)
                for rel, path, _ in files for topic, text in sorted(pydoc_topics(path).items())]
        elif name == "docstrings":
            plan.unit = "module"
            plan.units = lambda files=plan.files: [_Unit(rel, lambda p=p: module_docstrings(p)) for rel, p, _ in files]
        else:
            plan.units = lambda files=plan.files: [_Unit(rel, lambda p=p: read_text(p)) for rel, p, _ in files]

    file_domains = {  # name -> [(source key, patterns, loader)]
        "changelogs": [("doc", ("*/changelog*.gz",), read_text)],
        "legal": [("doc", ("*/copyright",), read_text), ("licenses", ("*",), read_text)],
        "man_en": [("man", ("man*/*",), _man_page)],
        "man_de_fr": [("man", ("de/man*/*", "fr/man*/*"), _man_page)],
    }
    for name, parts in file_domains.items():
        if name not in plans:
            continue
        plan, units, missing = plans[name], [], []
        for key, patterns, loader in parts:
            plan.source += [f"{roots.get(key, '<' + key + '>')}/{p}" for p in patterns]
            root = root_of(key)
            if root is None:
                missing.append(f"source {key!r} not found: {roots.get(key)}")
                continue
            files = [(f"{key}/{rel}", path, size) for rel, path, size in _glob(root, patterns)]
            plan.files += files
            units += [_Unit(rel, lambda p=p, ld=loader: ld(p)) for rel, p, _ in files]
        plan.units = lambda units=units: units
        if not plan.files:
            plan.missing = "; ".join(missing) or "no source files found"
    for plan in plans.values():
        if plan.missing is None and not plan.files:
            plan.missing = "no source files found"
    return plans


def fingerprint(files: list[tuple[str, Path, int]]) -> dict[str, int]:
    return {"files": len(files), "bytes": sum(size for _, _, size in files)}


# ---------------------------------------------------------------- building one domain

def _digest(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogateescape")).digest()


def split_of(seed: int, key: str) -> str:
    """train/valid/test for a document key: the first 8 bytes of its hash, as a fraction of 2**64."""
    u = int.from_bytes(_digest(seed, key)[:8], "big") / 2**64
    if u < SPLIT_FRACTIONS["train"]:
        return "train"
    return "valid" if u < SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["valid"] else "test"


def _take(units: list[_Unit], *, cap: int | None, max_file_bytes: int, seed: int) -> tuple[dict, dict]:
    """Read units in hash order until the cap; return (documents by split as (key, text), statistics)."""
    order = sorted(units, key=lambda u: (_digest(seed, u.key)[8:16], u.key))
    docs: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    seen: set[bytes] = set()
    stats = {"files_read": 0, "files_used": 0, "duplicates_removed": 0, "truncated": 0, "skipped": {},
             "capped": False}
    total = 0
    for unit in order:
        stats["files_read"] += 1
        try:
            text = clean_head(unit.load(), max_file_bytes)
            if not text:
                raise _Skip("empty")
        except _Skip as e:
            stats["skipped"][str(e)] = stats["skipped"].get(str(e), 0) + 1
            continue
        text, cut = truncate(text, max_file_bytes)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest in seen:
            stats["duplicates_removed"] += 1
            continue
        size = len(text.encode("utf-8"))
        if cap is not None and total + size > cap:
            stats["files_read"] -= 1
            stats["capped"] = True
            break
        seen.add(digest)
        total += size
        stats["files_used"] += 1
        stats["truncated"] += int(cut)
        docs[split_of(seed, unit.key)].append((unit.key, text))
    for split in SPLITS:
        docs[split].sort()
    stats["skipped"] = dict(sorted(stats["skipped"].items()))
    return docs, stats


def _write_domain(out: Path, docs: dict[str, list[tuple[str, str]]]) -> None:
    out.mkdir(parents=True)
    for split in SPLITS:
        text = "\n\n".join(t for _, t in docs[split]) + "\n"
        (out / f"{split}.txt").write_bytes(text.encode("utf-8"))


# ---------------------------------------------------------------- the whole corpus

def _caps(max_domain_bytes: int | dict[str, int] | None, names: list[str]) -> dict[str, int | None]:
    if isinstance(max_domain_bytes, dict):
        unknown = set(max_domain_bytes) - set(DOMAINS)
        if unknown:
            raise CptlabError(f"max_domain_bytes: unknown domain(s) {sorted(unknown)} (domains: {', '.join(DOMAINS)})")
        return {n: max_domain_bytes.get(n, DEFAULT_CAPS[n]) for n in names}
    return {n: (DEFAULT_CAPS[n] if max_domain_bytes is None else int(max_domain_bytes)) for n in names}


def _up_to_date(out_dir: Path, settings: dict, prints: dict) -> dict | None:
    path = out_dir / "manifest.json"
    if not path.is_file():
        return None
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if old.get("format") != FORMAT or old.get("settings") != settings or old.get("fingerprints") != prints:
        return None
    if not (out_dir / "provenance.json").is_file():
        return None
    for name in old.get("domains", {}):
        if not all((out_dir / name / f"{s}.txt").is_file() for s in SPLITS):
            return None
    return old


def build_demo_corpus(out_dir: str | Path, *, max_file_bytes: int = 60_000,
                      max_domain_bytes: int | dict[str, int] | None = None, seed: int = 0,
                      sources: dict[str, str | os.PathLike | None] | None = None,
                      domains: list[str] | None = None, min_documents: int = 20, force: bool = False) -> dict:
    """Build the demo corpus in M2D2 layout `out_dir/<domain>/{train,valid,test}.txt` and return its manifest.

    `sources` maps "stdlib", "doc", "licenses", "man" to root folders (default: this machine's; when given, a key
    that is absent or None is a missing source). `max_domain_bytes`: None for the default caps (DEFAULT_CAPS), an
    int for one cap for every domain, or a dict of per-domain overrides. The build is skipped when
    `out_dir/manifest.json` has the same settings and source fingerprints (file count and total size per domain),
    unless `force`. The whole folder is written under a temporary name and renamed when complete.
    """
    from cptlab.console import log

    start = time.perf_counter()
    out_dir = Path(out_dir)
    names = list(DOMAINS) if domains is None else list(domains)
    unknown = [n for n in names if n not in DOMAINS]
    if unknown:
        raise CptlabError(f"domains: unknown {unknown} (domains: {', '.join(DOMAINS)})")
    if max_file_bytes < 1:
        raise CptlabError(f"max_file_bytes: must be positive, got {max_file_bytes}")
    names = [n for n in DOMAINS if n in names]  # stdlib_core before docstrings, which takes the files it left
    # docstrings come from the core files that stdlib_core did not use, so they need its selection (and its cap).
    internal = ["stdlib_core"] if "docstrings" in names and "stdlib_core" not in names else []
    src = default_sources() if sources is None else dict(sources)
    settings = {"max_file_bytes": max_file_bytes, "max_domain_bytes": _caps(max_domain_bytes, internal + names),
                "seed": seed, "splits": SPLIT_FRACTIONS, "min_documents": min_documents, "domains": names,
                "sources": {k: (str(v) if v else None) for k, v in sorted(src.items())}}
    plans = _plans(src, internal + names)
    prints = {n: fingerprint(plans[n].files) for n in internal + names}
    if not force and (old := _up_to_date(out_dir, settings, prints)) is not None:
        log(f"demo corpus {out_dir}: up to date ({len(old['domains'])} domains), not rebuilt")
        return old
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise CptlabError(f"{out_dir}: exists and is not a demo corpus (no manifest.json); "
                          "choose an empty or new folder")

    manifest: dict = {"format": FORMAT, "settings": settings, "fingerprints": prints, "domains": {}, "dropped": {}}
    provenance: dict[str, dict[str, list[str]]] = {}  # domain -> split -> document keys, in file order
    used_core: set[str] = set()
    with atomic_dir(out_dir) as tmp:
        for name in internal + names:
            plan = plans[name]
            entry = {"group": "general" if name in GENERAL else "held_out", "sources": plan.source,
                     "unit": plan.unit, "files_found": len(plan.files), "source_bytes": prints[name]["bytes"],
                     "max_bytes": settings["max_domain_bytes"][name]}
            if plan.missing:
                manifest["dropped"][name] = {**entry, "reason": plan.missing}
                continue
            units = plan.units()
            if name == "docstrings":
                units = [u for u in units if u.key not in used_core]
            docs, stats = _take(units, cap=entry["max_bytes"], max_file_bytes=max_file_bytes, seed=seed)
            if name == "stdlib_core":
                used_core = {k for split in docs.values() for k, _ in split}
                if name in internal:
                    continue
            entry.update(stats)
            entry["splits"] = {s: {"documents": len(docs[s]), "bytes": sum(len(t.encode("utf-8")) for _, t in docs[s])}
                               for s in SPLITS}
            entry["bytes"] = sum(v["bytes"] for v in entry["splits"].values())
            n_docs = sum(v["documents"] for v in entry["splits"].values())
            empty = [s for s in SPLITS if not docs[s]]
            if n_docs < min_documents or empty:
                why = f"{n_docs} documents (< {min_documents})" if n_docs < min_documents else f"empty split(s) {empty}"
                manifest["dropped"][name] = {**entry, "reason": f"too little text: {why}"}
                continue
            _write_domain(tmp / name, docs)
            manifest["domains"][name] = entry
            provenance[name] = {s: [k for k, _ in docs[s]] for s in SPLITS}
        atomic_write_json(tmp / "provenance.json", provenance)
        atomic_write_json(tmp / "manifest.json", manifest)
    took = time.perf_counter() - start
    log(f"demo corpus {out_dir}: {len(manifest['domains'])} domains, "
        f"{sum(d['bytes'] for d in manifest['domains'].values()) / 1e6:.1f} MB in {took:.1f} s"
        + (f"; dropped {', '.join(manifest['dropped'])}" if manifest["dropped"] else ""))
    return manifest
