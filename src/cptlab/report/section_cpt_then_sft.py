"""Report section `cpt-then-sft`: task accuracy of base, CPT, base→SFT and base→CPT→SFT, and whether CPT helped
after fine-tuning (cptlab.diagnose.task_gain: difference paired by seed, SE from seeds and items)."""

from __future__ import annotations

import json

from cptlab.diagnose.task_gain import ArmStats, arm_stats, difference
from cptlab.report.sections import ReportContext, Section, register_section

ARM_ORDER = ["base", "cpt", "base+sft", "cpt+sft"]


def arm_text(label: str) -> str:
    """base → CPT (legal) → SFT, from labels base, base+sft, cpt, cpt:legal, cpt:legal+sft."""
    sft = label.endswith("+sft")
    core = label[: -len("+sft")] if sft else label
    if core == "base" or core.startswith("base:"):
        text = core
    elif core == "cpt" or core.startswith("cpt:"):
        text = "base → CPT" + (f" ({core[4:]})" if core.startswith("cpt:") else "")
    else:
        return label
    return text + (" → SFT" if sft else "")


def comparisons(labels: set[str]) -> list[tuple[str, str]]:
    """(a, b) pairs to difference: each CPT arm vs the base, before and after SFT, and SFT's own effect."""
    pairs = []
    for label in sorted(labels, key=lambda x: (x.endswith("+sft"), x)):
        if label.endswith("+sft") or not (label == "cpt" or label.startswith("cpt:")):
            continue
        if f"{label}+sft" in labels and "base+sft" in labels:
            pairs.append((f"{label}+sft", "base+sft"))
        if "base" in labels:
            pairs.append((label, "base"))
    if "base+sft" in labels and "base" in labels:
        pairs.append(("base+sft", "base"))
    return pairs


def task_rows(ctx: ReportContext) -> list[dict]:
    try:
        rows = ctx.db.execute(
            "SELECT t.*, r.axes FROM task_results t JOIN runs r ON r.name = t.run WHERE r.status = 'done' "
            "ORDER BY r.position, t.run, t.step_name").fetchall()
    except Exception:  # noqa: BLE001 - a database from before task results existed
        return []
    return [{**dict(r), "axes": json.loads(r["axes"] or "{}")} for r in rows]


def _arms(stats: dict[str, ArmStats]) -> list[str]:
    return [a for a in ARM_ORDER if a in stats] + sorted(a for a in stats if a not in ARM_ORDER)


def verdict_lines(by_task: dict[str, dict[str, ArmStats]], metric: str) -> list[str]:
    lines = []
    for task, stats in by_task.items():
        if "base+sft" in stats and "base" in stats:
            d = difference(stats, "base+sft", "base")
            lines.append(f"{task}: SFT alone took {metric} from {stats['base'].mean:.3f} to {stats['base+sft'].mean:.3f}"
                         + (f" (95% interval of the change {d.low:+.3f} to {d.high:+.3f})."
                            if d is not None and d.low is not None else "."))
        for a, b in comparisons(set(stats)):
            if not a.endswith("+sft") or b != "base+sft":
                continue
            d = difference(stats, a, b)
            if d is None:
                continue
            cpt = a[: -len("+sft")]
            text = (f"{task}: {metric} after SFT is {stats[a].mean:.3f} with CPT{_which(cpt)} and "
                    f"{stats[b].mean:.3f} without ({d.mean:+.3f}")
            if d.low is not None:
                text += f", 95% interval {d.low:+.3f} to {d.high:+.3f}, {d.seeds} seed(s)"
            text += "): " + {"helped": "CPT helped after fine-tuning.",
                             "hurt": "CPT hurt after fine-tuning.",
                             "no clear difference": "no clear difference at this number of seeds and items.",
                             "undetermined": "no spread to judge by (one seed and no standard errors)."}[d.verdict]
            if cpt in stats and "base" in stats:
                text += (f" Before SFT: base {stats['base'].mean:.3f}, after CPT {stats[cpt].mean:.3f} "
                         f"({stats[cpt].mean - stats['base'].mean:+.3f}).")
            lines.append(text)
    return lines


def _which(cpt_label: str) -> str:
    return f" ({cpt_label[4:]})" if cpt_label.startswith("cpt:") else ""


def cpt_then_sft_section(ctx: ReportContext) -> Section | None:
    rows = task_rows(ctx)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [m for m in ("acc", "acc_norm") if any(r["metric"] == m for r in rows)]
    if not metrics:
        return None
    html = ["<p>Each arm is trained once per seed with the same recipe; accuracy is measured on the same items "
            "(multiple choice by log-likelihood, as lm-evaluation-harness). The difference base → CPT → SFT minus "
            "base → SFT is taken seed by seed; its 95% interval combines the seed-to-seed spread and each "
            "accuracy's binomial standard error (conservative: both arms answer the same items).</p>"]
    lines = [s for m in metrics for s in verdict_lines(arm_stats(rows, m), m)]
    if lines:
        html.append('<div class="summary"><h3>Summary (computed from the numbers below)</h3><ul>'
                    + "".join(f"<li>{ctx.escape(s)}</li>" for s in lines) + "</ul></div>")
    by_task = arm_stats(rows, metrics[0])
    tasks = list(by_task)
    n_arms = len(_arms({a: None for t in tasks for a in by_task[t]}))
    fig, ax = plt.subplots(figsize=(max(4.5, (0.25 * n_arms + 0.6) * len(tasks) + 1.5), 3.6))
    arms = _arms({a: None for t in tasks for a in by_task[t]})
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        xs = np.arange(len(tasks)) + (j - (len(arms) - 1) / 2) * width
        means = [by_task[t][arm].mean if arm in by_task[t] else np.nan for t in tasks]
        errs = [_spread(by_task[t][arm]) if arm in by_task[t] else 0.0 for t in tasks]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=arm_text(arm))
        for t, x in zip(tasks, xs):  # every seed as a dot
            if arm in by_task[t]:
                vals = list(by_task[t][arm].by_seed.values())
                ax.plot([x] * len(vals), vals, "k.", markersize=3)
    ax.set_xticks(range(len(tasks)), tasks, rotation=15, ha="right", fontsize=8)
    ax.set_xlabel("task")
    ax.set_ylabel(f"{metrics[0]} (fraction correct)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: many arms hide the bars
    html.append(ctx.figure(fig, "cpt-then-sft", f"Task {metrics[0]} per arm (bars: mean over seeds ± SE; dots: "
                                                f"seeds)"))
    for metric in metrics:
        stats_by_task = arm_stats(rows, metric)
        table = []
        for task, stats in stats_by_task.items():
            for arm in _arms(stats):
                s = stats[arm]
                table.append([task, arm_text(arm), s.mean, s.sd, len(s.by_seed), s.n,
                              ", ".join(f"{v:.3f}" for v in s.by_seed.values())])
        html.append(ctx.table(["task", "arm", f"{metric} (mean)", "sd over seeds", "seeds", "items",
                               f"{metric} per seed"], table, caption=f"{metric} per task and arm"))
        diffs = []
        for task, stats in stats_by_task.items():
            for a, b in comparisons(set(stats)):
                d = difference(stats, a, b)
                if d is not None:
                    diffs.append([task, f"{arm_text(a)} − {arm_text(b)}", d.mean, d.se, d.low, d.high, d.seeds,
                                  d.verdict])
        if diffs:
            html.append(ctx.table(["task", "difference", f"Δ {metric}", "SE", "95% low", "95% high", "seeds",
                                   "verdict"], diffs, caption=f"Differences in {metric}, paired by seed"))
    return Section("Does CPT help after fine-tuning? (task accuracy)", "\n".join(html))


def _spread(s: ArmStats) -> float:
    import math

    se_items = [v for v in s.stderr_by_seed.values() if v is not None]
    item = math.sqrt(sum(v * v for v in se_items) / len(se_items)) / math.sqrt(len(s.by_seed)) if se_items else 0.0
    seeds = (s.sd or 0.0) / math.sqrt(len(s.by_seed))
    return math.sqrt(item * item + seeds * seeds)


register_section("cpt-then-sft", cpt_then_sft_section)
