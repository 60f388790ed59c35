"""`datasets` specs: a corpus domain read with `datasets.load_dataset` (streaming by default).

    hf:PATH[:NAME]                                  one domain, its splits discovered
    {path, name, split, data_files, data_dir, revision, streaming, text_field}   in a manifest

Split names are mapped to ours: validation/dev/val -> valid; train and test stay. A local `path` or `data_files`
in a manifest is taken relative to the manifest. `datasets` is imported only when such a spec is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cptlab.errors import CptlabError

SPEC_KEYS = ("path", "name", "split", "data_files", "data_dir", "revision", "streaming", "text_field")
SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "val": "valid", "train": "train", "test": "test",
                 "valid": "valid"}


def describe_hf(hf: dict) -> str:
    s = f"hf:{hf['path']}" + (f":{hf['name']}" if hf.get("name") else "")
    return s + (f" [{hf['split']}]" if hf.get("split") else "")


def parse_hf_string(spec: str, where: str = "corpus") -> dict:
    """`hf:PATH[:NAME]` -> {"path": PATH, "name": NAME}."""
    body = spec[3:] if spec.startswith("hf:") else spec
    path, _, name = body.partition(":")
    if not path:
        raise CptlabError(f"{where}: {spec!r}: expected hf:PATH[:NAME], e.g. hf:wikitext:wikitext-2-raw-v1")
    return {"path": path, "name": name or None}


def _normalize(spec, where: str, base: Path | None, allowed: tuple[str, ...]) -> dict:
    if not isinstance(spec, dict):
        raise CptlabError(f"{where}: expected a mapping {{path: ..., name: ...}} or hf:PATH[:NAME], got {spec!r}")
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        raise CptlabError(f"{where}.{unknown[0]}: unknown key (expected {', '.join(allowed)})")
    if not isinstance(spec.get("path"), str) or not spec["path"]:
        raise CptlabError(f"{where}.path: required (a hub dataset name, a builder like `parquet`, or a folder)")
    for key in ("name", "split", "data_dir", "revision", "text_field"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise CptlabError(f"{where}.{key}: expected a string, got {spec[key]!r}")
    if spec.get("streaming") is not None and not isinstance(spec["streaming"], bool):
        raise CptlabError(f"{where}.streaming: expected true or false, got {spec['streaming']!r}")
    out = {k: spec[k] for k in allowed if spec.get(k) is not None and k != "splits"}
    p = out["path"]
    if p.startswith((".", "/", "~")):  # clearly a local folder: it must exist
        local = Path(p).expanduser()
        local = local if local.is_absolute() or base is None else base / local
        if not local.exists():
            raise CptlabError(f"{where}.path: {local.resolve()}: no such dataset folder")
    if base is not None:  # local paths are relative to the manifest
        local = base / out["path"]
        if not Path(out["path"]).is_absolute() and (out["path"].startswith(".") or local.exists()):
            out["path"] = str(local.resolve())
        if "data_dir" in out and not Path(out["data_dir"]).is_absolute() and (base / out["data_dir"]).exists():
            out["data_dir"] = str((base / out["data_dir"]).resolve())
        if "data_files" in out:
            out["data_files"] = _rebase_files(out["data_files"], base, where)
    elif "data_files" in out:
        out["data_files"] = _rebase_files(out["data_files"], Path.cwd(), where)
    return out


def _rebase_files(files, base: Path, where: str):
    def one(f):
        if not isinstance(f, str):
            raise CptlabError(f"{where}.data_files: expected paths, got {f!r}")
        return f if Path(f).is_absolute() or "://" in f else str(base / f)

    if isinstance(files, str):
        return one(files)
    if isinstance(files, list):
        return [one(f) for f in files]
    if isinstance(files, dict):
        return {k: (one(v) if isinstance(v, str) else [one(x) for x in v]) for k, v in files.items()}
    raise CptlabError(f"{where}.data_files: expected a path, a list or a mapping, got {files!r}")


def _load_error(spec: dict, e: BaseException) -> CptlabError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CptlabError(f"dataset {describe_hf(spec)}: cannot load ({type(e).__name__}: {msg})")


def _split_names(spec: dict) -> list[str]:
    import datasets

    kwargs = {k: spec[k] for k in ("data_files", "data_dir", "revision") if k in spec}
    try:
        return list(datasets.get_dataset_split_names(spec["path"], spec.get("name"), **kwargs))
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, ValueError, ...)
        raise _load_error(spec, e) from None


def hf_split(domain: str, split: str, spec, where: str, base: Path | None = None,
             text_field: str | None = None):
    """One split read from a dataset spec (`spec["split"]` defaults to ours, valid -> validation)."""
    from cptlab.corpus.layout import SplitSource

    if isinstance(spec, str):
        spec = parse_hf_string(spec, where)
    hf = _normalize(spec, where, base, SPEC_KEYS)
    hf.setdefault("split", "validation" if split == "valid" else split)
    field = hf.pop("text_field", None) or text_field
    if field:
        hf["text_field"] = field
    return SplitSource(domain, split, [], hf=hf, text_field=field)


def hf_domain(domain: str, spec, where: str, base: Path | None = None,
              text_field: str | None = None) -> dict:
    """All splits of a dataset as one domain: `spec["splits"]` ({ours: theirs}) or discovered."""
    if isinstance(spec, str):
        spec = parse_hf_string(spec, where)
    hf = _normalize(spec, where, base, tuple(k for k in SPEC_KEYS if k != "split") + ("splits",))
    mapping = spec.get("splits") if isinstance(spec, dict) else None
    if mapping is None:
        mapping = {}
        for theirs in _split_names(hf):
            ours = SPLIT_ALIASES.get(theirs, theirs)
            mapping.setdefault(ours, theirs)
    elif not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise CptlabError(f"{where}.splits: expected a mapping like {{train: train, valid: validation}}")
    if not mapping:
        raise CptlabError(f"{where}: dataset {describe_hf(hf)} has no splits")
    return {ours: hf_split(domain, ours, {**hf, "split": theirs}, where, text_field=text_field)
            for ours, theirs in mapping.items()}


def corpus_from_hf_string(spec: str):
    from cptlab.corpus.layout import Corpus

    hf = parse_hf_string(spec, "corpus")
    domain = (hf.get("name") or Path(hf["path"]).name or hf["path"]).replace("/", "_")
    return Corpus(spec, {domain: hf_domain(domain, hf, f"corpus {spec}")})


def iter_hf_texts(source, field: str, on_bad_record: str, stats) -> Iterator[str]:
    """The text field of every row of the dataset split, in order; bad rows are errors or skipped+counted."""
    import datasets

    spec = source.hf
    kwargs = {k: spec[k] for k in ("data_files", "data_dir", "revision") if k in spec}
    try:
        ds = datasets.load_dataset(spec["path"], spec.get("name"), split=spec.get("split"),
                                   streaming=spec.get("streaming", True), **kwargs)
    except Exception as e:
        raise _load_error(spec, e) from None
    features = getattr(ds, "features", None)
    if features is not None and field not in features:
        raise CptlabError(f"dataset {describe_hf(spec)}: no column {field!r} (columns: {', '.join(features)}); "
                          f"set text_field")
    rows = iter(ds)
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise CptlabError(f"dataset {describe_hf(spec)}: row {i}: cannot read ({type(e).__name__}: {e})") from None
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            reason = "missing_field" if value is None else "not_a_string"
            if on_bad_record == "skip":
                stats.skipped[reason] += 1
            else:
                what = f"no value in {field!r}" if value is None else f"{field!r} is {type(value).__name__}"
                raise CptlabError(f"dataset {describe_hf(spec)}: row {i}: {what}, expected a string "
                                  f"(--on-bad-record skip to skip such rows)")
        else:
            yield value
        i += 1
