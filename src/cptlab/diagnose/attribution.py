"""Which tokens made an adapted model's perplexity change? Token attribution for one cell row of the matrix.

Adaptation Odyssey (arXiv 2410.05581) reports that a few tokens unrelated to the domain ("\\n", whitespace,
punctuation) cause most of a rise in perplexity after continued pretraining. `attribute(before, after, targets)`
compares two per-token loss files of the same text (cptlab.evaluate.compare) and returns, per evaluated domain:

* PPL before/after, ΔPPL, relative change, and Δ log PPL = Σ Δnll / N (nats/token), which adds up over tokens;
* the contribution of each token class (newline, whitespace, punctuation, digits, word-start, subword, special) to
  Δ log PPL (they sum to it), and the *format* share: contribution of `FORMAT_CLASSES` / Δ log PPL;
* PPL before/after and the relative change recomputed without the format classes' tokens ("what is left");

and, pooled over the `targets` (the domain(s) the model was adapted to), the `top` token types by contribution to
Δ log PPL, and the relative change recomputed without the top tokens that *raised* the loss.
"""

from __future__ import annotations

from typing import Sequence

FORMAT_CLASSES = ("newline", "whitespace", "punctuation")


def _rel(before: float | None, after: float | None) -> float | None:
    return after / before - 1.0 if before and after is not None else None


def _cell(s: dict) -> dict:
    return {"tokens": s["tokens"], "ppl_before": s["ppl_before"], "ppl_after": s["ppl_after"],
            "delta_ppl": s["delta_ppl"], "rel_change": _rel(s["ppl_before"], s["ppl_after"]),
            "delta_log_ppl": s["delta_log_ppl"]}


def format_share(classes: dict, delta_log_ppl: float | None, format_classes: Sequence[str] = FORMAT_CLASSES) -> dict:
    """Contribution of the format classes to Δ log PPL and its share of the total (None when the total is ~0)."""
    contribution = sum(classes.get(c, {}).get("contribution", 0.0) for c in format_classes)
    share = contribution / delta_log_ppl if delta_log_ppl and abs(delta_log_ppl) > 1e-12 else None
    return {"contribution": contribution, "share": share}


def attribute(before, after, targets: Sequence[str] | None = None, top: int = 10,
              format_classes: Sequence[str] = FORMAT_CLASSES) -> dict:
    """Attribution of the change from `before` to `after` (per-token loss files or TokenLosses); see module doc."""
    from cptlab.evaluate.compare import CLASSES, compare_token_losses
    from cptlab.evaluate.token_losses import TokenLosses, read_token_losses

    b = before if isinstance(before, TokenLosses) else read_token_losses(before)
    a = after if isinstance(after, TokenLosses) else read_token_losses(after)
    unknown = [c for c in format_classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"format classes {unknown}: not token classes ({', '.join(CLASSES)})")
    full = compare_token_losses(b, a, exclude=list(format_classes), top=top, names=("before", "after"))
    domains: dict[str, dict] = {}
    for d, s in full["domains"].items():
        cell = _cell(s)
        cell["classes"] = {c: {"count": v["count"], "contribution": v["contribution"],
                               "mean_delta_nll": v["mean_delta_nll"]} for c, v in s["classes"].items()}
        cell["format"] = format_share(s["classes"], s["delta_log_ppl"], format_classes)
        w = full["excluded"]["domains"][d] if full["excluded"] else s
        cell["without_format"] = _cell(w)
        domains[d] = cell
    out: dict = {"format_classes": list(format_classes), "domains": domains, "targets": [], "top_tokens": [],
                 "without_top": None}
    targets = [t for t in (targets or []) if t in domains]
    if targets:
        tgt = compare_token_losses(b, a, domains=targets, top=top, names=("before", "after"))
        out["targets"] = targets
        out["target_total"] = _cell(tgt["total"])
        out["target_classes"] = {c: v["contribution"] for c, v in tgt["classes"].items()}
        out["top_tokens"] = [{k: t[k] for k in ("id", "text", "class", "count", "contribution", "mean_delta_nll")}
                             for t in tgt["tokens"]]
        raising = [t["id"] for t in tgt["tokens"] if t["contribution"] > 0]
        if raising:
            wo = compare_token_losses(b, a, domains=targets, exclude=[f"id:{i}" for i in raising], top=1,
                                      names=("before", "after"))
            out["without_top"] = {"left_out_ids": raising, "tokens_left_out": wo["excluded"]["tokens_left_out"],
                                  **_cell(wo["excluded"]["total"])}
    out["check"] = full["check"]
    return out
