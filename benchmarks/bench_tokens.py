"""Benchmark: the token cache and the sampler (issue 2: token cache; the trainer's data path).

    python benchmarks/bench_tokens.py [--mb 16] [--reps 3] [--long-mb 8]

Set-up (not timed): a corpus of real text, `code` = the Python stdlib's .py files and `prose` = the English topics
of `pydoc_data`, written as .txt in M2D2 layout (documents separated by blank lines), `--mb` MB in all; a
byte-level BPE with vocabulary 8192 trained on 2 MB of it.

Timed after one untimed round (imports, file caches), interleaved (A, B, C, A, B, C, ...; the machine is shared,
so medians of `--reps` are reported):
  A  the `tokenizers` backend alone: `encode_batch_fast` over the same documents in batches of 256 (already in
     memory; no reading, no writing): the floor for tokenization in one process;
  B  `build_cache(..., workers=1, force=True)`: reading, tokenizing, writing, fingerprints;
  C  `build_cache(..., workers=2, force=True)`.
Sampler: `MixtureSampler.next_batch(32)` at seq_len 512 over both domains (50/50), batches and tokens per second.
Long document: peak RSS of `build_cache` on one `--long-mb` MB one-line document, in its own subprocess, encoded
in pieces (the default) and whole (`LONG_DOC` raised above its length), minus the peak RSS of the same process
on a one-line file.

Writes benchmarks/results/tokens.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_corpus(root: Path, mb: float) -> dict:
    import pydoc_data.topics as topics

    budget = int(mb * 2**20)
    prose = [t.strip() for t in topics.topics.values() if t.strip()]
    code = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(stdlib.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts:
            continue
        try:
            code.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if sum(map(len, code)) > budget - sum(map(len, prose)):
            break
    sizes = {}
    for name, docs in (("code", code), ("prose", prose)):
        clean = ["\n".join(line for line in d.split("\n") if line.strip()) for d in docs]
        (root / name).mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(clean) + "\n"
        (root / name / "train.txt").write_text(text, encoding="utf-8")
        sizes[name] = len(text.encode("utf-8"))
    return sizes


RSS_SCRIPT = """
import resource, sys
import cptlab.tokens.encoding as enc
if sys.argv[4] == "whole":
    enc.LONG_DOC = 1 << 62
from cptlab.tokens.token_cache import build_cache
build_cache(sys.argv[1], sys.argv[2], sys.argv[3], workers=1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_rss(corpus: Path, tok: Path, out: Path, mode: str) -> int:
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(corpus), str(tok), str(out), mode],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--long-mb", type=float, default=8)
    args = ap.parse_args()
    os.environ.setdefault("CPTLAB_QUIET", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    from cptlab.corpus import iter_documents, open_corpus
    from cptlab.tokens.mixture import MixtureSampler
    from cptlab.tokens.token_cache import build_cache
    from cptlab.tokens.tokenizer import train_bpe

    tmp = Path(tempfile.mkdtemp(prefix="bench_tokens_"))
    sizes = write_corpus(tmp / "corpus", args.mb)
    corpus = open_corpus(tmp / "corpus")
    docs = [d for s in corpus.sources() for d in iter_documents(s)]
    sample, got = [], 0
    for d in docs[::7]:
        sample.append(d)
        got += len(d)
        if got > 2 * 2**20:
            break
    tok = train_bpe(sample, 8192, tmp / "tok")
    backend = tok.backend_tokenizer
    backend.encode_special_tokens = True
    total_bytes = sum(sizes.values())

    def raw():
        n = 0
        for i in range(0, len(docs), 256):
            n += sum(len(e.ids) for e in backend.encode_batch_fast(docs[i:i + 256], add_special_tokens=False))
        return n + len(docs)  # + one EOS per document, as in the cache

    def cache(workers):
        def run():
            s = build_cache(corpus, tmp / "tok", tmp / f"cache{workers}", workers=workers, force=True)
            return sum(e["tokens"] for e in s["entries"])
        return run

    variants = {"A tokenizers backend alone (1 process, in memory)": raw,
                "B build_cache, workers=1": cache(1), "C build_cache, workers=2": cache(2)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, int] = {}
    for fn in variants.values():  # warm-up, not timed: imports, the worker pool's first start, file caches
        fn()
    for _ in range(args.reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert len(set(tokens.values())) == 1, tokens  # every variant tokenized the same text

    sampler = MixtureSampler.from_caches(tmp / "cache1", {"code": 0.5, "prose": 0.5}, seq_len=512, seed=0)
    sampler.next_batch(32)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3:
        sampler.next_batch(32)
        n += 1
    sampler_s = (time.perf_counter() - t0) / n

    long_root, small_root = tmp / "long", tmp / "small"
    (long_root / "d").mkdir(parents=True)
    (small_root / "d").mkdir(parents=True)
    unit = "lorem ipsum dolor sit amet, consectetur élément "
    (long_root / "d" / "train.txt").write_text(unit * int(args.long_mb * 2**20 / len(unit.encode())) + "\n")
    (small_root / "d" / "train.txt").write_text("a small document\n")
    base = peak_rss(small_root, tmp / "tok", tmp / "rss0", "pieces")
    pieces = peak_rss(long_root, tmp / "tok", tmp / "rss1", "pieces")
    whole = peak_rss(long_root, tmp / "tok", tmp / "rss2", "whole")

    n_tok = next(iter(tokens.values()))
    lines = [
        "## Token cache (`bench_tokens.py`)\n",
        f"Command: `python benchmarks/bench_tokens.py --mb {args.mb:g} --reps {args.reps} --long-mb {args.long_mb:g}`. "
        f"Corpus: {total_bytes / 2**20:.1f} MiB of real text (stdlib code {sizes['code'] / 2**20:.1f} MiB, "
        f"pydoc topics {sizes['prose'] / 2**20:.1f} MiB), {len(docs):,} documents, {n_tok:,} tokens "
        f"(byte-level BPE, vocabulary 8192). Medians of {args.reps} interleaved repetitions; "
        f"{os.cpu_count()} CPU cores (shared).\n",
        "| variant | seconds | MiB/s | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in times.items():
        m = statistics.median(ts)
        lines.append(f"| {name} | {m:.2f} | {total_bytes / 2**20 / m:.2f} | {n_tok / m:,.0f} |")
    lines += [
        "",
        f"Sampler: `MixtureSampler.next_batch(32)` at seq_len 512 (two sources, 50/50): {sampler_s * 1e3:.2f} ms "
        f"per batch, {32 * 512 / sampler_s:,.0f} tokens/s (far above any CPU training step).\n",
        f"One {args.long_mb:g} MB one-line document, peak RSS over a process that tokenizes one short line "
        f"({base} MiB): encoded in pieces (default) **+{pieces - base} MiB**; encoded whole **+{whole - base} MiB**.\n",
    ]
    report = "\n".join(lines)
    print(report)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tokens.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
