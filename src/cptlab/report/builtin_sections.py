"""The default sections of every study's report: run table, loss curves, perplexity before/after, Δ heat-map.

"Before" is the run's baseline (the `baseline:` runs of the study, e.g. the base model's evaluation); "after" is
the run's own evaluation. When a run has several eval steps, each (step, model label) is its own row.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

from cptlab.report.sections import ReportContext, Section, register_section


def _axes(row) -> dict:
    try:
        return json.loads(row["axes"] or "{}")
    except json.JSONDecodeError:
        return {}


def _axis_text(v) -> str:
    if isinstance(v, dict):
        return str(v.get("name") or v.get("label") or json.dumps(v, sort_keys=True))
    return v if isinstance(v, (int, float, str)) else json.dumps(v)


def runs_section(ctx: ReportContext) -> Section | None:
    runs = ctx.db.execute("SELECT * FROM runs ORDER BY position, name").fetchall()
    if not runs:
        return None
    axis_names: list[str] = []
    for r in runs:
        for a in _axes(r):
            if a not in axis_names:
                axis_names.append(a)
    columns = ["run", "role", *axis_names, "status", "attempts", "started (UTC)", "duration (s)", "error"]
    rows = []
    for r in runs:
        ax = _axes(r)
        started = (datetime.fromtimestamp(r["started"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                   if r["started"] else None)
        duration = (float(r["ended"] - r["started"]) if r["started"] and r["ended"] else None)
        rows.append([r["name"], r["role"], *(_axis_text(ax[a]) if a in ax else None for a in axis_names),
                     r["status"], r["attempts"], started, duration, r["error"] or ""])
    counts = defaultdict(int)
    for r in runs:
        counts[r["status"]] += 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return Section("Runs", f"<p>{ctx.escape(len(runs))} runs: {ctx.escape(summary)}.</p>"
                   + ctx.table(columns, rows, digits=1))


def loss_curves_section(ctx: ReportContext) -> Section | None:
    rows = ctx.db.execute(
        "SELECT m.run, m.step_name, m.step, m.value FROM metrics m JOIN runs r ON r.name = m.run "
        "WHERE m.key = 'loss' AND m.value IS NOT NULL ORDER BY r.position, m.run, m.step_name, m.step").fetchall()
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    curves: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        label = r["run"] if r["step_name"] == "train" else f"{r['run']}/{r['step_name']}"
        xs, ys = curves.setdefault(label, ([], []))
        xs.append(r["step"])
        ys.append(r["value"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label, linewidth=1.4)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("training loss (nats / token)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, loc="upper right")
    html = ctx.figure(fig, "loss-curves", "Training loss per run")
    table = [[label, len(xs), xs[-1], ys[0], ys[-1], min(ys)] for label, (xs, ys) in curves.items()]
    html += ctx.table(["run", "points", "last step", "first loss", "last loss", "min loss"], table)
    html += _held_out_losses(ctx, plt)
    return Section("Loss curves", html)


def _held_out_losses(ctx: ReportContext, plt) -> str:
    """The trainer's periodic evaluations (metrics `<split>_loss/<domain>`): one panel per domain."""
    rows = ctx.db.execute(
        "SELECT m.run, m.step, m.key, m.value FROM metrics m JOIN runs r ON r.name = m.run "
        "WHERE m.key LIKE '%\\_loss/%' ESCAPE '\\' AND m.value IS NOT NULL "
        "ORDER BY r.position, m.run, m.key, m.step").fetchall()
    if not rows:
        return ""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for r in rows:
        split_key, _, domain = r["key"].partition("/")
        xs, ys = series.setdefault(f"{domain} ({split_key.removesuffix('_loss')})", {}).setdefault(r["run"], ([], []))
        xs.append(r["step"])
        ys.append(r["value"])
    panels = list(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.0 * len(panels), 12), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for run, (xs, ys) in series[panel].items():
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=run)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training step (optimizer updates)")
        ax.set_ylabel("held-out loss (nats / token)")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if sum(len(v) for v in series.values()) <= 12 * len(panels):
        axes[0][-1].legend(fontsize=7)
    table = [[run, panel, xs[-1], ys[-1]] for panel in panels for run, (xs, ys) in series[panel].items()]
    return (ctx.figure(fig, "held-out-loss", "Held-out loss during training, per evaluation domain")
            + ctx.table(["run", "domain (split)", "last step", "last held-out loss"], table))


def _evaluations(ctx: ReportContext):
    return ctx.db.execute(
        "SELECT e.*, r.role, r.baseline, r.position FROM evaluations e JOIN runs r ON r.name = e.run "
        "WHERE r.status = 'done' ORDER BY r.position, e.run, e.step_name, e.model, e.domain").fetchall()


def before_after(ctx: ReportContext) -> list[dict]:
    """One entry per (run, eval step, model, domain, split) of a non-baseline run: its token perplexity and its
    baseline's (the baseline run's last evaluation of the same domain and split)."""
    evals = _evaluations(ctx)
    base: dict[tuple[str, str, str], float] = {}
    for e in evals:
        if e["role"] == "baseline":
            base[(e["run"], e["domain"], e["split"])] = e["token_perplexity"]  # last one wins
    out = []
    for e in evals:
        if e["role"] == "baseline":
            continue
        before = base.get((e["baseline"], e["domain"], e["split"])) if e["baseline"] else None
        after = e["token_perplexity"]
        delta = (after - before) / before * 100.0 if before and after is not None else None
        out.append({"run": e["run"], "step": e["step_name"], "model": e["model"], "domain": e["domain"],
                    "split": e["split"], "baseline": e["baseline"], "before": before, "after": after,
                    "delta_pct": delta, "tokens": e["tokens"], "bits_per_byte": e["bits_per_byte"]})
    return out


def perplexity_section(ctx: ReportContext) -> Section | None:
    evals = _evaluations(ctx)
    if not evals:
        return None
    pairs = before_after(ctx)
    html = ""
    if pairs:
        html += ("<p>Token perplexity on each domain before (the run's baseline) and after; Δ is the relative "
                 "change in percent (negative = better).</p>")
        html += ctx.table(
            ["run", "step", "model", "domain", "split", "baseline", "tokens", "ppl before", "ppl after", "Δ ppl (%)",
             "bits/byte after"],
            [[p["run"], p["step"], p["model"], p["domain"], p["split"], p["baseline"] or "", p["tokens"],
              p["before"], p["after"], p["delta_pct"], p["bits_per_byte"]] for p in pairs])
    baselines = [e for e in evals if e["role"] == "baseline"]
    if baselines:
        html += "<h3>Baselines</h3>" + ctx.table(
            ["run", "step", "model", "domain", "split", "tokens", "token ppl", "word ppl", "byte ppl", "bits/byte"],
            [[e["run"], e["step_name"], e["model"], e["domain"], e["split"], e["tokens"], e["token_perplexity"],
              e["word_perplexity"], e["byte_perplexity"], e["bits_per_byte"]] for e in baselines])
    return Section("Perplexity per domain", html) if html else None


def delta_heatmap_section(ctx: ReportContext) -> Section | None:
    pairs = [p for p in before_after(ctx) if p["delta_pct"] is not None]
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    per_run = defaultdict(set)
    for p in pairs:
        per_run[p["run"]].add((p["step"], p["model"]))

    def row_label(p):
        return p["run"] if len(per_run[p["run"]]) == 1 else f"{p['run']} ({p['step']}/{p['model']})"

    rows = list(dict.fromkeys(row_label(p) for p in pairs))
    cols = list(dict.fromkeys(p["domain"] for p in pairs))
    grid = np.full((len(rows), len(cols)), np.nan)
    for p in pairs:
        grid[rows.index(row_label(p)), cols.index(p["domain"])] = p["delta_pct"]
    limit = float(np.nanmax(np.abs(grid))) or 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluation domain")
    ax.set_ylabel("run")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(grid[i, j]):
                dark = abs(grid[i, j]) > 0.6 * limit
                ax.text(j, i, ctx.fmt(float(grid[i, j]), 1), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("Δ token perplexity (%)")
    html = ctx.figure(fig, "delta-heatmap", "Relative change of token perplexity after vs. before, per domain "
                                            "(blue: better, red: worse)")
    return Section("Δ perplexity heat-map", html)


register_section("runs", runs_section)
register_section("loss-curves", loss_curves_section)
register_section("perplexity", perplexity_section)
register_section("delta-heatmap", delta_heatmap_section)
