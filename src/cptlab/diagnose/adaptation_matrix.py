"""The adaptation matrix of a study, read from its database: ΔPPL of every (adapted model, test domain) cell,
relative to the base and to the control, with similarity, split overlap, correlation and token attribution.

`matrix_from_db(conn)` reads a study of kind `adaptation-matrix` (cptlab.study.kind_adaptation_matrix) and returns a
JSON-able dict:

* `groups`: one per (base, lr), each with `targets` (control first, then the train domains), `domains` (evaluated),
  `cells[target][domain]` = {ppl_before, ppl_after, delta_ppl, rel_change, vs_control, seeds} where
  rel_change = PPL_after / PPL_before − 1 and vs_control = PPL_after / PPL_after(control) − 1. With several seeds,
  PPL_after is the geometric mean over seeds.
* `similarity` / `overlap`: the diagnostics' per-domain rows (None when not measured).
* `correlations`: per group and similarity measure, cptlab.diagnose.correlation.correlate(similarity, own-domain
  relative change in %, PPL_before) over the train domains, and the same against the change vs the control.
* `attribution`: per adapted run, the attribution step's result (per-domain class contributions, format share,
  change without format tokens, top tokens).
* `worse`: every cell whose perplexity rose, with the share of the rise carried by newline/whitespace/punctuation
  tokens and the relative change without them, both pooled over the cell's seeds by tokens (`pooled_format`):
  format_share = Σ_seeds (format classes' Σ Δnll) / Σ_seeds (total Σ Δnll), so a seed with a bigger change weighs
  more and the ratio of a small, noisy total cannot explode the average; rel_change_without_format from the
  token-pooled log PPL without the format tokens (with equal token counts: the geometric mean over seeds of
  PPL_after, as the cells use). `attribution_seeds` says how many attributions were pooled.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from typing import Any

from cptlab.diagnose.correlation import correlate

CONTROL = "control"
MEASURES = ("jsd_similarity", "weighted_overlap", "vocab_jaccard", "embedding_cosine")


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def _geo_mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if len(vals) == 1:
        return vals[0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _rel(after: float | None, before: float | None) -> float | None:
    return after / before - 1.0 if after is not None and before else None


def _diagnostic(conn: sqlite3.Connection, kind: str) -> dict | None:
    row = conn.execute("SELECT d.result FROM diagnostics d JOIN runs r ON r.name = d.run WHERE d.kind = ? AND "
                       "r.status = 'done' ORDER BY r.position DESC LIMIT 1", (kind,)).fetchone()
    return _json(row[0]) if row else None


def matrix_from_db(conn: sqlite3.Connection, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """The study's adaptation matrix (see the module docstring); None when it has no adaptation runs done."""
    runs = conn.execute("SELECT name, role, config FROM runs WHERE status = 'done' ORDER BY position, name").fetchall()
    meta_of: dict[str, dict] = {}
    for r in runs:
        meta = (_json(r[2]).get("meta") or {}).get("adaptation")
        if isinstance(meta, dict):
            meta_of[r[0]] = meta
    if not meta_of:
        return None
    evals = conn.execute("SELECT run, domain, token_perplexity FROM evaluations WHERE step_name = 'eval' "
                         "ORDER BY run, domain").fetchall()
    before: dict[str, dict[str, float]] = defaultdict(dict)
    after: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    domains_order: list[str] = []
    general: list[str] = []
    for run, domain, ppl in evals:
        meta = meta_of.get(run)
        if meta is None:
            continue
        domains_order = domains_order or list(meta.get("eval_domains") or [])
        general = general or list(meta.get("general") or [])
        if meta.get("lr") is None:  # the baseline: the base model itself
            before[meta["base"]][domain] = ppl
        else:
            target = CONTROL if meta.get("control") else meta["target"]
            after[(meta["base"], meta["lr"])][target][domain].append(ppl)
    if not after:
        return None
    seen = {d for per in after.values() for t in per.values() for d in t}
    domains = [d for d in domains_order if d in seen] + sorted(seen - set(domains_order))

    groups = []
    for (base, lr), per_target in sorted(after.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        targets = ([CONTROL] if CONTROL in per_target else []) + [t for t in _order(per_target, domains)
                                                                  if t != CONTROL]
        control = {d: _geo_mean(v) for d, v in per_target.get(CONTROL, {}).items()}
        cells: dict[str, dict[str, dict]] = {}
        for t in targets:
            cells[t] = {}
            for d in domains:
                vals = per_target[t].get(d, [])
                a = _geo_mean(vals)
                b = before.get(base, {}).get(d)
                cells[t][d] = {"ppl_before": b, "ppl_after": a, "delta_ppl": (a - b) if a is not None and b else None,
                               "rel_change": _rel(a, b), "vs_control": _rel(a, control.get(d)) if t != CONTROL
                               else None, "seeds": len(vals)}
        groups.append({"base": base, "lr": lr, "label": f"{base}, lr {lr:g}" if len(after) else "",
                       "targets": targets, "domains": domains, "cells": cells})
    if len({g["base"] for g in groups}) == 1:
        for g in groups:
            g["label"] = f"lr {g['lr']:g}"

    similarity = _diagnostic(conn, "similarity")
    overlap = _diagnostic(conn, "overlap")
    attribution = _attribution(conn, meta_of)
    out = {"groups": groups, "domains": domains, "general": general, "similarity": similarity, "overlap": overlap,
           "attribution": attribution, "correlations": _correlations(groups, similarity, n_boot, seed),
           "worse": _worse(groups, attribution), "bootstrap": {"n_boot": n_boot, "seed": seed}}
    return out


def _order(per_target: dict, domains: list[str]) -> list[str]:
    return [d for d in domains if d in per_target] + sorted(t for t in per_target if t not in domains)


def own_cells(group: dict) -> list[tuple[str, dict]]:
    """(domain, cell) of the diagonal: each train domain's own test perplexity change."""
    return [(t, group["cells"][t][t]) for t in group["targets"] if t != CONTROL and t in group["cells"][t]]


def similarity_measures(similarity: dict | None) -> list[str]:
    if not similarity or not isinstance(similarity.get("domains"), dict):
        return []
    present = set()
    for row in similarity["domains"].values():
        if isinstance(row, dict):
            present |= {m for m in MEASURES if isinstance(row.get(m), (int, float))}
    return [m for m in MEASURES if m in present]


def _correlations(groups: list[dict], similarity: dict | None, n_boot: int, seed: int) -> list[dict]:
    measures = similarity_measures(similarity)
    out = []
    for g in groups:
        own = own_cells(g)
        labels = [d for d, _ in own]
        start = [c["ppl_before"] for _, c in own]
        for measure in measures:
            x = [(similarity["domains"].get(d) or {}).get(measure) for d in labels]
            for y_name, key in (("relative change of own-domain PPL (%)", "rel_change"),
                                ("own-domain PPL change vs control (%)", "vs_control")):
                y = [None if c[key] is None else 100.0 * c[key] for _, c in own]
                res = correlate(x, y, start, labels=labels, n_boot=n_boot, seed=seed)
                out.append({"group": g["label"], "base": g["base"], "lr": g["lr"], "measure": measure,
                            "y": y_name, "key": key, **res})
    return out


def _attribution(conn: sqlite3.Connection, meta_of: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for run, result in conn.execute("SELECT d.run, d.result FROM diagnostics d JOIN runs r ON r.name = d.run "
                                    "WHERE d.kind = 'attribution' AND r.status = 'done' ORDER BY r.position"):
        meta = meta_of.get(run, {})
        res = _json(result)
        res["meta"] = {k: meta.get(k) for k in ("base", "target", "control", "lr", "seed")}
        out[run] = res
    return out


def pooled_format(cells: list[dict]) -> dict[str, Any]:
    """Format share and relative change without the format tokens, pooled over seeds (attribution cells of one
    (model, test domain), one per seed) by tokens; see the module docstring.

    Per seed, with N tokens: the format classes' summed Δnll = N · format.contribution and the total summed Δnll
    = N · delta_log_ppl (contributions are Σ Δnll / N). share = Σ N·contribution / Σ N·delta_log_ppl (None when
    the pooled total is ~0). Without format: log PPL_after/before pooled as Σ N' log PPL / Σ N' over the
    without-format cells (N' their token counts). A cell that lacks `tokens` weighs 1; one that lacks the
    pooling fields falls back to its own share / relative change, averaged (older results)."""
    num = den = 0.0
    have = [c for c in cells if isinstance((c.get("format") or {}).get("contribution"), (int, float))
            and isinstance(c.get("delta_log_ppl"), (int, float))]
    share = None
    if have:
        for c in have:
            n = c.get("tokens") or 1
            num += n * c["format"]["contribution"]
            den += n * c["delta_log_ppl"]
        share = num / den if abs(den) > 1e-12 * sum(c.get("tokens") or 1 for c in have) else None
    else:
        shares = [c["format"]["share"] for c in cells if (c.get("format") or {}).get("share") is not None]
        share = sum(shares) / len(shares) if shares else None
    wo = [c.get("without_format") or {} for c in cells]
    full = [w for w in wo if all(isinstance(w.get(k), (int, float)) and w[k] > 0 for k in ("ppl_before", "ppl_after"))]
    without = None
    if full:
        weights = [w.get("tokens") or 1 for w in full]
        total = sum(weights)
        log_a = sum(n * math.log(w["ppl_after"]) for n, w in zip(weights, full)) / total
        log_b = sum(n * math.log(w["ppl_before"]) for n, w in zip(weights, full)) / total
        without = math.exp(log_a - log_b) - 1.0
    else:
        rel = [w["rel_change"] for w in wo if w.get("rel_change") is not None]
        without = sum(rel) / len(rel) if rel else None
    return {"format_share": share, "rel_change_without_format": without, "attribution_seeds": len(cells)}


def _worse(groups: list[dict], attribution: dict[str, dict]) -> list[dict]:
    """Cells whose PPL rose, with the format classes' share of the rise (pooled over seeds by tokens)."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for res in attribution.values():
        m = res.get("meta") or {}
        target = CONTROL if m.get("control") else m.get("target")
        for d, cell in (res.get("domains") or {}).items():
            by_key[(m.get("base"), m.get("lr"), target, d)].append(cell)
    rows = []
    for g in groups:
        for t in g["targets"]:
            for d in g["domains"]:
                c = g["cells"][t][d]
                if c["rel_change"] is None or c["rel_change"] <= 0:
                    continue
                att = by_key.get((g["base"], g["lr"], t, d), [])
                pooled = (pooled_format(att) if att else
                          {"format_share": None, "rel_change_without_format": None, "attribution_seeds": 0})
                rows.append({"group": g["label"], "base": g["base"], "lr": g["lr"], "target": t, "domain": d,
                             "own": t == d, "rel_change": c["rel_change"], "vs_control": c["vs_control"], **pooled})
    rows.sort(key=lambda r: -r["rel_change"])
    return rows
