"""Report section `sensitivity`: Δ log-perplexity after θ + γ·ε per checkpoint (the `sensitivity` diagnostic).

Two plots: sensitivity vs γ (one line per checkpoint) and sensitivity vs pretraining tokens (one line per γ), both
with the standard error over seeds as error bars; a table with tokens per parameter; and a computed sentence on
whether sensitivity rises with pretraining tokens.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cptlab.diagnose.checkpoint_series import difference, token_ticks, welch_test
from cptlab.diagnose.correlation import spearman
from cptlab.report.sections import ReportContext, Section, register_section


def sensitivity_results(ctx: ReportContext) -> list[tuple[str, dict[str, Any]]]:
    rows = ctx.db.execute(
        "SELECT d.run, d.step_name, d.result FROM diagnostics d JOIN runs r ON r.name = d.run "
        "WHERE d.kind = 'sensitivity' AND r.status = 'done' ORDER BY r.position, d.step_name").fetchall()
    return [(f"{r['run']}/{r['step_name']}", json.loads(r["result"])) for r in rows]


def reference_gamma(result: dict[str, Any]) -> float | None:
    """The γ the verdict reads: the largest whose mean Δ log-PPL for the first checkpoint stays below 1 nat
    (larger γ saturate: every checkpoint is destroyed), else the smallest non-zero γ."""
    gammas = [g for g in result["settings"]["gammas"] if g > 0]
    if not gammas or not result["models"]:
        return None
    first = {row["gamma"]: row["delta_loss"]["mean"] for row in result["models"][0]["gammas"]}
    ok = [g for g in gammas if first.get(g) is not None and first[g] < 1.0]
    return max(ok) if ok else min(gammas)


def verdict_text(result: dict[str, Any], gamma: float, alpha: float = 0.05) -> str:
    models = result["models"]
    pts = []
    for i, m in enumerate(models):
        row = next((r for r in m["gammas"] if math.isclose(r["gamma"], gamma)), None)
        if row is not None and row["delta_loss"]["mean"] is not None:
            tpp = m.get("tokens_per_parameter")
            name = m["label"] + (f", {tpp:.3g} tokens/parameter" if tpp is not None else "")
            pts.append((m.get("tokens") if m.get("tokens") is not None else i, row["delta_loss"], name))
    if len(pts) < 2:
        return f"At γ = {gamma:g}: {len(pts)} checkpoint(s) measured; nothing to compare."
    first, last = pts[0], pts[-1]
    rho = spearman([p[0] for p in pts], [p[1]["mean"] for p in pts]) if len(pts) >= 3 else None
    diff, _ = difference(first[1], last[1])
    w = welch_test(first[1], last[1])
    sig = w is not None and w["p_two_sided"] <= alpha
    text = (f"At γ = {gamma:g}, the loss increase goes from {first[1]['mean']:.4g} nats ({first[2]}) to "
            f"{last[1]['mean']:.4g} nats ({last[2]}), a change of {diff:+.4g}")
    text += (f" (Welch t-test over seeds, first vs last checkpoint: t = {w['t']:.2f} on {w['df']:.1f} df, two-sided "
             f"p = {w['p_two_sided']:.3g}, alpha = {alpha:g})" if w
             else " (fewer than two seeds or no spread: no test)")
    if rho is not None:
        text += f"; Spearman ρ between pretraining tokens and sensitivity = {rho:+.2f} over {len(pts)} checkpoints"
    if sig and diff > 0 and (rho is None or rho > 0.5):
        text += ". Sensitivity rises with pretraining: later checkpoints are more fragile, as the paper predicts."
    elif sig and diff < 0:
        text += ". Sensitivity falls with pretraining here: no sign of progressive sensitivity."
    else:
        text += ". No clear trend beyond the spread over seeds."
    return text


def _xs(models: list[dict[str, Any]]) -> tuple[list[float], str, bool]:
    if models and all(m.get("tokens") for m in models):
        return [float(m["tokens"]) for m in models], "pretraining tokens seen (log scale)", True
    return [float(i) for i in range(len(models))], "checkpoint (index, token counts unknown)", False


def sensitivity_section(ctx: ReportContext) -> Section | None:
    results = sensitivity_results(ctx)
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    html = []
    for name, res in results:
        s, models = res["settings"], res["models"]
        if not models:
            continue
        scale = ctx.escape(s["noise_scale"])
        html.append(f"<p>{ctx.escape(name)}: θ + γ·ε with ε drawn per tensor at the <b>{scale}"
                    f"</b> scale over {ctx.escape(s['params'])} tensors, {s['seeds']} seed(s) per γ; loss measured on "
                    f"the {ctx.escape(s['split'])} split ({ctx.escape(s.get('evaluator', ''))}). Weights restored by "
                    f"{ctx.escape(models[0]['revert']['method'])}; bit-identical after every checkpoint: "
                    f"{ctx.fmt(all(m['revert']['bit_identical'] for m in models))}. Error bars: standard error over "
                    "seeds.</p>")
        cmap = plt.get_cmap("viridis")
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for i, m in enumerate(models):
            rows = [r for r in m["gammas"] if r["gamma"] > 0 and r["delta_loss"]["mean"] is not None]
            ax.errorbar([r["gamma"] for r in rows], [r["delta_loss"]["mean"] for r in rows],
                        yerr=[r["delta_loss"]["sem"] or 0 for r in rows], marker="o", capsize=3,
                        color=cmap(i / max(1, len(models) - 1)), label=_label(m))
        ax.set_xscale("log")
        ax.minorticks_off()
        shown = sorted({r["gamma"] for m in models for r in m["gammas"] if r["gamma"] > 0})
        ax.set_xticks(shown)
        ax.set_xticklabels([f"{g:g}" for g in shown], fontsize=8)
        ax.set_xlabel("noise size γ (multiple of the per-tensor scale, log scale)")
        ax.set_ylabel("Δ log-perplexity (nats per token)")
        ax.legend(fontsize=7)
        html.append(ctx.figure(fig, "sensitivity-vs-gamma", "Loss increase after θ + γ·ε, per checkpoint"))

        xs, xlabel, logx = _xs(models)
        fig, ax = plt.subplots(figsize=(6.4, 4))
        gammas = [g for g in s["gammas"] if g > 0]
        for j, g in enumerate(gammas):
            pts = []
            for x, m in zip(xs, models):
                row = next((r for r in m["gammas"] if math.isclose(r["gamma"], g)), None)
                if row is not None and row["delta_loss"]["mean"] is not None:
                    pts.append((x, row["delta_loss"]["mean"], row["delta_loss"]["sem"] or 0))
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, color=plt.get_cmap("plasma")(j / max(1, len(gammas) - 1)), label=f"γ={g:g}")
        if logx:
            token_ticks(ax, xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Δ log-perplexity (nats per token)")
        ax.legend(fontsize=7)
        html.append(ctx.figure(fig, "sensitivity-vs-tokens", "Sensitivity vs pretraining tokens, at each γ"))

        g_ref = reference_gamma(res)
        if g_ref is not None:
            html.append(f"<p class=\"verdict\"><b>{ctx.escape(verdict_text(res, g_ref))}</b></p>")
        cols = ["checkpoint", "tokens seen", "parameters", "tokens / parameter", "PPL (unperturbed)"]
        cols += [f"Δ log-PPL γ={g:g}" for g in s["gammas"]] + [f"± SE γ={g:g}" for g in s["gammas"]]
        table = []
        for m in models:
            by_g = {r["gamma"]: r["delta_loss"] for r in m["gammas"]}
            table.append([m["label"], m.get("tokens"), m.get("parameters"), m.get("tokens_per_parameter"),
                          m["base"]["ppl"], *[by_g.get(g, {}).get("mean") for g in s["gammas"]],
                          *[by_g.get(g, {}).get("sem") for g in s["gammas"]]])
        html.append(ctx.table(cols, table, digits=4))
    return Section("Sensitivity to parameter noise (θ + γ·ε)", "\n".join(html)) if html else None


def _label(m: dict[str, Any]) -> str:
    t = m.get("tokens")
    tpp = m.get("tokens_per_parameter")
    if t is None:
        return m["label"]
    return f"{m['label']} ({t:,} tok" + (f", {tpp:.3g}/param)" if tpp is not None else ")")


register_section("sensitivity", sensitivity_section)
