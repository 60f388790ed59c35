"""Report section `sweep-tasks`: task accuracy against pretraining tokens in a `checkpoint-sweep` study — of each
checkpoint (base), after adapting it (cpt), and after supervised fine-tuning (base+sft, cpt+sft): the outcome
"Overtrained Language Models Are Harder to Fine-Tune" (arXiv 2503.19206) measures.

Reads `task_results` of runs whose `checkpoint` axis carries the checkpoint's name and tokens; sweep runs have an
`lr` and a `seed`, baseline runs neither. Points are means over seeds; the bars are the seeds' standard deviation.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from cptlab.report.section_cpt_then_sft import arm_text
from cptlab.report.sections import ReportContext, Section, register_section

LABELS = ["base", "base+sft", "cpt", "cpt+sft"]


def sweep_accuracy(ctx: ReportContext, metric: str = "acc") -> dict | None:
    """{tasks, checkpoints: [{name, tokens}], series: {(task, label, lr): {checkpoint: [values per seed]}}}."""
    try:
        rows = ctx.db.execute(
            "SELECT t.task, t.model, t.value, r.axes FROM task_results t JOIN runs r ON r.name = t.run "
            "WHERE r.status = 'done' AND t.metric = ? ORDER BY r.position, t.run", (metric,)).fetchall()
    except Exception:  # noqa: BLE001 - a database from before task results existed
        return None
    checkpoints: dict[str, dict] = {}
    series: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        axes = json.loads(r["axes"] or "{}")
        ck = axes.get("checkpoint")
        if not isinstance(ck, dict) or "name" not in ck or r["value"] is None:
            continue
        checkpoints.setdefault(ck["name"], ck)
        series[(r["task"], r["model"], axes.get("lr"))][ck["name"]].append(float(r["value"]))
    if not series:
        return None
    order = sorted(checkpoints.values(), key=lambda c: (c.get("tokens") is None, c.get("tokens") or 0))
    return {"tasks": sorted({k[0] for k in series}), "checkpoints": order, "series": series, "metric": metric}


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _name(label: str, lr) -> str:
    return arm_text(label) + (f" (lr {lr:g})" if lr is not None else "")


def summary_lines(data: dict) -> list[str]:
    lines = []
    for (task, label, lr), by_ck in sorted(data["series"].items(), key=lambda kv: str(kv[0])):
        if not label.endswith("+sft"):
            continue
        pts = [(c, _mean_sd(by_ck[c["name"]])[0]) for c in data["checkpoints"] if c["name"] in by_ck]
        if len(pts) < 2:
            continue
        best_c, best = max(pts, key=lambda p: p[1])
        last_c, last = pts[-1]
        text = (f"{task}, {_name(label, lr)}: best {data['metric']} {best:.3f} from checkpoint {best_c['name']}"
                + (f" ({best_c['tokens']:,} tokens)" if best_c.get("tokens") is not None else ""))
        if last_c is not best_c:
            text += f"; the last checkpoint ({last_c['name']}) ends {best - last:.3f} lower"
        else:
            text += "; the last checkpoint is the best"
        lines.append(text + ".")
    return lines


def sweep_tasks_section(ctx: ReportContext) -> Section | None:
    data = sweep_accuracy(ctx)
    if data is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    html = ["<p>Downstream accuracy of every pretraining checkpoint: as it is (base), after the sweep's "
            "continued pretraining (CPT), and after supervised fine-tuning of either (SFT). If longer pretraining "
            "makes a model harder to fine-tune, the SFT curves fall at the right end.</p>"]
    lines = summary_lines(data)
    if lines:
        html.append('<div class="summary"><h3>Summary (computed from the numbers below)</h3><ul>'
                    + "".join(f"<li>{ctx.escape(s)}</li>" for s in lines) + "</ul></div>")
    names = [c["name"] for c in data["checkpoints"]]
    has_tokens = all(c.get("tokens") for c in data["checkpoints"])
    for task in data["tasks"]:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        keys = sorted((k for k in data["series"] if k[0] == task),
                      key=lambda k: (LABELS.index(k[1]) if k[1] in LABELS else 9, k[1], k[2] or 0))
        table = []
        for key in keys:
            by_ck = data["series"][key]
            xs, ys, es = [], [], []
            for i, c in enumerate(data["checkpoints"]):
                if c["name"] in by_ck:
                    m, sd = _mean_sd(by_ck[c["name"]])
                    xs.append(c["tokens"] if has_tokens else i)
                    ys.append(m)
                    es.append(sd or 0.0)
                    table.append([task, _name(key[1], key[2]), c["name"], c.get("tokens"), m, sd,
                                  len(by_ck[c["name"]])])
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=_name(key[1], key[2]))
        if has_tokens:
            ax.set_xscale("log")
            ax.set_xlabel("pretraining tokens of the checkpoint (log scale)")
        else:
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_xlabel("pretraining checkpoint")
        ax.set_ylabel(f"{data['metric']} (fraction correct)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        html.append(ctx.figure(fig, f"sweep-tasks-{task}", f"{task}: {data['metric']} vs pretraining tokens "
                                                          "(mean over seeds ± sd)"))
        html.append(ctx.table(["task", "model", "checkpoint", "pretraining tokens", f"{data['metric']} (mean)",
                               "sd over seeds", "seeds"], table, caption=f"{task}: {data['metric']} per checkpoint"))
    return Section("Task accuracy vs pretraining tokens (after CPT and SFT)", "\n".join(html))


register_section("sweep-tasks", sweep_tasks_section)
