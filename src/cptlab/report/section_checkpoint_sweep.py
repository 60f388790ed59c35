"""Report section `checkpoint-sweep`: target and general perplexity vs pretraining tokens, before and after adapting
each checkpoint; the checkpoint that ends best and the U-shape verdict (cptlab.diagnose.checkpoint_series).

Reads the evaluations of a `checkpoint-sweep` study: baseline runs (`before-<checkpoint>`, axes {checkpoint}) and
adaptation runs (axes {checkpoint, lr, seed}); the checkpoint axis value carries `tokens` and `parameters`.
A group's perplexity is the geometric mean over its domains (target or general) of the token perplexity.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from cptlab.diagnose.checkpoint_series import summarize, token_ticks, u_shape_verdict
from cptlab.report.sections import ReportContext, Section, register_section


def sweep_table(ctx: ReportContext) -> dict[str, Any] | None:
    """{checkpoints: [{name, tokens, parameters}], lrs, before: {ckpt: {group: ppl}},
    after: {(ckpt, lr): {group: [ppl per seed]}}, target, general}; None when the study has no sweep."""
    rows = ctx.db.execute(
        "SELECT e.run, e.domain, e.token_perplexity, r.role, r.axes, r.config FROM evaluations e "
        "JOIN runs r ON r.name = e.run WHERE r.status = 'done' ORDER BY r.position, e.run, e.domain").fetchall()
    checkpoints: dict[str, dict[str, Any]] = {}
    target: list[str] = []
    general: list[str] = []
    per_run: dict[str, dict[str, Any]] = {}
    for r in rows:
        axes = json.loads(r["axes"] or "{}")
        ck = axes.get("checkpoint")
        if not isinstance(ck, dict) or "name" not in ck:
            continue
        meta = json.loads(r["config"] or "{}").get("meta") or {}
        target = target or list(meta.get("target") or [])
        general = general or list(meta.get("general") or [])
        checkpoints.setdefault(ck["name"], ck)
        entry = per_run.setdefault(r["run"], {"role": r["role"], "ck": ck["name"], "lr": axes.get("lr"),
                                              "seed": axes.get("seed"), "ppl": {}})
        entry["ppl"][r["domain"]] = r["token_perplexity"]
    if not per_run or not target:
        return None
    groups = {"target": target, "general": general}

    def group_ppl(ppl: dict[str, float], domains: list[str]) -> float | None:
        vals = [ppl.get(d) for d in domains]
        if not vals or any(v is None or v <= 0 for v in vals):
            return None
        return math.exp(sum(math.log(v) for v in vals) / len(vals))

    before: dict[str, dict[str, float | None]] = {}
    after: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in per_run.values():
        g = {name: group_ppl(e["ppl"], doms) for name, doms in groups.items() if doms}
        if e["role"] == "baseline":
            before[e["ck"]] = g
        else:
            for name, v in g.items():
                if v is not None:
                    after[(e["ck"], e["lr"])][name].append(v)
    order = sorted(checkpoints.values(), key=lambda c: (c.get("tokens") is None, c.get("tokens") or 0))
    lrs = sorted({lr for (_, lr) in after if lr is not None})
    return {"checkpoints": order, "lrs": lrs, "before": before, "after": after, "target": target,
            "general": general}


def verdicts(t: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    out = {}
    for group in ("target", "general"):
        if group == "general" and not t["general"]:
            continue
        for lr in t["lrs"]:
            pts = [{"label": c["name"], "tokens": c.get("tokens"), "parameters": c.get("parameters"),
                    "values": t["after"].get((c["name"], lr), {}).get(group, [])} for c in t["checkpoints"]]
            out[(group, lr)] = u_shape_verdict(pts, metric=f"{group} perplexity after adaptation at lr {lr:g}")
    return out


def forgetting(t: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """Per lr: how much adaptation raised the general log-perplexity (log PPL after - log PPL before, nats per
    token) from each checkpoint, over seeds, and whether that rise grows with pretraining tokens.

    The paper's mechanism: later checkpoints are more sensitive, so the same adaptation degrades what pretraining
    learnt more. {lr: {"checkpoints": [{label, tokens, parameters, n, mean, std, sem}], "text"}}; empty without
    general domains."""
    if not t["general"]:
        return {}
    out = {}
    for lr in t["lrs"]:
        rows = []
        for c in t["checkpoints"]:
            b = t["before"].get(c["name"], {}).get("general")
            a = t["after"].get((c["name"], lr), {}).get("general", [])
            if b and a:
                rows.append({"label": c["name"], "tokens": c.get("tokens"), "parameters": c.get("parameters"),
                             **summarize([math.log(v) - math.log(b) for v in a])})
        out[lr] = {"checkpoints": rows, "text": _forgetting_text(rows, lr)}
    return out


def _forgetting_text(rows: list[dict[str, Any]], lr: float, alpha: float = 0.05) -> str:
    from cptlab.diagnose.checkpoint_series import difference, seen_text, welch_test

    if len(rows) < 2:
        return f"lr {lr:g}: fewer than two checkpoints with general perplexity before and after; nothing to compare."
    first, last = rows[0], rows[-1]
    diff, _ = difference(first, last)
    w = welch_test(first, last)
    sig = w is not None and w["p_two_sided"] <= alpha
    text = (f"At lr {lr:g}, adaptation raised the general log-perplexity by {first['mean']:+.3f} nats from "
            f"{first['label']}{seen_text(first)} and by {last['mean']:+.3f} from {last['label']}{seen_text(last)}")
    if w:
        text += (f" (difference {diff:+.3f}; Welch t-test over seeds: t = {w['t']:.2f} on {w['df']:.1f} df, "
                 f"two-sided p = {w['p_two_sided']:.3g}, alpha = {alpha:g})")
    else:
        text += f" (difference {diff:+.3f}; fewer than two seeds or no spread: no test)"
    if sig and diff > 0:
        text += ": the later checkpoint forgets more of its pretraining when adapted, as the paper predicts."
    elif sig and diff < 0:
        text += ": the later checkpoint forgets less; no sign of progressive sensitivity in forgetting."
    else:
        text += ": no clear difference beyond the spread over seeds."
    return text


def checkpoint_sweep_section(ctx: ReportContext) -> Section | None:
    t = sweep_table(ctx)
    if t is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cks = t["checkpoints"]
    have_tokens = all(c.get("tokens") for c in cks)
    xs = [float(c["tokens"]) if have_tokens else float(i) for i, c in enumerate(cks)]
    groups = ["target"] + (["general"] if t["general"] else [])
    fig, axes = plt.subplots(1, len(groups), figsize=(6.0 * len(groups), 4.0), squeeze=False)
    for ax, group in zip(axes[0], groups):
        b = [t["before"].get(c["name"], {}).get(group) for c in cks]
        pts = [(x, v) for x, v in zip(xs, b) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--o", label="before adaptation")
        for j, lr in enumerate(t["lrs"]):
            stats = [summarize(t["after"].get((c["name"], lr), {}).get(group, [])) for c in cks]
            pts = [(x, s["mean"], s["sem"] or 0) for x, s in zip(xs, stats) if s["n"]]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, color=plt.get_cmap("tab10")(j), label=f"after, lr {lr:g}")
        if have_tokens:
            token_ticks(ax, xs)
        ax.set_xlabel("pretraining tokens of the starting checkpoint (log scale)" if have_tokens
                      else "starting checkpoint (index)")
        doms = ", ".join(t[group])
        ax.set_ylabel(f"{group} token perplexity" + (" (geometric mean)" if len(t[group]) > 1 else ""))
        ax.set_title(f"{group}: {doms}", fontsize=9)
        ax.legend(fontsize=7)
    html = [
        "<p>Each checkpoint of the pretraining run was adapted with the same recipe; perplexity on the target "
        f"domain(s) ({ctx.escape(', '.join(t['target']))}) and on the general domain(s) "
        f"({ctx.escape(', '.join(t['general']) or 'none given')}) before and after. Error bars: standard error over "
        "seeds. A later checkpoint that ends worse than an earlier one is the signature of catastrophic "
        "overtraining (arXiv 2503.19206). The verdict tests the last checkpoint against every earlier one "
        "(one-sided Welch t-tests, Bonferroni-corrected, so picking the best checkpoint after the fact does not "
        "inflate the error rate): a flat curve is called U-shaped at most 5% of the time.</p>",
        ctx.figure(fig, "checkpoint-sweep", "Perplexity vs pretraining tokens, before and after adaptation"),
    ]
    for (group, lr), v in verdicts(t).items():
        html.append(f"<p class=\"verdict\"><b>{ctx.escape(group)}, lr {lr:g}:</b> {ctx.escape(v['text'])}</p>")
    forgot = forgetting(t)
    if forgot:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for j, (lr, f) in enumerate(forgot.items()):
            rows = [(x, r) for x, c in zip(xs, cks) for r in f["checkpoints"] if r["label"] == c["name"]]
            if rows:
                ax.errorbar([x for x, _ in rows], [r["mean"] for _, r in rows], yerr=[r["sem"] or 0 for _, r in rows],
                            marker="o", capsize=3, color=plt.get_cmap("tab10")(j), label=f"lr {lr:g}")
        if have_tokens:
            token_ticks(ax, xs)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("pretraining tokens of the starting checkpoint (log scale)" if have_tokens
                      else "starting checkpoint (index)")
        ax.set_ylabel("general log-PPL after - before (nats/token)")
        ax.legend(fontsize=7)
        html.append(ctx.figure(fig, "checkpoint-sweep-forgetting", "Forgetting: how much adapting each checkpoint "
                               "raised the general (pretraining) log-perplexity"))
        for lr, f in forgot.items():
            html.append(f"<p class=\"verdict\"><b>forgetting, lr {lr:g}:</b> {ctx.escape(f['text'])}</p>")
    cols = ["checkpoint", "tokens seen", "parameters", "tokens / parameter", "lr", "seeds", "target PPL before",
            "target PPL after", "± SE", "general PPL before", "general PPL after", "± SE",
            "general Δ log-PPL (forgetting)", "± SE"]
    rows = []
    for c in cks:
        params = c.get("parameters")
        tpp = c["tokens"] / params if c.get("tokens") is not None and params else None
        for lr in t["lrs"]:
            a = t["after"].get((c["name"], lr), {})
            st, sg = summarize(a.get("target", [])), summarize(a.get("general", []))
            b = t["before"].get(c["name"], {})
            fg = next((r for r in forgot.get(lr, {}).get("checkpoints", []) if r["label"] == c["name"]), {})
            rows.append([c["name"], c.get("tokens"), params, tpp, lr, st["n"], b.get("target"), st["mean"],
                         st["sem"], b.get("general"), sg["mean"], sg["sem"], fg.get("mean"), fg.get("sem")])
    html.append(ctx.table(cols, rows))
    return Section("Adapting each pretraining checkpoint (checkpoint sweep)", "\n".join(html))


register_section("checkpoint-sweep", checkpoint_sweep_section)
