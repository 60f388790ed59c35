"""Find the domains and splits of a corpus. FIRST VERSION (M2D2 dir layout only); the corpus issue grows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cptlab.errors import CptlabError

SPLITS = ("train", "valid", "test")
EXTENSIONS = (".txt", ".jsonl", ".parquet", ".txt.gz", ".jsonl.gz")


@dataclass
class SplitSource:
    """One domain's split: the files it is read from (in order), or an HF dataset spec."""

    domain: str
    split: str
    files: list[Path] = field(default_factory=list)
    hf: dict | None = None  # datasets spec: {"path": ..., "name": ..., "split": ..., "text_field": ...}


@dataclass
class Corpus:
    root: str
    domains: dict[str, dict[str, SplitSource]]  # domain -> split -> source

    def source(self, domain: str, split: str) -> SplitSource:
        if domain not in self.domains:
            raise CptlabError(f"corpus {self.root}: no domain {domain!r} (domains: {', '.join(self.domains)})")
        splits = self.domains[domain]
        if split not in splits:
            raise CptlabError(f"corpus {self.root}: domain {domain!r} has no {split!r} split")
        return splits[split]

    def domain_names(self) -> list[str]:
        return sorted(self.domains)


def _split_files(domain_dir: Path, split: str) -> list[Path]:
    files = [domain_dir / f"{split}{ext}" for ext in EXTENSIONS if (domain_dir / f"{split}{ext}").is_file()]
    sub = domain_dir / split  # a folder of files per split is accepted too
    if sub.is_dir():
        files += sorted(p for p in sub.rglob("*") if p.is_file() and p.name.endswith(EXTENSIONS))
    return files


def open_corpus(spec: str | Path, options=None) -> Corpus:
    root = Path(spec)
    if not root.exists():
        raise CptlabError(f"corpus {root}: no such directory")
    domains: dict[str, dict[str, SplitSource]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        splits = {s: SplitSource(d.name, s, fs) for s in SPLITS if (fs := _split_files(d, s))}
        if splits:
            domains[d.name] = splits
    if not domains:
        raise CptlabError(f"corpus {root}: no domains found (expected ROOT/<domain>/{{train,valid,test}}.txt|jsonl|parquet)")
    return Corpus(str(root), domains)
