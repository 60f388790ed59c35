"""Perplexity of a causal LM on each domain of a corpus split, with lm-evaluation-harness's definitions.

Per domain: `nll_sum` = summed negative log-likelihood (nats) of every scored token, and
`token_perplexity = exp(nll_sum / tokens)`, `word_perplexity = exp(nll_sum / words)`,
`byte_perplexity = exp(nll_sum / bytes)`, `bits_per_byte = nll_sum / bytes / ln 2`.

Modes (see `windows.py` for the exact windows):
- `lm-eval` (default): each document on its own, verbatim, tokenized as lm-eval's HFLM does
  (`tokenizer.encode(doc)`, special tokens as the tokenizer adds them, none if the document starts with the prefix
  token's text), the first token predicted after lm-eval's prefix token (BOS if the tokenizer has one, else EOS),
  rolling windows of `context` tokens; words = `len(re.split(r"\\s+", doc))` and bytes = UTF-8 bytes per document,
  summed. With the defaults (context = the model's maximum length, stride = context) the numbers are lm-eval's
  `loglikelihood_rolling` + `word_perplexity` / `byte_perplexity` / `bits_per_byte`.
- `m2d2`: one stream per domain, tokenized as one text (no prefix token) and scored in M2D2's fixed windows
  (`lm_scripts/validate_on_multiple_files.py`: the first token of each window with stride = context is not
  scored). The stream is what M2D2 builds from its test file: for .txt, the file's lines (without their line
  terminators) joined with "\\n", blank and whitespace-only lines included, so the blank line between two
  documents stays an empty line ("\\n\\n" in the stream, whatever `txt_mode` says; several files of a split
  follow one another, joined with "\\n"). For .jsonl, .parquet, a `datasets` spec or a templated corpus there
  are no lines: the documents (verbatim, empty ones skipped) are joined with "\\n". `documents` and
  `max_documents` count documents as `txt_mode` defines them (blank lines between them belong to the stream but
  are not documents; with `max_documents` the stream ends with the last line of the N-th document).
  `tokens` counts the scored tokens; words and bytes are those of the stream. M2D2's own number (which weights
  each window's mean loss by its label count and divides by all stream tokens) is
  `EvalResult.m2d2_perplexity[domain]`. The stream is tokenized in pieces of ~4 M characters cut at document
  boundaries (a piece after the first starts with the joining "\\n"), which equals tokenizing it whole
  for byte-level BPE tokenizers except in rare whitespace merges at a piece boundary.

Streaming: documents are read, tokenized and scored in chunks of about `CHUNK_CHARS` characters (windows of all
documents of a chunk batched together, sorted by length), so memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError, UsageError
from cptlab.evaluate.windows import check_window_args, count_bytes, count_words, m2d2_window, rolling_windows

CHUNK_CHARS = 4_000_000  # characters of text read, tokenized and scored together
MODES = ("lm-eval", "m2d2")
DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when neither config nor tokenizer names a length
TOKENIZER_INFINITY = 1000000000000000019884624838656


@dataclass
class DomainResult:
    documents: int = 0
    tokens: int = 0
    words: int = 0
    bytes: int = 0
    nll_sum: float = 0.0

    def to_dict(self) -> dict:
        def ratio(n):
            return math.exp(self.nll_sum / n) if n else None

        return {
            "documents": self.documents, "tokens": self.tokens, "words": self.words, "bytes": self.bytes,
            "nll_sum": self.nll_sum,
            "token_perplexity": ratio(self.tokens), "word_perplexity": ratio(self.words),
            "byte_perplexity": ratio(self.bytes),
            "bits_per_byte": self.nll_sum / self.bytes / math.log(2) if self.bytes else None,
        }


@dataclass
class EvalResult:
    """`to_dict()` = {"settings": {...}, "domains": {name: {documents, tokens, words, bytes, nll_sum,
    token_perplexity, word_perplexity, byte_perplexity, bits_per_byte}}}."""

    settings: dict
    domains: dict[str, DomainResult]
    seconds: float = 0.0
    tokens_read: int = 0  # tokens through the model (with sliding windows, more than tokens scored)
    m2d2_perplexity: dict[str, float] = field(default_factory=dict)  # mode="m2d2": M2D2's own formula

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "domains": {d: r.to_dict() for d, r in self.domains.items()}}

    @property
    def tokens_per_second(self) -> float:
        scored = sum(r.tokens for r in self.domains.values())
        return scored / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def model_max_length(model, tokenizer) -> int:
    """lm-eval's `resolve_max_length`: config n_positions / max_position_embeddings / n_ctx, then the
    tokenizer's model_max_length unless unset, then 2048."""
    config = getattr(model, "config", None)
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer) -> int:
    """lm-eval HFLM's `prefix_token_id`: the tokenizer's BOS if it has one, else its EOS."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is None:
        raise CptlabError("tokenizer has neither a BOS nor an EOS token: nothing to predict the first token after")
    return int(tokenizer.eos_token_id)


def encode_lm_eval(tokenizer, docs: list[str], prefix_text: str | None) -> list[list[int]]:
    """Token ids per document exactly as HFLM.tok_encode gives them (default special tokens, except none for a
    document that starts with the prefix token's text)."""
    out = tokenizer(docs, return_attention_mask=False, verbose=False)["input_ids"] if docs else []
    if prefix_text:
        for k, doc in enumerate(docs):
            if doc.startswith(prefix_text):
                out[k] = tokenizer(doc, add_special_tokens=False, return_attention_mask=False,
                                   verbose=False)["input_ids"]
    return out


def _resolve_model(model, tokenizer, device, precision):
    """(model, tokenizer, model label, tokenizer label, device) from a path/hub name or loaded objects."""
    from cptlab.model import check_vocab, load_model
    from cptlab.tokens.tokenizer import load_tokenizer

    if isinstance(model, (str, Path)):
        label = str(model)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        m = load_model(model, dtype="fp32", device=device)
        tok_src = tokenizer if tokenizer is not None else model
    else:
        m = model
        label = getattr(getattr(m, "config", None), "_name_or_path", "") or type(m).__name__
        tok_src = tokenizer
        if tok_src is None:
            tok_src = label if label and Path(label).is_dir() else None
            if tok_src is None:
                raise UsageError("perplexity: a loaded model needs its tokenizer (tokenizer=...)")
    if isinstance(tok_src, (str, Path)):
        tok = load_tokenizer(tok_src)
        tok_label = str(tok_src)
    else:
        tok = tok_src
        tok_label = getattr(tok, "name_or_path", "") or type(tok).__name__
    check_vocab(m, len(tok) - 1, f"tokenizer {tok_label}")
    return m, tok, label, tok_label, device


def _domain_list(corpus, split: str, domains) -> list[str]:
    from cptlab.console import log

    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    if domains:
        for d in domains:
            corpus.source(d, split)  # raises a CptlabError naming the unknown domain or missing split
        return list(domains)
    names = [d for d in corpus.domain_names() if split in corpus.domains[d]]
    missing = [d for d in corpus.domain_names() if split not in corpus.domains[d]]
    if missing:
        log(f"corpus {corpus.root}: no {split!r} split in {', '.join(missing)}; not evaluated")
    if not names:
        raise CptlabError(f"corpus {corpus.root}: no domain has a {split!r} split")
    return names


def _chunks(docs, max_chars: int, max_documents: int | None):
    chunk, size, n = [], 0, 0
    for doc in docs:
        if max_documents is not None and n >= max_documents:
            break
        chunk.append(doc)
        size += len(doc)
        n += 1
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def perplexity(model, tokenizer=None, corpus=None, split: str = "test", domains=None, context: int | None = None,
               stride: int | None = None, mode: str = "lm-eval", batch_size="auto", precision: str = "fp32",
               token_losses=None, max_documents: int | None = None, device=None, read_options=None,
               chunk_chars: int = CHUNK_CHARS) -> EvalResult:
    """Perplexity of `model` on every selected domain's `split` of `corpus` (see the module doc).

    `model`: an HF dir / hub name, or a loaded causal LM (then `tokenizer` is needed unless the model's
    `name_or_path` is a dir that holds one). `context` defaults to the model's maximum length (as lm-eval's),
    `stride` to `context` (rolling windows; smaller = sliding windows, more context per token, more compute).
    `token_losses`: a parquet path for the per-token NLLs (domain, doc, position, token_id, nll).
    `max_documents`: the first N (non-empty) documents of each domain. `device`: default the model's
    (a path loads onto CUDA when available). A loaded model is left in the training mode it came in.
    """
    from cptlab.console import log
    from cptlab.corpus import ReadStats, iter_documents, open_corpus
    from cptlab.evaluate.scoring import Scorer, check_precision, jobs_for, parse_batch_size
    from cptlab.evaluate.token_losses import TokenLossWriter

    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    check_precision(precision)
    parse_batch_size(batch_size)
    if corpus is None:
        raise UsageError("perplexity: corpus is required")
    if max_documents is not None and max_documents < 1:
        raise UsageError(f"--max-documents {max_documents}: must be at least 1")
    corpus = open_corpus(corpus)
    names = _domain_list(corpus, split, domains)

    m, tok, model_label, tok_label, device = _resolve_model(model, tokenizer, device, precision)
    max_len = model_max_length(m, tok)
    context = int(context) if context is not None else max_len
    stride = int(stride) if stride is not None else context
    check_window_args(context, stride)
    if context > max_len:
        raise UsageError(f"--context {context}: longer than the model's maximum length {max_len}")

    from cptlab.tokens.tokenizer import tokenizer_fingerprint

    prefix = prefix_token_id(tok) if mode == "lm-eval" else None
    settings = {
        "model": model_label, "split": split, "context": context, "stride": stride, "mode": mode,
        "precision": precision, "tokenizer": tok_label, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "prefix_token_id": prefix, "max_documents": max_documents, "corpus": str(corpus.root),
    }
    was_training = getattr(m, "training", False)
    scorer = Scorer(m, batch_size=batch_size, precision=precision, device=device)
    writer = TokenLossWriter(token_losses, settings) if token_losses is not None else None
    results: dict[str, DomainResult] = {}
    m2d2_ppl: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        for name in names:
            source = corpus.source(name, split)
            stats = ReadStats()
            docs = (iter_documents(source, read_options, stats) if mode == "lm-eval"
                    else m2d2_units(source, read_options, stats))
            res = DomainResult()
            if mode == "lm-eval":
                _score_lm_eval(scorer, tok, prefix, docs, name, res, context, stride, writer, chunk_chars,
                               max_documents, jobs_for)
            else:
                m2d2_ppl[name] = _score_m2d2(scorer, tok, docs, name, res, context, stride, writer, chunk_chars,
                                             max_documents, jobs_for)
            if res.documents == 0:
                log(f"domain {name}: no documents in {source.describe()} ({split})")
            if stats.skipped:
                log(f"domain {name}: skipped {sum(stats.skipped.values())} empty document(s)")
            results[name] = res
            r = res.to_dict()
            if r["token_perplexity"] is not None:
                log(f"{name}: {res.documents} docs, {res.tokens} tokens, token ppl {r['token_perplexity']:.3f}")
        if writer is not None:
            writer.close(tok)
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        if was_training:
            m.train()
    seconds = time.perf_counter() - t0
    settings["batch_size"] = parse_batch_size(batch_size) or "auto"
    if token_losses is not None:
        settings["token_losses"] = str(token_losses)
    return EvalResult(settings, results, seconds, scorer.tokens_read, m2d2_ppl)


def _score_lm_eval(scorer, tok, prefix, docs, name, res, context, stride, writer, chunk_chars, max_documents,
                   jobs_for):
    prefix_text = tok.decode([prefix]) if prefix is not None else None
    doc_index = 0
    for chunk in _chunks(docs, chunk_chars, max_documents):
        ids = encode_lm_eval(tok, chunk, prefix_text)
        seqs, jobs = [], []
        for k, toks in enumerate(ids):
            x = np.empty(len(toks) + 1, dtype=np.int64)
            x[0] = prefix
            x[1:] = toks
            seqs.append(x)
            jobs += jobs_for(k, rolling_windows(len(toks), context, stride))
        nlls = scorer.score(seqs, jobs)
        for k, doc in enumerate(chunk):
            nll = nlls[k][1:]
            res.documents += 1
            res.tokens += len(nll)
            res.words += count_words(doc)
            res.bytes += count_bytes(doc)
            res.nll_sum += float(nll.astype(np.float64).sum())
            if writer is not None and len(nll):
                writer.write(name, doc_index + k, seqs[k][1:], nll)
        doc_index += len(chunk)


def m2d2_units(source, options=None, stats=None):
    """The pieces of a domain's m2d2 stream, one per document: `"\\n".join(units)` is the stream (module doc).

    For .txt (no template): each unit is a document's lines with the blank lines before it (the blank lines at
    the end of a file go with its last document), joined with "\\n" and without line terminators, so joining the
    units with "\\n" gives back the file's lines joined with "\\n". A document with invalid UTF-8 is skipped or
    kept with U+FFFD as `on_decode_error` says (counted in `stats`). Other sources: `iter_documents`."""
    from cptlab.corpus import ReadOptions, ReadStats, iter_documents
    from cptlab.corpus.layout import file_format
    from cptlab.corpus.read import _decode_ok, _strip_eol
    from cptlab.corpus.textio import iter_lines

    options = options or ReadOptions()
    stats = stats if stats is not None else ReadStats()
    template = options.template if options.template and options.template.applies_to(source.domain) else None
    fmts = [source.format or file_format(Path(f)) for f in source.files]
    if source.hf or template is not None or not fmts or any(f != "txt" for f in fmts):
        yield from iter_documents(source, options, stats)
        return
    one_per_line = (source.txt_mode or options.txt_mode) == "line"

    def unit(lines, invalid):
        if not _decode_ok(invalid, options, stats):
            return None
        text = "\n".join(lines)
        stats.documents += 1
        stats.words += count_words(text)
        stats.bytes += count_bytes(text)
        return text

    for path in source.files:
        path = Path(path)
        if not path.is_file():
            raise CptlabError(f"{path}: no such file (corpus {source.domain}/{source.split})")
        stats.files += 1
        lines: list[str] = []  # the current unit: blank lines, then a document's lines
        has_doc = prev_blank = False
        invalid = 0
        for line in iter_lines(path, options.on_decode_error):
            text = _strip_eol(line.text)
            blank = not text or text.isspace()
            if not blank and has_doc and (one_per_line or prev_blank):
                # a new document starts: the finished one ends before the blank lines that separate them
                k = len(lines)
                while k and (not lines[k - 1] or lines[k - 1].isspace()):
                    k -= 1
                done, lines = lines[:k], lines[k:]
                out = unit(done, invalid)
                if out is not None:
                    yield out
                has_doc, invalid = False, 0
            lines.append(text)
            has_doc = has_doc or not blank
            invalid += line.invalid if not blank else 0
            prev_blank = blank
        if has_doc:  # the blank lines at the end of the file go with its last document
            out = unit(lines, invalid)
            if out is not None:
                yield out


def _score_m2d2(scorer, tok, docs, name, res, context, stride, writer, chunk_chars, max_documents, jobs_for):
    """Stream M2D2's windows over the joined documents; returns M2D2's reported perplexity."""
    import re

    ws = re.compile(r"\s+")
    buf = np.zeros(0, dtype=np.int64)
    base = 0  # global stream index of buf[0]
    total = 0  # tokens of the stream so far
    next_i = 0
    weighted = 0.0  # M2D2: sum of (window mean loss * trg_len)
    runs = 0  # whitespace runs of the joined text
    prev_ws_end = False
    first = True

    def run_windows(limit_final: bool):
        nonlocal next_i, weighted, buf, base
        jobs, meta = [], []
        while next_i < total and (limit_final or next_i + stride <= total):
            w = m2d2_window(next_i, total, context, stride)
            if w is not None:
                (s, e, n), trg_len = w
                jobs += jobs_for(0, [(s - base, e - base, n)])
                meta.append((e, n, trg_len))
            next_i += stride
        if jobs:
            nll = scorer.score([buf], jobs)[0]
            for e, n, trg_len in meta:
                part = nll[e - base - n + 1:e - base + 1].astype(np.float64)
                weighted += float(part.mean()) * trg_len
            scored = ~np.isnan(nll)
            res.tokens += int(scored.sum())
            res.nll_sum += float(nll[scored].astype(np.float64).sum())
            if writer is not None and scored.any():
                pos = np.nonzero(scored)[0]
                writer.write(name, 0, buf[pos], nll[pos], positions=pos + base)
        keep_from = max(next_i + stride - context, 0) - base
        if keep_from > 0:
            buf = buf[keep_from:]
            base += keep_from

    for chunk in _chunks(docs, chunk_chars, max_documents):
        text = "\n".join(chunk)
        if not first:
            text = "\n" + text
        ids = tok(text, add_special_tokens=first, return_attention_mask=False, verbose=False)["input_ids"]
        first = False
        res.documents += len(chunk)
        res.bytes += count_bytes(text)
        n_runs = len(ws.findall(text))
        if prev_ws_end and text[:1].isspace():
            n_runs -= 1  # one whitespace run across the piece boundary
        runs += n_runs
        prev_ws_end = text[-1:].isspace()
        buf = np.concatenate([buf, np.asarray(ids, dtype=np.int64)])
        total += len(ids)
        run_windows(False)
    run_windows(True)
    res.words = runs + 1 if res.documents else 0
    return math.exp(weighted / total) if total else float("nan")


def result_from_dict(data: dict) -> EvalResult:
    """An EvalResult from its `to_dict()` (e.g. a saved JSON)."""
    domains = {d: DomainResult(**{k: v[k] for k in asdict(DomainResult())}) for d, v in data["domains"].items()}
    return EvalResult(dict(data["settings"]), domains)
