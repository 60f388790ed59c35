"""Report section `adaptation-matrix`: the matrix heat-maps (vs base, vs control), own-domain table with similarity
and split overlap, similarity-vs-ΔPPL scatter and correlations, token-attribution bars, the "which domains got worse
and why" table, and a plain-text summary computed from the data (cptlab.diagnose.adaptation_matrix).

Also writes `adaptation_matrix.json` (every number shown) beside index.html.
"""

from __future__ import annotations

from cptlab.diagnose.adaptation_matrix import CONTROL, matrix_from_db, own_cells, similarity_measures
from cptlab.diagnose.correlation import describe
from cptlab.report.sections import ReportContext, Section, register_section

CLASS_COLORS = {"newline": "#cc6677", "whitespace": "#ddcc77", "punctuation": "#aa4499", "digits": "#88ccee",
                "word-start": "#117733", "subword": "#4477aa", "special": "#999999"}


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _heatmaps(ctx: ReportContext, plt, data: dict, key: str, name: str, caption: str, colorbar: str) -> str:
    import numpy as np

    groups = data["groups"]
    fig, axes = plt.subplots(1, len(groups), squeeze=False,
                             figsize=(min(1.0 + (1.0 + 0.75 * len(data["domains"])) * len(groups), 18),
                                      1.6 + 0.42 * max(len(g["targets"]) for g in groups)))
    for ax, g in zip(axes[0], groups):
        targets = [t for t in g["targets"] if key != "vs_control" or t != CONTROL]
        grid = np.array([[_pct(g["cells"][t][d][key]) if g["cells"][t][d][key] is not None else np.nan
                          for d in g["domains"]] for t in targets], dtype=float)
        limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        limit = limit or 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(g["domains"])), g["domains"], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(targets)), targets, fontsize=8)
        for i in range(len(targets)):
            for j in range(len(g["domains"])):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.0f}" if abs(grid[i, j]) >= 10 else f"{grid[i, j]:+.1f}",
                            ha="center", va="center", fontsize=7,
                            color="white" if abs(grid[i, j]) > 0.6 * limit else "black")
        ax.set_xlabel("test domain")
        ax.set_ylabel("adapted to (train domain)")
        ax.set_title(g["label"], fontsize=9)
        fig.colorbar(im, ax=ax).set_label(colorbar)
    return ctx.figure(fig, name, caption)


def _scatter(ctx: ReportContext, plt, data: dict, measure: str) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sim = data["similarity"]["domains"]
    general = set(data["general"])
    for k, g in enumerate(data["groups"]):
        color = plt.get_cmap("tab10")(k)
        for d, c in own_cells(g):
            x = (sim.get(d) or {}).get(measure)
            if x is None or c["rel_change"] is None:
                continue
            ax.scatter([x], [100 * c["rel_change"]], color=color, marker="o" if d in general else "^",
                       label=g["label"] if d == own_cells(g)[0][0] else None)
            ax.annotate(d, (x, 100 * c["rel_change"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.7)
    ax.set_xlabel(f"similarity to the pretraining mix ({measure}, higher = more similar)")
    ax.set_ylabel("own-domain test PPL change (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="● in the mix  ▲ held out", title_fontsize=7)
    return ctx.figure(fig, "similarity-vs-dppl", "Similarity to the pretraining mix vs the change of each domain's "
                                                 "own test perplexity after adapting to it")


def _attribution_bars(ctx: ReportContext, plt, data: dict) -> str:
    from cptlab.evaluate.compare import CLASSES

    rows = []
    for run, res in data["attribution"].items():
        m = res.get("meta") or {}
        targets = res.get("targets") or []
        if m.get("control") or len(targets) != 1 or targets[0] not in (res.get("domains") or {}):
            continue
        cell = res["domains"][targets[0]]
        rows.append((run, cell))
    if not rows:
        return ""
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(rows)))
    labels = [r for r, _ in rows]
    for cls in CLASSES:
        vals = [c["classes"].get(cls, {}).get("contribution", 0.0) for _, c in rows]
        pos_left = [0.0] * len(rows)
        neg_left = [0.0] * len(rows)
        for i, (_, c) in enumerate(rows):
            for prev in CLASSES[:CLASSES.index(cls)]:
                v = c["classes"].get(prev, {}).get("contribution", 0.0)
                if v >= 0:
                    pos_left[i] += v
                else:
                    neg_left[i] += v
        left = [p if v >= 0 else n for v, p, n in zip(vals, pos_left, neg_left)]
        ax.barh(labels, vals, left=left, color=CLASS_COLORS.get(cls), label=cls)
    totals = [c["delta_log_ppl"] or 0.0 for _, c in rows]
    ax.scatter(totals, labels, color="k", marker="|", s=120, zorder=3, label="total")
    ax.axvline(0, color="k", lw=0.7)
    ax.invert_yaxis()
    ax.set_xlabel("contribution to Δ log PPL of the run's own domain (nats / token)")
    ax.set_ylabel("adapted model (run)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ctx.figure(fig, "attribution", "Which token classes carry each adapted model's change on its own domain "
                                          "(stacked contributions; the mark is the total)")


def summary_lines(data: dict) -> list[str]:
    """Plain sentences computed from the data (no claim that the numbers do not support)."""
    lines = []
    general = set(data["general"])
    for g in data["groups"]:
        own = [(d, c) for d, c in own_cells(g) if c["rel_change"] is not None]
        if own:
            better = [d for d, c in own if c["rel_change"] < 0]
            worse = [f"{d} ({100 * c['rel_change']:+.1f}%)" for d, c in own if c["rel_change"] > 0]
            best = min(own, key=lambda dc: dc[1]["rel_change"])
            text = (f"{g['label']}: adapting lowered the own-domain test perplexity for {len(better)} of {len(own)} "
                    f"domains (largest gain: {best[0]}, {100 * best[1]['rel_change']:+.1f}%)")
            text += f"; it rose for {', '.join(worse)}." if worse else "; none got worse on its own domain."
            lines.append(text)
            in_mix = [c["rel_change"] for d, c in own if d in general]
            out_mix = [c["rel_change"] for d, c in own if d not in general]
            if in_mix and out_mix:
                lines.append(f"{g['label']}: mean own-domain change {100 * sum(in_mix) / len(in_mix):+.1f}% for the "
                             f"{len(in_mix)} domain(s) inside the pretraining mix vs "
                             f"{100 * sum(out_mix) / len(out_mix):+.1f}% for the {len(out_mix)} outside it.")
        if CONTROL in g["cells"]:
            ctrl = [c["rel_change"] for d, c in g["cells"][CONTROL].items() if d in general and c["rel_change"]
                    is not None]
            if ctrl:
                lines.append(f"{g['label']}: the control (same recipe on the pretraining mix) changed the general "
                             f"domains' perplexity by {100 * min(ctrl):+.1f}% to {100 * max(ctrl):+.1f}%: that much "
                             "of any change there comes from the recipe itself (e.g. re-warming the learning rate), "
                             "not from the domain.")
            vs = [(d, c["vs_control"]) for d, c in own if c["vs_control"] is not None and d in general]
            if vs:
                worse_c = [d for d, v in vs if v > 0]
                lines.append(f"{g['label']}: relative to the control, {len(vs) - len(worse_c)} of {len(vs)} in-mix "
                             f"domain(s) ended with a lower own-domain perplexity"
                             + (f"; worse than the control: {', '.join(worse_c)}." if worse_c else "."))
    for c in data["correlations"]:
        if c["key"] == "rel_change" and c["measure"] == (similarity_measures(data["similarity"]) or [None])[0]:
            lines.append(f"{c['group']}: " + describe(c, c["measure"], "own-domain ΔPPL (%)"))
    worse = data["worse"]
    with_share = [w for w in worse if w["format_share"] is not None]
    if worse:
        lines.append(f"{len(worse)} (model, test domain) cell(s) got worse, the largest {worse[0]['target']} → "
                     f"{worse[0]['domain']} ({100 * worse[0]['rel_change']:+.1f}%, {worse[0]['group']}).")
    if with_share:
        shares = sorted(w["format_share"] for w in with_share)
        median = shares[len(shares) // 2] if len(shares) % 2 else (shares[len(shares) // 2 - 1]
                                                                   + shares[len(shares) // 2]) / 2
        still = [w for w in with_share if (w["rel_change_without_format"] or 0) > 0]
        lines.append(f"Newline, whitespace and punctuation tokens carried a median {100 * median:.0f}% of those "
                     f"rises (range {100 * shares[0]:.0f}% to {100 * shares[-1]:.0f}%); without them, "
                     f"{len(still)} of {len(with_share)} cell(s) are still worse."
                     + (" (A share above 100% means the other tokens improved.)" if shares[-1] > 1 else ""))
    elif data["attribution"] and not worse:
        lines.append("No (model, test domain) cell got worse, so there is no rise to attribute.")
    ov = (data.get("overlap") or {}).get("domains") or {}
    dup = [(d, r.get("near_duplicate_fraction")) for d, r in ov.items() if isinstance(r, dict)
           and (r.get("near_duplicate_fraction") or 0) > 0.05]
    if dup:
        lines.append("Test documents with a near-duplicate in the train split (gains there are partly memorisation): "
                     + ", ".join(f"{d} {100 * f:.0f}%" for d, f in sorted(dup, key=lambda x: -x[1])) + ".")
    elif ov:
        lines.append("No domain has more than 5% of its test documents near-duplicated in its train split.")
    return lines


def adaptation_matrix_section(ctx: ReportContext) -> Section | None:
    data = matrix_from_db(ctx.db)
    if data is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cptlab.fsutil import atomic_write_json

    atomic_write_json(ctx.out_dir / "adaptation_matrix.json", data)
    html = ["<p>Each train domain was adapted to separately, from the base, with the same recipe; every test domain "
            "was then evaluated. The <b>control</b> continued the base on its own pretraining mix with the same "
            "recipe: a change it shows too comes from the recipe (e.g. re-warming the learning rate), not from the "
            "domain (Adaptation Odyssey, arXiv 2410.05581). Negative = lower perplexity = better.</p>"]
    lines = summary_lines(data)
    if lines:
        html.append('<div class="summary"><h3>Summary (computed from the numbers below)</h3><ul>'
                    + "".join(f"<li>{ctx.escape(s)}</li>" for s in lines) + "</ul></div>")
    html.append(_heatmaps(ctx, plt, data, "rel_change", "adaptation-matrix",
                          "Relative change of test perplexity after adapting (rows) vs the base, per test domain "
                          "(columns); blue: better, red: worse", "PPL change vs base (%)"))
    if any(CONTROL in g["cells"] and len(g["targets"]) > 1 for g in data["groups"]):
        html.append(_heatmaps(ctx, plt, data, "vs_control", "adaptation-matrix-vs-control",
                              "The same relative to the control run (same recipe on the pretraining mix)",
                              "PPL change vs control (%)"))
    sim = data["similarity"]
    measures = similarity_measures(sim)
    ov = (data.get("overlap") or {}).get("domains") or {}
    cols = ["group", "domain", "in pretraining mix", "PPL before", "PPL after", "ΔPPL", "change (%)",
            "vs control (%)", *measures, "test docs near-duplicated in train (%)", "exact duplicates"]
    rows = []
    for g in data["groups"]:
        for d, c in own_cells(g):
            s = (sim or {}).get("domains", {}).get(d) or {}
            o = ov.get(d) or {}
            rows.append([g["label"], d, d in data["general"], c["ppl_before"], c["ppl_after"], c["delta_ppl"],
                         _pct(c["rel_change"]), _pct(c["vs_control"]), *(s.get(m) for m in measures),
                         _pct(o.get("near_duplicate_fraction")), o.get("exact_duplicates")])
    html.append("<h3>Each domain after adapting to it</h3>" + ctx.table(cols, rows))
    if sim is None:
        html.append("<p>Similarity to the pretraining mix was not measured in this study.</p>")
    if not ov:
        html.append("<p>Train/test overlap (exact and near duplicates) was not measured in this study.</p>")
    if measures:
        html.append("<h3>Similarity vs ΔPPL</h3>" + _scatter(ctx, plt, data, measures[0]))
        crow = []
        for c in data["correlations"]:
            if c["n"] < 3:
                continue
            p, s = c["pearson"], c["spearman"]
            part = (c.get("partial") or {})
            crow.append([c["group"], c["measure"], c["y"], c["n"], s["rho"], s["ci"]["low"], s["ci"]["high"], s["p"],
                         p["r"], p["ci"]["low"], p["ci"]["high"], p["p"], part.get("spearman", {}).get("rho"),
                         part.get("pearson", {}).get("r")])
        too_few = sorted({c["n"] for c in data["correlations"] if c["n"] < 3})
        if too_few:
            html.append(f"<p>Correlations need at least 3 train domains with a similarity; some groups have "
                        f"{', '.join(map(str, too_few))}: left out.</p>")
        if crow:
            html.append(ctx.table(["group", "similarity", "change", "n", "Spearman ρ", "CI low", "CI high", "p",
                               "Pearson r", "CI low", "CI high", "p", "partial ρ | PPL before",
                                   "partial r | PPL before"], crow,
                                  caption=f"Across train domains; {data['bootstrap']['n_boot']} bootstrap resamples "
                                          f"(seed {data['bootstrap']['seed']}), 95% percentile intervals; partial "
                                          "correlations control for the starting perplexity"))
    if data["attribution"]:
        html.append("<h3>Token attribution</h3>" + _attribution_bars(ctx, plt, data))
        trow = []
        for run, res in data["attribution"].items():
            wo = res.get("without_top") or {}
            for t in (res.get("top_tokens") or [])[:5]:
                trow.append([run, repr(t["text"]), t["class"], t["count"], t["contribution"], wo.get("rel_change")
                             and 100 * wo["rel_change"]])
        if trow:
            html.append(ctx.table(["run", "token", "class", "count", "contribution (nats/token)",
                                   "change without the raising top tokens (%)"], trow,
                                  caption="Top tokens by contribution to Δ log PPL on the run's own domain(s)"))
    worse = data["worse"]
    html.append("<h3>Which domains got worse, how much of that is newline/whitespace/punctuation, what is "
                "left</h3>")
    if worse:
        html.append(ctx.table(["group", "adapted to", "test domain", "own domain", "change (%)",
                               "vs control (%)", "format share of the rise (%)",
                               "change without format tokens (%)"],
                              [[w["group"], w["target"], w["domain"], w["own"], _pct(w["rel_change"]),
                                _pct(w["vs_control"]), _pct(w["format_share"]),
                                _pct(w["rel_change_without_format"])] for w in worse],
                              caption="Every (adapted model, test domain) cell whose perplexity rose, largest first; "
                                      "format = newline, whitespace and punctuation tokens (their contribution to "
                                      "Δ log PPL over the total, pooled over seeds by tokens; – without per-token "
                                      "attribution)"))
    else:
        html.append("<p>No (model, test domain) cell got worse.</p>")
    return Section("Adaptation matrix (Adaptation Odyssey)", "\n".join(html))


register_section("adaptation-matrix", adaptation_matrix_section)
