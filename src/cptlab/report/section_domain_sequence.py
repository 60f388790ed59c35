"""Report section `domain-sequence`: per sequence run, the perplexity matrix (rows: base and each stage, columns:
evaluated domains) as a heat-map of the change vs the base, the forgetting summaries (average forgetting, backward
and forward transfer) and a plain-text summary computed from the "forgetting" diagnostics."""

from __future__ import annotations

import json

from cptlab.report.sections import ReportContext, Section, register_section


def sequence_results(ctx: ReportContext) -> list[dict]:
    rows = ctx.db.execute(
        "SELECT d.run, d.result, r.config FROM diagnostics d JOIN runs r ON r.name = d.run "
        "WHERE d.kind = 'forgetting' AND r.status = 'done' ORDER BY r.position, d.run").fetchall()
    out = []
    for r in rows:
        res = json.loads(r["result"])
        meta = (json.loads(r["config"] or "{}").get("meta") or {}).get("sequence") or {}
        out.append({"run": r["run"], "meta": meta, **res})
    return out


def _pct(x):
    return None if x is None else x


def summary_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        af, bwt, fwt = r["average_forgetting_pct"], r["backward_transfer"], r["forward_transfer"]
        seq = " → ".join(r["stages"])
        text = f"{r['run']} ({seq}): "
        if af is not None:
            worst = max(r["forgetting_pct"].items(), key=lambda kv: kv[1]) if r["forgetting_pct"] else None
            text += f"average forgetting {af:+.1f}% of perplexity"
            if worst is not None:
                text += f" (most: {worst[0]}, {worst[1]:+.1f}%)"
        if bwt is not None:
            text += (f"; backward transfer {bwt:+.3f} nats/token ("
                     + ("later stages raised the loss on earlier domains" if bwt < 0 else
                        "later stages did not raise the loss on earlier domains") + ")")
        if fwt is not None:
            text += (f"; forward transfer {fwt:+.3f} nats/token ("
                     + ("earlier stages helped the next domain before it was trained on" if fwt > 0 else
                        "earlier stages did not help the next domain") + ")")
        general = [d for d in (r["meta"].get("general") or []) if d in r["perplexity"][0]]
        if general:
            b = sum(r["loss"][0][d] for d in general) / len(general)
            e = sum(r["loss"][-1][d] for d in general) / len(general)
            import math

            text += f"; general domains {100 * (math.exp(e - b) - 1):+.1f}% perplexity after the last stage"
        lines.append(text + ".")
    if len(results) > 1:
        best = min(results, key=lambda r: r["final_loss"])
        lines.append(f"Lowest mean final loss over the sequence's domains: {best['run']} "
                     f"({best['final_loss']:.3f} nats/token).")
    return lines


def domain_sequence_section(ctx: ReportContext) -> Section | None:
    results = sequence_results(ctx)
    if not results:
        return None
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    html = ["<p>The base was adapted to one domain after another (each stage starts from the previous stage's model, "
            "with the same recipe); every domain was evaluated after each stage. Forgetting of a domain = how far "
            "its loss rose above the best it had since it was trained on; backward transfer = mean change of the "
            "loss on earlier domains from when each was trained to the end (negative = forgetting); forward "
            "transfer = mean loss reduction on a domain before it was trained on, vs the base.</p>"]
    lines = summary_lines(results)
    html.append('<div class="summary"><h3>Summary (computed from the numbers below)</h3><ul>'
                + "".join(f"<li>{ctx.escape(s)}</li>" for s in lines) + "</ul></div>")
    fig, axes = plt.subplots(1, len(results), squeeze=False,
                             figsize=(min(18, (1.5 + 0.8 * len(results[0]["domains"])) * len(results)),
                                      1.5 + 0.45 * (len(results[0]["stages"]) + 1)))
    for ax, r in zip(axes[0], results):
        doms = r["domains"]
        rows = ["base"] + [f"{k}: {s}" for k, s in enumerate(r["stages"], start=1)]
        grid = np.array([[100 * (math.exp(r["loss"][k][d] - r["loss"][0][d]) - 1)
                          if r["loss"][k].get(d) is not None and r["loss"][0].get(d) is not None else np.nan
                          for d in doms] for k in range(len(rows))])
        limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-(limit or 1), vmax=limit or 1, aspect="auto")
        ax.set_xticks(range(len(doms)), doms, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        for i in range(len(rows)):
            for j in range(len(doms)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("evaluated domain")
        ax.set_ylabel("after stage (adapted to)")
        ax.set_title(r["run"], fontsize=8)
        fig.colorbar(im, ax=ax).set_label("PPL change vs base (%)")
    html.append(ctx.figure(fig, "domain-sequence", "Test perplexity after each stage, relative to the base "
                                                   "(blue: better, red: worse)"))
    html.append(ctx.table(
        ["run", "sequence", "average forgetting (nats/token)", "average forgetting (% PPL)",
         "backward transfer (nats/token)", "forward transfer (nats/token)", "final loss (nats/token)",
         "base loss (nats/token)"],
        [[r["run"], " → ".join(r["stages"]), r["average_forgetting"], r["average_forgetting_pct"],
          r["backward_transfer"], r["forward_transfer"], r["final_loss"], r["base_loss"]] for r in results]))
    for r in results:
        rows = ["base"] + [f"{k}: {s}" for k, s in enumerate(r["stages"], start=1)]
        html.append(ctx.table(["after stage", *r["domains"]],
                              [[rows[k], *(r["perplexity"][k].get(d) for d in r["domains"])]
                               for k in range(len(rows))],
                              caption=f"{r['run']}: token perplexity after each stage"))
        html.append(ctx.table(["after stage", *r["stages"][:-1]],
                              [[rows[k], *(r["forgetting_matrix"][k].get(s) for s in r["stages"][:-1])]
                               for k in range(2, len(rows))],
                              caption=f"{r['run']}: forgetting matrix (nats/token above the best loss since the "
                                      "domain was trained on)"))
    return Section("Sequential adaptation: forgetting and transfer", "\n".join(html))


register_section("domain-sequence", domain_sequence_section)
