"""Compare two per-token loss files of the same text (e.g. before and after continued pretraining).

All changes are measured in log-perplexity, the quantity that adds up over tokens: for a set of N scored tokens,
`log PPL = sum(nll) / N`, so `Δ log PPL = sum_i (nll_after_i - nll_before_i) / N`, and a group of tokens (one
token type, one token class) contributes `sum_{i in group} Δnll_i / N`. The contributions of all token types (or
of all classes) sum to the total Δ log PPL (up to float rounding, ~1e-15 relative); the JSON reports the sums.

Token classes (`token_class`): newline, whitespace, punctuation, digits, word-start, subword, and `special`
for the tokenizer's special tokens (BOS/EOS/...).
"""

from __future__ import annotations

import codecs
import math
import unicodedata
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError, UsageError

CLASSES = ("newline", "whitespace", "punctuation", "digits", "word-start", "subword", "special")
HIST_BINS = 60


def token_class(text: str, special: bool = False) -> str:
    """The class of a token from its decoded text.

    newline: only whitespace, with a line break; whitespace: only whitespace; punctuation: only punctuation or
    symbols once surrounding whitespace is removed (" (", "):", "=="); digits: only digits once whitespace is removed;
    word-start: starts with whitespace followed by other characters (" the", " foo_bar"); subword: anything else
    (the continuation of a word, or a word at the very start of a text). `special=True`: "special".
    """
    if special:
        return "special"
    if text == "" or text.isspace():
        return "newline" if ("\n" in text or "\r" in text) else "whitespace"
    core = text.strip()
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    if core.isdigit():
        return "digits"
    if text[0].isspace():
        return "word-start"
    return "subword"


def _load(x, label: str):
    from cptlab.evaluate.token_losses import TokenLosses, read_token_losses

    return x if isinstance(x, TokenLosses) else read_token_losses(x)


def _text(tl, i: int) -> str:
    return tl.token_text.get(int(i), f"<id {int(i)}>")


def _align(b, a, names: tuple[str, str]):
    """Row order of `a` matching `b` (same domain, doc, position, token), or a CptlabError naming what differs."""
    nb, na = names
    only_b = [d for d in b.domains if d not in a.domains]
    only_a = [d for d in a.domains if d not in b.domains]
    if only_b or only_a:
        raise CptlabError(f"{nb} and {na} cover different domains: only in {nb}: {', '.join(only_b) or '-'}; "
                          f"only in {na}: {', '.join(only_a) or '-'}")
    a_code = np.array([b.domains.index(d) for d in a.domains], dtype=np.int32)[a.domain_code] \
        if len(a) else a.domain_code
    for k, d in enumerate(b.domains):
        n_b, n_a = int((b.domain_code == k).sum()), int((a_code == k).sum())
        if n_b != n_a:
            raise CptlabError(f"domain {d!r}: {nb} scored {n_b} tokens, {na} scored {n_a} (not the same text: "
                              f"different documents, split, max_documents, mode or tokenizer)")
    same_order = (np.array_equal(b.domain_code, a_code) and np.array_equal(b.doc, a.doc)
                  and np.array_equal(b.position, a.position))
    if same_order:
        order_a = np.arange(len(a))
        order_b = None
    else:
        order_b = np.lexsort((b.position, b.doc, b.domain_code))
        order_a = np.lexsort((a.position, a.doc, a_code))
    bd, bp, bt = (b.doc, b.position, b.token_id) if order_b is None else \
        (b.doc[order_b], b.position[order_b], b.token_id[order_b])
    bc = b.domain_code if order_b is None else b.domain_code[order_b]
    ad, ap, at = a.doc[order_a], a.position[order_a], a.token_id[order_a]
    bad = np.nonzero((bd != ad) | (bp != ap))[0]
    if len(bad):
        r = bad[0]
        raise CptlabError(f"domain {b.domains[bc[r]]!r}: the scored tokens differ: {nb} has doc {bd[r]} position "
                          f"{bp[r]} where {na} has doc {ad[r]} position {ap[r]} (different documents or mode)")
    bad = np.nonzero(bt != at)[0]
    if len(bad):
        r = bad[0]
        fb = b.settings.get("tokenizer_fingerprint", "?")[:12]
        fa = a.settings.get("tokenizer_fingerprint", "?")[:12]
        hint = f"different tokenizers: {fb} vs {fa}" if fb != fa else "different text"
        raise CptlabError(f"domain {b.domains[bc[r]]!r}, doc {bd[r]}, position {bp[r]}: token id {bt[r]} "
                          f"({_text(b, bt[r])!r}) in {nb}, {at[r]} ({_text(a, at[r])!r}) in {na} "
                          f"({int(len(bad))} of {len(bt)} tokens differ; {hint})")
    return order_b, order_a


def parse_exclude(items, token_text: dict[int, str], special_ids=frozenset()) -> tuple[set[int], list[str]]:
    """Token ids to leave out from `--exclude` items: class names, `id:N`, or token texts with backslash
    escapes ("\\n", "\\t", " the"). Unknown items are a usage error naming them."""
    if isinstance(items, str):
        items = [x for x in items.split(",") if x != ""]
    ids: set[int] = set()
    labels: list[str] = []
    by_text: dict[str, list[int]] = {}
    for i, t in token_text.items():
        by_text.setdefault(t, []).append(i)
    for item in items or []:
        if item in CLASSES:
            labels.append(item)
            ids.update(i for i, t in token_text.items() if token_class(t, i in special_ids) == item)
        elif item.startswith("id:") and item[3:].isdigit():
            ids.add(int(item[3:]))
            labels.append(item)
        else:
            text = codecs.decode(item, "unicode_escape") if "\\" in item else item
            if text not in by_text:
                raise UsageError(f"--exclude {item!r}: not a class ({', '.join(CLASSES)}), not id:N and no scored "
                                 f"token has this text")
            ids.update(by_text[text])
            labels.append(repr(text))
    return ids, labels


def _ppl(total: float, n: int) -> float | None:
    return math.exp(total / n) if n else None


def _summary(nb: np.ndarray, na: np.ndarray) -> dict:
    n = len(nb)
    sb, sa = math.fsum(nb), math.fsum(na)
    pb, pa = _ppl(sb, n), _ppl(sa, n)
    return {"tokens": n, "nll_sum_before": sb, "nll_sum_after": sa, "ppl_before": pb, "ppl_after": pa,
            "delta_ppl": (pa - pb) if n else None, "delta_log_ppl": (sa - sb) / n if n else None}


def _group_table(keys: np.ndarray, delta: np.ndarray, n_total: int, size: int) -> tuple[np.ndarray, ...]:
    count = np.bincount(keys, minlength=size)
    dsum = np.bincount(keys, weights=delta, minlength=size)
    return count, dsum, dsum / n_total


def compare_token_losses(before, after, exclude=None, domains=None, top: int = 30,
                         names: tuple[str, str] = ("BEFORE", "AFTER")) -> dict:
    """Token-level comparison of two evaluations of the same text (paths or `TokenLosses`); see the module doc.

    Returns a JSON-able dict: `total` (pooled over the selected domains: tokens, ppl_before, ppl_after, delta_ppl,
    delta_log_ppl), `domains` (the same per domain, with per-class contributions), `tokens` (the `top` token types
    by |contribution| to the total Δ log PPL: id, text, class, count, delta_nll_sum, mean_delta_nll,
    contribution), `classes` (every class), `excluded` (the PPLs recomputed without the `exclude` tokens/classes),
    `histogram` (of per-token Δnll), `check` (the sums of all contributions vs the total), `settings`.
    """
    b, a = _load(before, names[0]), _load(after, names[1])
    order_b, order_a = _align(b, a, names)
    nb = b.nll if order_b is None else b.nll[order_b]
    na = a.nll[order_a]
    code = b.domain_code if order_b is None else b.domain_code[order_b]
    tid = b.token_id if order_b is None else b.token_id[order_b]
    token_text = {**a.token_text, **b.token_text}
    special = set(b.special_ids) | set(a.special_ids)

    if domains:
        if isinstance(domains, str):
            domains = [d for d in domains.split(",") if d]
        unknown = [d for d in domains if d not in b.domains]
        if unknown:
            raise UsageError(f"--domains: {', '.join(unknown)} not in {names[0]} (domains: {', '.join(b.domains)})")
        keep = np.isin(code, [b.domains.index(d) for d in domains])
        nb, na, code, tid = nb[keep], na[keep], code[keep], tid[keep]
        selected = list(domains)
    else:
        selected = list(b.domains)

    delta = na - nb
    n = len(delta)
    total = _summary(nb, na)
    size = int(tid.max()) + 1 if n else 1
    ids_present = np.unique(tid)
    class_of_id = {int(i): token_class(token_text.get(int(i), ""), int(i) in special) for i in ids_present}
    class_idx = np.zeros(size, dtype=np.int64)
    for i, c in class_of_id.items():
        class_idx[i] = CLASSES.index(c)
    tok_class = class_idx[tid] if n else np.zeros(0, dtype=np.int64)

    count, dsum, contrib = _group_table(tid, delta, max(n, 1), size)
    ranked = sorted((int(i) for i in ids_present), key=lambda i: -abs(contrib[i]))
    tokens = [{"id": i, "text": token_text.get(i, f"<id {i}>"), "class": class_of_id[i], "count": int(count[i]),
               "delta_nll_sum": float(dsum[i]), "mean_delta_nll": float(dsum[i] / count[i]),
               "contribution": float(contrib[i])} for i in ranked[:top]]
    classes = _classes(tok_class, delta, nb, n)

    per_domain = {}
    for d in selected:
        k = b.domains.index(d)
        m = code == k
        s = _summary(nb[m], na[m])
        s["classes"] = _classes(tok_class[m], delta[m], nb[m], int(m.sum()))
        per_domain[d] = s

    ex_ids, ex_labels = parse_exclude(exclude, token_text, special) if exclude else (set(), [])
    excluded = None
    if ex_labels:
        drop = np.isin(tid, sorted(ex_ids))
        excluded = {"exclude": ex_labels, "tokens_left_out": int(drop.sum()),
                    "total": _summary(nb[~drop], na[~drop]), "domains": {}}
        for d in selected:
            m = (code == b.domains.index(d)) & ~drop
            excluded["domains"][d] = _summary(nb[m], na[m])

    if n:
        lo, hi = np.quantile(delta, [0.001, 0.999])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(np.clip(delta, lo, hi), bins=HIST_BINS, range=(lo, hi))
        hist = {"edges": edges.tolist(), "counts": counts.tolist(), "below": int((delta < lo).sum()),
                "above": int((delta > hi).sum()), "mean": float(delta.mean()), "median": float(np.median(delta))}
    else:
        hist = {"edges": [], "counts": [], "below": 0, "above": 0, "mean": None, "median": None}

    check = {"total_delta_log_ppl": total["delta_log_ppl"],
             "sum_token_contributions": math.fsum(contrib[ids_present].tolist()) if n else 0.0,
             "sum_class_contributions": math.fsum(c["contribution"] for c in classes.values())}
    return {"before": str(b.path), "after": str(a.path), "domains_compared": selected, "total": total,
            "domains": per_domain, "tokens": tokens, "classes": classes, "excluded": excluded, "histogram": hist,
            "check": check, "settings": {"before": b.settings, "after": a.settings}}


def _classes(tok_class: np.ndarray, delta: np.ndarray, nb: np.ndarray, n: int) -> dict:
    count = np.bincount(tok_class, minlength=len(CLASSES))
    dsum = np.bincount(tok_class, weights=delta, minlength=len(CLASSES))
    bsum = np.bincount(tok_class, weights=nb, minlength=len(CLASSES))
    out = {}
    for k, c in enumerate(CLASSES):
        out[c] = {"count": int(count[k]), "delta_nll_sum": float(dsum[k]),
                  "mean_delta_nll": float(dsum[k] / count[k]) if count[k] else None,
                  "mean_nll_before": float(bsum[k] / count[k]) if count[k] else None,
                  "contribution": float(dsum[k] / n) if n else 0.0}
    return out


def write_plots(result: dict, out_dir) -> list[Path]:
    """PNG plots of a comparison: Δnll histogram, class contributions, top tokens, ΔPPL per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    h = result["histogram"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if h["counts"]:
        edges = np.array(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color="#4477aa")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Δ nll per token (after − before, nats; tails clipped)")
    ax.set_ylabel("tokens")
    ax.set_yscale("log")
    ax.set_title("Per-token change in loss")
    paths.append(_save(fig, out / "delta_nll_hist.png"))

    cls = result["classes"]
    names = [c for c in CLASSES if cls[c]["count"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    vals = [cls[c]["contribution"] for c in names]
    ax.barh(names, vals, color=["#cc6677" if v > 0 else "#117733" for v in vals])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("contribution to Δ log-perplexity")
    ax.set_title("Token classes")
    paths.append(_save(fig, out / "class_contributions.png"))

    toks = result["tokens"][:20][::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(toks) + 1)))
    vals = [t["contribution"] for t in toks]
    ax.barh([repr(t["text"]) for t in toks], vals, color=["#cc6677" if v > 0 else "#117733" for v in vals])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("contribution to Δ log-perplexity")
    ax.set_title("Token types with the largest contribution")
    paths.append(_save(fig, out / "top_tokens.png"))

    doms = result["domains"]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(doms) + 1)))
    vals = [doms[d]["delta_ppl"] or 0.0 for d in doms]
    ax.barh(list(doms), vals, color=["#cc6677" if v > 0 else "#117733" for v in vals])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Δ token perplexity (after − before)")
    ax.set_title("Per domain")
    paths.append(_save(fig, out / "domains.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
