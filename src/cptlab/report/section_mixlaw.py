"""Report section `mixlaw`: the D-CPT mixture law fitted to a mixture-grid study's validation losses.

Shows, for the general and the domain loss: the measured points against the fitted law (loss vs training tokens,
one colour per domain ratio), the fitted parameters with R², Huber loss and held-out error (each interior ratio
predicted by a fit without it); then the recommendations: (a) the largest domain ratio whose predicted general
loss stays within the budget (study option `budget`, default +3% of the prediction at r = 0) at the largest
number of training tokens of the study, (b) the ratio minimising the predicted domain loss for a fixed amount
of domain data (option `domain_tokens`, default: the most domain tokens any run saw), with predicted losses.
"""

from __future__ import annotations

import json

import numpy as np

from cptlab.errors import CptlabError
from cptlab.report.sections import ReportContext, Section, register_section

TARGETS = ("general", "domain")


def _options(ctx: ReportContext) -> dict:
    row = ctx.db.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
    try:
        return dict((json.loads(row[0]) or {}).get("options") or {}) if row else {}
    except (ValueError, AttributeError):
        return {}


def _points_figure(ctx: ReportContext, pts: dict, fits: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in TARGETS if t in pts]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.8 * len(targets), 4.2), squeeze=False)
    for ax, target in zip(axes[0], targets):
        p, fit = pts[target], fits.get(target)
        keys = sorted({(float(n), float(r)) for n, r in zip(p.N, p.r)})
        cmap = plt.get_cmap("viridis")
        rs = sorted({r for _, r in keys})
        for n, r in keys:
            sel = (p.N == n) & (p.r == r)
            color = cmap(rs.index(r) / max(1, len(rs) - 1))
            label = f"r = {r:g}" + (f", N = {n:.3g}" if len({k[0] for k in keys}) > 1 else "")
            ax.scatter(p.D[sel], p.loss[sel], color=color, s=14, label=label)
            if fit is not None:
                d = np.geomspace(p.D[sel].min(), p.D[sel].max(), 60)
                ax.plot(d, fit.predict(n, d, r), color=color, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D (tokens, log scale)")
        ax.set_ylabel(f"{target} validation loss (nats/token)")
        ax.set_title(f"{target} loss: measured (dots) vs fitted law (lines)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return ctx.figure(fig, "mixlaw-points", "Measured validation losses and the fitted D-CPT law, per domain ratio")


def mixlaw_section(ctx: ReportContext) -> Section | None:
    from cptlab.diagnose.mixlaw_fit import fit_law
    from cptlab.diagnose.mixlaw_points import mixture_runs, points_from_runs
    from cptlab.diagnose.mixlaw_use import plot_recommendation, recommend

    runs = mixture_runs(ctx.db, ctx.study_dir)
    if not runs:
        return None
    opts = _options(ctx)
    pts, fits, notes = {}, {}, []
    for target in TARGETS:
        try:
            pts[target] = points_from_runs(runs, target, str(ctx.study_dir))
            n_ratios = len(np.unique(pts[target].r))
            fits[target] = fit_law(pts[target], target, heldout=n_ratios >= 4)
        except CptlabError as e:
            notes.append(f"{target} loss: no fit ({e})")
    html = [f"<p>{len(runs)} finished run(s); law: <code>L(N, D, r) = E + A/N^α + B·r^η/D^β + C/(r+ε)^γ</code> "
            f"(r: domain ratio; the general loss uses 1 − r). Points are the validation losses measured during "
            f"training.</p>"]
    html += [f"<p class=\"warning\">{ctx.escape(n)}</p>" for n in notes]
    if pts:
        html.append(_points_figure(ctx, pts, fits))
    if fits:
        rows = [[t, f.form, f.n_points, f.r2, f.huber, f.heldout_error] for t, f in fits.items()]
        html.append(ctx.table(["target", "form", "points", "R²", "Huber (log-loss)", "held-out error"], rows,
                              digits=4, caption="Fit quality (held-out error: mean |pred − obs| / obs over the "
                                                "points of each interior ratio, predicted by a fit without it)"))
        names = list(dict.fromkeys(k for f in fits.values() for k in f.params))
        html.append(ctx.table(["parameter", *fits], [[k, *(f.params.get(k) for f in fits.values())]
                                                     for k in names], digits=4, caption="Fitted parameters"))
        held = sorted({r for f in fits.values() for r in f.heldout_by_ratio}, key=float)
        if held:
            html.append(ctx.table(["held-out ratio r", *(f"{t} error" for t in fits)],
                                  [[float(r), *(f.heldout_by_ratio.get(r) for f in fits.values())] for r in held],
                                  digits=4, caption="Held-out prediction error per ratio"))
        N = max(float(run["N"]) for run in runs)
        D_max = max(float(p["tokens"]) for run in runs for p in run["points"])
        dom_tokens = opts.get("domain_tokens") or max(float(run["r"]) * float(p["tokens"]) for run in runs
                                                      for p in run["points"]) or None
        try:
            rec = recommend(fits, N=N, D=[D_max], budget=float(opts.get("budget", 0.03)),
                            domain_tokens=dom_tokens if "domain" in fits else None)
        except CptlabError as e:
            html.append(f"<p class=\"warning\">no recommendation: {ctx.escape(e)}</p>")
            return Section("Mixture law (D-CPT)", "\n".join(html))
        rows = []
        if rec.budget is not None:
            b = rec.budget
            rows.append([f"(a) largest ratio within +{100 * b.budget:g}% general loss ({b.base_from})",
                         b.ratio, b.D, b.general_loss, b.domain_loss])
        if rec.fixed_data is not None:
            f = rec.fixed_data
            rows.append([f"(b) best ratio for {f.domain_tokens:,.0f} domain tokens (D = D_d / r)", f.ratio, f.D,
                         f.general_loss, f.domain_loss])
        if rows:
            html.append(ctx.table(["recommended", "ratio r", "training tokens D", "predicted general loss",
                                   "predicted domain loss"], rows, digits=4,
                                  caption=f"Recommended domain ratio (N = {N:,.0f} parameters)"))
        html.append(ctx.figure(plot_recommendation(rec, fits), "mixlaw-recommendation",
                               "Predicted loss vs domain ratio, with the recommended ratios"))
    return Section("Mixture law (D-CPT)", "\n".join(html))


register_section("mixlaw", mixlaw_section)
