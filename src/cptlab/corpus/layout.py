"""Find the domains and splits of a corpus.

A corpus spec is one of:
  - a directory in M2D2 layout: `ROOT/<domain>/{train,valid,test}.{txt,jsonl,parquet,txt.gz,jsonl.gz}`, and/or a
    folder per split `ROOT/<domain>/<split>/` holding such files (read recursively, in sorted order);
  - a YAML manifest file (`corpus.yaml`) mapping domain -> split -> file(s) (see `cptlab.corpus.manifest`);
  - a `datasets` spec `hf:PATH[:NAME]` (one domain, its splits discovered; see `cptlab.corpus.hf`);
  - a dict (a manifest given inline; relative paths are taken from the current directory);
  - a `Corpus` (returned as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cptlab.errors import CptlabError

SPLITS = ("train", "valid", "test")
FORMATS = ("txt", "jsonl", "parquet")
# Suffix -> format. Order matters: it is the order in which a split's files are read.
EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".txt.gz": "txt", ".jsonl.gz": "jsonl"}
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass
class SplitSource:
    """One domain's split: the files it is read from (in order), or a `datasets` spec.

    `format`, `text_field` and `txt_mode` are per-source settings (from a manifest); when set they take precedence
    over the `ReadOptions` a reader is given. `format=None` means "from each file's suffix".
    """

    domain: str
    split: str
    files: list[Path] = field(default_factory=list)
    hf: dict | None = None  # {"path", "name", "split", "text_field", "data_files", "data_dir", "revision", "streaming"}
    format: str | None = None
    text_field: str | None = None
    txt_mode: str | None = None

    def describe(self) -> str:
        """Where the documents come from, for messages."""
        if self.hf:
            from cptlab.corpus.hf import describe_hf

            return describe_hf(self.hf)
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{len(self.files)} files"


@dataclass
class Corpus:
    root: str
    domains: dict[str, dict[str, SplitSource]]  # domain -> split -> source

    def source(self, domain: str, split: str) -> SplitSource:
        if domain not in self.domains:
            where = f" ({Path(self.root) / domain} not found)" if Path(self.root).is_dir() else ""
            raise CptlabError(f"corpus {self.root}: no domain {domain!r}{where}; "
                              f"domains: {', '.join(self.domain_names()) or '(none)'}")
        splits = self.domains[domain]
        if split not in splits:
            where = ""
            if Path(self.root).is_dir():
                where = f" (no {Path(self.root) / domain / split}.txt|.jsonl|.parquet or {split}/ folder)"
            raise CptlabError(f"corpus {self.root}: domain {domain!r} has no {split!r} split{where}; "
                              f"splits: {', '.join(splits) or '(none)'}")
        return splits[split]

    def domain_names(self) -> list[str]:
        return sorted(self.domains)

    def sources(self, domains=None, splits=None) -> list[SplitSource]:
        """The sources of the given domains/splits (all by default), in domain then split order.

        A domain or split that is asked for by name and missing is an error naming it.
        """
        names = list(domains) if domains else self.domain_names()
        out = []
        for d in names:
            if splits:
                out += [self.source(d, s) for s in splits]
            else:
                if d not in self.domains:
                    self.source(d, "train")  # raises: no such domain
                out += [self.domains[d][s] for s in _split_order(self.domains[d])]
        return out


def _split_order(splits: dict) -> list[str]:
    known = [s for s in SPLITS if s in splits]
    return known + sorted(s for s in splits if s not in SPLITS)


def file_format(path: Path) -> str | None:
    """The format a file's name says (`txt`, `jsonl`, `parquet`), or None."""
    name = path.name.lower()
    for ext, fmt in sorted(EXTENSIONS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ext):
            return fmt
    return None


def _split_files(domain_dir: Path, split: str) -> list[Path]:
    files = [domain_dir / f"{split}{ext}" for ext in EXTENSIONS if (domain_dir / f"{split}{ext}").is_file()]
    sub = domain_dir / split  # a folder of files per split is accepted too
    if sub.is_dir():
        files += sorted(p for p in sub.rglob("*")
                        if p.is_file() and file_format(p) and not any(part.startswith(".") for part in
                                                                      p.relative_to(sub).parts))
    return files


def domain_from_dir(domain: str, d: Path) -> dict[str, SplitSource]:
    """The splits found in one M2D2 domain directory (possibly none)."""
    return {s: SplitSource(domain, s, fs) for s in SPLITS if (fs := _split_files(d, s))}


def open_dir(root: Path) -> Corpus:
    from cptlab.console import log

    if not root.is_dir():
        raise CptlabError(f"corpus {root}: not a directory (expected ROOT/<domain>/{{train,valid,test}}.txt|jsonl|"
                          f"parquet, a corpus.yaml manifest, or hf:PATH[:NAME])")
    domains: dict[str, dict[str, SplitSource]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        splits = domain_from_dir(d.name, d)
        if splits:
            domains[d.name] = splits
        elif any(d.iterdir()):
            log(f"corpus {root}: {d.name}/ has no train/valid/test files; not a domain, ignored")
    if not domains:
        if domain_from_dir(root.name, root):
            raise CptlabError(f"corpus {root}: this looks like a single domain (it holds split files itself); "
                              f"pass its parent directory {root.parent}, which holds one folder per domain")
        raise CptlabError(f"corpus {root}: no domains found (expected ROOT/<domain>/{{train,valid,test}}"
                          f".txt|.jsonl|.parquet|.txt.gz|.jsonl.gz)")
    return Corpus(str(root), domains)


def open_corpus(spec, options=None) -> Corpus:
    """Open a corpus from a directory, a YAML manifest, an `hf:` spec, a dict or a `Corpus` (see module doc).

    `options` is accepted for symmetry with the readers and unused: reading options apply when iterating.
    """
    if isinstance(spec, Corpus):
        return spec
    if isinstance(spec, dict):
        from cptlab.corpus.manifest import corpus_from_manifest

        return corpus_from_manifest(spec, base=Path.cwd(), label="corpus manifest")
    if isinstance(spec, str) and spec.startswith("hf:"):
        from cptlab.corpus.hf import corpus_from_hf_string

        return corpus_from_hf_string(spec)
    if not isinstance(spec, (str, Path)):
        raise CptlabError(f"corpus: expected a directory, a manifest .yaml, or hf:PATH[:NAME], "
                          f"got {type(spec).__name__}")
    root = Path(spec).expanduser()
    if not root.exists():
        raise CptlabError(f"corpus {root}: no such file or directory")
    if root.is_file():
        if root.name.lower().endswith(MANIFEST_SUFFIXES):
            from cptlab.corpus.manifest import load_manifest

            return load_manifest(root)
        raise CptlabError(f"corpus {root}: a file, but not a .yaml manifest (a corpus is a directory "
                          f"ROOT/<domain>/<split>.txt|jsonl|parquet, a corpus.yaml, or hf:PATH[:NAME])")
    return open_dir(root)
