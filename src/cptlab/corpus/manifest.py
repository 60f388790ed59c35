"""A YAML corpus manifest: domain -> split -> file(s), paths relative to the manifest.

    # corpus.yaml
    wiki:
      format: jsonl            # optional: txt | jsonl | parquet (default: from each file's suffix)
      text_field: body         # optional: the field/column holding the text (jsonl, parquet, hf)
      txt_mode: line           # optional: blank-line | line (txt only)
      train: wiki/train.jsonl
      valid: [wiki/valid-0.jsonl, wiki/valid-1.jsonl]
      test: wiki/test/*.jsonl  # a glob, sorted; a directory means every corpus file under it
    code: data/code            # an M2D2 domain directory holding {train,valid,test}.*
    news: hf:cc_news           # a `datasets` spec: splits discovered (validation -> valid)
    legal:
      hf: {path: ./local_ds, name: null, text_field: text, splits: {train: train, test: test}}
    books:
      train: {hf: {path: parquet, data_files: books/*.parquet, split: "train[:90%]"}}
      valid: {hf: {path: parquet, data_files: books/*.parquet, split: "train[90%:]"}}

Every mistake is an error naming the manifest and the `domain.split` field.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from cptlab.corpus.layout import FORMATS, SPLITS, Corpus, SplitSource, domain_from_dir, file_format
from cptlab.errors import CptlabError

DOMAIN_KEYS = ("format", "text_field", "txt_mode", "hf")
TXT_MODES = ("blank-line", "line")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def load_manifest(path: Path) -> Corpus:
    from cptlab.config import read_yaml

    data = read_yaml(path)
    return corpus_from_manifest(data, base=path.resolve().parent, label=str(path))


def corpus_from_manifest(data: dict, base: Path, label: str) -> Corpus:
    if not isinstance(data, dict) or not data:
        raise CptlabError(f"{label}: no domains (expected a mapping domain -> split -> file(s))")
    domains: dict[str, dict[str, SplitSource]] = {}
    for domain, entry in data.items():
        if not isinstance(domain, str) or not _NAME.match(domain):
            raise CptlabError(f"{label}: {domain!r}: a domain name must be letters, digits, '_', '-', '.' "
                              f"(it names folders of the token cache)")
        splits = _domain(domain, entry, base, f"{label}: {domain}")
        if not splits:
            raise CptlabError(f"{label}: {domain}: no splits (expected {', '.join(SPLITS)})")
        domains[domain] = splits
    return Corpus(label, domains)


def _domain(domain: str, entry, base: Path, where: str) -> dict[str, SplitSource]:
    from cptlab.corpus.hf import hf_domain, hf_split, parse_hf_string

    if isinstance(entry, str):
        if entry.startswith("hf:"):
            return hf_domain(domain, parse_hf_string(entry, where), where)
        d = _resolve(base, entry)
        if not d.is_dir():
            raise CptlabError(f"{where}: {d}: no such directory (a string names a domain folder or hf:PATH[:NAME])")
        splits = domain_from_dir(domain, d)
        if not splits:
            raise CptlabError(f"{where}: {d}: no train/valid/test files in this folder")
        return splits
    if not isinstance(entry, dict):
        raise CptlabError(f"{where}: expected a mapping of splits, a folder, or hf:PATH[:NAME], "
                          f"got {type(entry).__name__}")
    unknown = [k for k in entry if k not in SPLITS and k not in DOMAIN_KEYS]
    if unknown:
        raise CptlabError(f"{where}.{unknown[0]}: unknown key (expected {', '.join(SPLITS + DOMAIN_KEYS)})")
    fmt = _choice(entry, "format", FORMATS, where)
    txt_mode = _choice(entry, "txt_mode", TXT_MODES, where)
    text_field = entry.get("text_field")
    if text_field is not None and (not isinstance(text_field, str) or not text_field):
        raise CptlabError(f"{where}.text_field: expected a non-empty string, got {text_field!r}")
    settings = {"format": fmt, "text_field": text_field, "txt_mode": txt_mode}

    if entry.get("hf") is not None:
        if any(s in entry for s in SPLITS):
            raise CptlabError(f"{where}: give either `hf` (all splits from one dataset) or split entries, not both")
        spec = entry["hf"]
        spec = parse_hf_string(spec, f"{where}.hf") if isinstance(spec, str) else spec
        splits = hf_domain(domain, spec, f"{where}.hf", base=base, text_field=text_field)
        for s in splits.values():
            s.txt_mode = txt_mode
        return splits

    out = {}
    for split in SPLITS:
        if split not in entry:
            continue
        value, w = entry[split], f"{where}.{split}"
        if isinstance(value, dict):
            if set(value) != {"hf"}:
                raise CptlabError(f"{w}: a mapping here must be {{hf: {{path: ..., split: ...}}}}, got keys "
                                  f"{', '.join(map(str, value))}")
            out[split] = hf_split(domain, split, value["hf"], w, base=base, text_field=text_field)
            out[split].txt_mode = txt_mode
            continue
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise CptlabError(f"{w}: expected a file path, a glob, or a list of them, got {value!r}")
        files = [f for item in items for f in _expand(base, item, w)]
        if fmt is None:
            for f in files:
                if file_format(f) is None:
                    raise CptlabError(f"{w}: cannot tell the format of {f} from its name (expected .txt, .jsonl, "
                                      f".parquet, .txt.gz, .jsonl.gz); set `format: txt|jsonl|parquet` for the "
                                      f"domain")
        out[split] = SplitSource(domain, split, files, **settings)
    return out


def _choice(entry: dict, key: str, allowed: tuple, where: str):
    value = entry.get(key)
    if value is not None and value not in allowed:
        raise CptlabError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _resolve(base: Path, item: str) -> Path:
    p = Path(item).expanduser()
    return p if p.is_absolute() else base / p


def _expand(base: Path, item: str, where: str) -> list[Path]:
    p = _resolve(base, item)
    if any(c in item for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        if not matches:
            raise CptlabError(f"{where}: no file matches {p}")
        return matches
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and file_format(f)
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise CptlabError(f"{where}: {p}: folder holds no .txt/.jsonl/.parquet/.txt.gz/.jsonl.gz files")
        return files
    if not p.is_file():
        raise CptlabError(f"{where}: {p}: no such file")
    return [p]
