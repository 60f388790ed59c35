"""Does CPT help after fine-tuning? Task accuracy per arm over seeds, and the paired difference of two arms.

Input: rows of the study's `task_results` table ({model, task, metric, value, stderr, n, axes}). For each task and
arm (the model label: base, cpt, base+sft, cpt+sft) the accuracy is averaged over seeds. The difference of two
arms (cpt+sft − base+sft) is taken seed by seed (the same seed trains both arms) and averaged; its standard error

    SE = sqrt(SE_seeds² + SE_items²),  SE_seeds = sd(d_s) / sqrt(k),  SE_items² = mean_s(se_a,s² + se_b,s²) / k

combines training noise (seed to seed; needs k ≥ 2 seeds) and the finite test set (each accuracy's binomial
standard error). Adding the two arms' item variances ignores that both are scored on the same items, which makes
SE conservative. The verdict compares the 95% interval (t quantile with k − 1 degrees of freedom when seeds give
the spread, normal otherwise) with 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ArmStats:
    arm: str
    by_seed: dict[str, float]  # seed label ("-" for a run without seed) -> accuracy
    stderr_by_seed: dict[str, float | None] = field(default_factory=dict)
    n: int | None = None

    @property
    def mean(self) -> float:
        return sum(self.by_seed.values()) / len(self.by_seed)

    @property
    def sd(self) -> float | None:
        v = list(self.by_seed.values())
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


@dataclass
class Difference:
    a: str
    b: str
    mean: float
    se: float | None
    low: float | None
    high: float | None
    seeds: int
    verdict: str  # "helped" | "hurt" | "no clear difference" | "undetermined"


def arm_stats(rows: list[dict], metric: str = "acc") -> dict[str, dict[str, ArmStats]]:
    """{task: {arm: ArmStats}} from task_results rows of one metric."""
    out: dict[str, dict[str, ArmStats]] = {}
    for r in rows:
        if r["metric"] != metric or r["value"] is None:
            continue
        seed = (r.get("axes") or {}).get("seed")
        key = "-" if seed is None else str(seed)
        arms = out.setdefault(r["task"], {})
        s = arms.setdefault(r["model"], ArmStats(r["model"], {}, {}, r.get("n")))
        s.by_seed[key] = float(r["value"])
        s.stderr_by_seed[key] = r.get("stderr")
    return out


def difference(arms: dict[str, ArmStats], a: str, b: str, level: float = 0.95) -> Difference | None:
    """Arm a minus arm b, paired by seed (seeds both arms have)."""
    if a not in arms or b not in arms:
        return None
    va, vb = dict(arms[a].by_seed), dict(arms[b].by_seed)
    sa_, sb_ = dict(arms[a].stderr_by_seed), dict(arms[b].stderr_by_seed)
    # A reference measured once (e.g. the base, or its SFT in a baseline run without a seed axis) pairs with
    # every seed of the other arm; its own seed-to-seed spread is then unknown (not in SE).
    for v, se, other in ((vb, sb_, va), (va, sa_, vb)):
        if len(v) == 1 and not set(v) & set(other):
            (only,) = v
            for s in other:
                v[s], se[s] = v[only], se.get(only)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    d = [va[s] - vb[s] for s in seeds]
    k = len(d)
    mean = sum(d) / k
    item_var = []
    for s in seeds:
        sa, sb = sa_.get(s), sb_.get(s)
        if sa is not None and sb is not None:
            item_var.append(sa * sa + sb * sb)
    se_items2 = (sum(item_var) / len(item_var)) / k if len(item_var) == k else None
    se_seeds2 = None
    if k >= 2:
        m = mean
        se_seeds2 = sum((x - m) ** 2 for x in d) / (k - 1) / k
    if se_items2 is None and se_seeds2 is None:
        return Difference(a, b, mean, None, None, None, k, "undetermined")
    se = math.sqrt((se_items2 or 0.0) + (se_seeds2 or 0.0))
    from scipy import stats

    q = float(stats.t.ppf(0.5 + level / 2, k - 1)) if se_seeds2 is not None else float(stats.norm.ppf(0.5 + level / 2))
    low, high = mean - q * se, mean + q * se
    if se == 0.0:
        verdict = "no clear difference" if mean == 0 else ("helped" if mean > 0 else "hurt")
    else:
        verdict = "helped" if low > 0 else "hurt" if high < 0 else "no clear difference"
    return Difference(a, b, mean, se, low, high, k, verdict)
