"""Report section `remedies`: forgetting vs domain gain, for plain CPT, regularized variants and merges.

Every evaluated model of a run whose `meta` names `target` and `general` domains (the `merge-curve` study kind
writes them) becomes one point: x = change of general perplexity vs the run's baseline ("base") in percent
(> 0: forgetting), y = reduction of target perplexity in percent (> 0: domain gain). Perplexities here are
exp(Σ NLL / Σ tokens) over each group of domains. Merge points (model label "alpha=<α>") of one run form a curve
from the base (α = 0) to the adapted model (α = 1), summarised by `cptlab.diagnose.merge_curve.curve_summary`:
the Pareto-front α and the α within the run's general-loss `budget` (nats/token). Probe accuracies (`probe`
diagnostics), when recorded, are listed below.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from cptlab.report.sections import ReportContext, Section, register_section


def _meta(config_json: str) -> dict:
    try:
        return dict(json.loads(config_json or "{}").get("meta") or {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def _regularizer(config_json: str) -> str | None:
    """'KL, λ=0.1' / 'LSSD, λ=0.5' when the run's train step has a regularizer, else None."""
    try:
        steps = json.loads(config_json or "{}").get("steps") or []
    except (json.JSONDecodeError, AttributeError):
        return None
    for step in steps:
        reg = (step.get("config") or {}).get("regularizer") if step.get("kind") == "train" else None
        if isinstance(reg, dict) and reg.get("kind"):
            weight = reg.get("weight", 0.1)
            extra = "" if reg.get("reference", "base") == "base" else f", reference {reg['reference']}"
            return f"{str(reg['kind']).upper()}, λ={weight:g}{extra}" if isinstance(weight, (int, float)) \
                else f"{str(reg['kind']).upper()}{extra}"
    return None


def _loss(domains: dict, names: list[str]) -> float | None:
    """Σ NLL / Σ tokens over `names` (None unless every one of them was evaluated)."""
    if not names or any(n not in domains for n in names):
        return None
    nll = sum(domains[n][0] for n in names)
    tokens = sum(domains[n][1] for n in names)
    return nll / tokens if tokens else None


def remedy_points(ctx: ReportContext) -> list[dict]:
    """One dict per evaluated model (run, step, label): losses, perplexity changes vs base, α for merges."""
    runs = {r["name"]: r for r in ctx.db.execute(
        "SELECT name, role, baseline, config, position FROM runs WHERE status = 'done'").fetchall()}
    groups: dict[tuple, dict] = defaultdict(dict)
    for e in ctx.db.execute("SELECT run, step_name, model, domain, split, nll_sum, tokens FROM evaluations "
                            "ORDER BY run, step_name, model, domain").fetchall():
        if e["run"] in runs and e["nll_sum"] is not None and e["tokens"]:
            groups[(e["run"], e["step_name"], e["model"], e["split"])][e["domain"]] = (e["nll_sum"], e["tokens"])
    # The base of each run: its baseline run's evaluation (the last one with label "base", else any).
    base_of: dict[tuple[str, str], dict] = {}
    for (run, _step, label, split), doms in groups.items():
        if runs[run]["role"] == "baseline" and (label == "base" or (run, split) not in base_of):
            base_of[(run, split)] = doms
    points = []
    for (run, step, label, split), doms in groups.items():
        meta = _meta(runs[run]["config"])
        target, general = list(meta.get("target") or []), list(meta.get("general") or [])
        if not target or not general:
            continue
        is_base = runs[run]["role"] == "baseline"
        base = doms if is_base else base_of.get((runs[run]["baseline"], split))
        tl, gl = _loss(doms, target), _loss(doms, general)
        btl, bgl = (_loss(base, target), _loss(base, general)) if base else (None, None)
        if tl is None or gl is None or btl is None or bgl is None:
            continue
        alpha = 0.0 if is_base else None
        if label.startswith("alpha="):
            try:
                alpha = float(label.split("=", 1)[1])
            except ValueError:
                alpha = None
        points.append({
            "run": run, "step": step, "label": label, "split": split, "baseline": run if is_base else
            runs[run]["baseline"], "is_base": is_base, "alpha": alpha, "remedy": meta.get("remedy"),
            "budget": meta.get("budget"), "position": runs[run]["position"],
            "regularizer": _regularizer(runs[run]["config"]),
            "target_loss": tl, "general_loss": gl, "base_target_loss": btl, "base_general_loss": bgl,
            "target_ppl": math.exp(tl), "general_ppl": math.exp(gl),
            "general_ppl_change_pct": (math.exp(gl - bgl) - 1) * 100,
            "target_ppl_reduction_pct": (1 - math.exp(tl - btl)) * 100,
        })
    points.sort(key=lambda p: (p["position"], p["alpha"] if p["alpha"] is not None else 2.0, p["label"]))
    return points


def curves(points: list[dict]) -> dict[str, dict]:
    """Per run with merge points: the curve summary (base as α = 0 included)."""
    from cptlab.diagnose.merge_curve import curve_summary

    out = {}
    by_run: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        if not p["is_base"] and p["alpha"] is not None:
            by_run[p["run"]].append(p)
    for run, pts in by_run.items():
        base = next((b for b in points if b["is_base"] and b["run"] == pts[0]["baseline"]
                     and b["split"] == pts[0]["split"]), None)
        if base is not None and all(p["alpha"] != 0.0 for p in pts):
            pts = [base, *pts]
        budget = pts[-1]["budget"] if pts[-1]["budget"] is not None else 0.02
        out[run] = curve_summary([p["alpha"] for p in pts], [p["target_loss"] for p in pts],
                                 [p["general_loss"] for p in pts], float(budget),
                                 base_general=pts[-1]["base_general_loss"], base_target=pts[-1]["base_target_loss"])
    return out


def _display(p: dict) -> str:
    if p["is_base"]:
        return "base"
    if p["alpha"] == 1.0:
        return "plain CPT (adapted, α=1)"
    if p["alpha"] is not None:
        return f"merge α={p['alpha']:g}"
    name = p["label"] if p["label"] not in ("model", "after") else p["run"]
    return f"{name} ({p['regularizer']})" if p.get("regularizer") else name


def remedies_section(ctx: ReportContext) -> Section | None:
    points = remedy_points(ctx)
    if not any(not p["is_base"] for p in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = curves(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.axvline(0, color="0.7", linewidth=0.8)
    ax.scatter([0], [0], marker="s", color="black", zorder=3, label="base")
    for run, summary in summaries.items():
        pts = [p for p in points if p["run"] == run and p["alpha"] is not None]
        base = next((b for b in points if b["is_base"] and pts and b["run"] == pts[0]["baseline"]), None)
        line = ([base] if base is not None else []) + pts
        line.sort(key=lambda p: p["alpha"])
        xs = [p["general_ppl_change_pct"] for p in line]
        ys = [p["target_ppl_reduction_pct"] for p in line]
        ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, zorder=2,
                label=f"merge base→adapted ({run})" if len(summaries) > 1 else "merge base→adapted (α)")
        for p, x, y in zip(line, xs, ys):
            ax.annotate(f"α={p['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        end = next((p for p in line if p["alpha"] == 1.0), None)
        if end is not None:
            ax.scatter([end["general_ppl_change_pct"]], [end["target_ppl_reduction_pct"]], marker="o", s=70,
                       color="tab:red", zorder=4, label="plain CPT (adapted, α=1)" if len(summaries) == 1
                       else f"plain CPT ({run}, α=1)")
        if summary["budget_alpha"] is not None:
            b = next(p for p in line if p["alpha"] == summary["budget_alpha"])
            ax.scatter([b["general_ppl_change_pct"]], [b["target_ppl_reduction_pct"]], s=140, facecolors="none",
                       edgecolors="tab:green", linewidths=1.5, zorder=4,
                       label=f"within budget (+{summary['budget']:g} nats/token): α={summary['budget_alpha']:g}")
    markers = iter(["^", "D", "v", "P", "X", "*", "<", ">", "h"])
    for p in points:
        if p["is_base"] or p["alpha"] is not None:
            continue
        ax.scatter([p["general_ppl_change_pct"]], [p["target_ppl_reduction_pct"]], marker=next(markers, "o"),
                   s=60, zorder=3, label=_display(p))
    ax.set_xlabel("general perplexity change vs base (%)  → more forgetting")
    ax.set_ylabel("target perplexity reduction vs base (%)  → more gain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    html = ("<p>Each point is one model: x is how much its perplexity on general data rose over the base model "
            "(forgetting), y how much its perplexity on the target domain fell (gain). Up and to the left is "
            "better. Merges interpolate the base and the adapted model's weights at α.</p>")
    html += ctx.figure(fig, "remedies", "Forgetting vs domain gain: plain CPT, regularized variants and merges")
    rows = []
    for p in points:
        pareto = within = None
        if p["run"] in summaries and p["alpha"] is not None or (p["is_base"] and summaries):
            s = summaries.get(p["run"]) or next(iter(summaries.values()))
            hit = [q for q in s["points"] if q["alpha"] == p["alpha"]]
            if hit:
                pareto, within = hit[0]["pareto"], hit[0]["within_budget"]
        rows.append([_display(p), p["run"], p["target_ppl"], p["general_ppl"], p["target_ppl_reduction_pct"],
                     p["general_ppl_change_pct"], pareto, within])
    html += ctx.table(["model", "run", "target ppl", "general ppl", "target ppl reduction (%)",
                       "general ppl change (%)", "Pareto front", "within budget"], rows)
    for run, s in summaries.items():
        front = ", ".join(f"{a:g}" for a in s["pareto_alphas"])
        best = f"{s['best_target_alpha']:g}"
        if s["budget_alpha"] is None:
            budget = f"no α keeps general loss within +{s['budget']:g} nats/token of the base"
        else:
            bp = next(q for q in s["points"] if q["alpha"] == s["budget_alpha"])
            budget = (f"α = {s['budget_alpha']:g} keeps general loss within +{s['budget']:g} nats/token of the base "
                      f"(general ppl {ctx.fmt(bp['general_ppl_change_pct'], 1)} %, target ppl "
                      f"{ctx.fmt(bp['target_ppl_change_pct'], 1)} %)")
        html += (f"<p><b>{ctx.escape(run)}</b>: α on the Pareto front (general vs target loss): "
                 f"{ctx.escape(front)}; {ctx.escape(budget)}; best target loss at α = "
                 f"{ctx.escape(best)}.</p>")
    probes = ctx.db.execute("SELECT d.run, d.step_name, d.result FROM diagnostics d JOIN runs r ON r.name = d.run "
                            "WHERE d.kind = 'probe' AND r.status = 'done' ORDER BY r.position, d.step_name"
                            ).fetchall()
    if probes:
        prow = []
        for r in probes:
            res = json.loads(r["result"])
            prow.append([res.get("label", r["step_name"]), r["run"], res.get("accuracy"), res.get("n_train"),
                         res.get("n_test"), (res.get("settings") or {}).get("layer")])
        html += "<h3>Nearest-mean probe</h3>" + ctx.table(
            ["model", "run", "accuracy (fraction)", "train examples", "test examples", "layer"], prow)
    return Section("Forgetting vs domain gain", html)


register_section("remedies", remedies_section)
