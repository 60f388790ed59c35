"""Continual-learning summaries of sequential adaptation (domain d1, then d2, ...): forgetting and transfer.

The input is the loss matrix L (nats/token = log token perplexity, lower is better): row 0 is the base model, row k
(k = 1..T) the model after stage k, which adapted to domain s_k; columns are evaluation domains. With performance
taken as −L (so that positive numbers are good, as in the accuracy-based definitions of Lopez-Paz & Ranzato 2017,
"Gradient Episodic Memory", and Chaudhry et al. 2018, "Riemannian Walk"):

* forgetting F[k][s_j] (k > j) = L[k, s_j] − min_{j ≤ l < k} L[l, s_j]: how far domain s_j's loss has risen above
  the best it had since it was trained on (≥ 0; 0 = nothing forgotten). `forgetting` per trained domain is
  F[T][s_j], and `average_forgetting` their mean over j < T;
* backward transfer BWT = 1/(T−1) Σ_{j<T} (L[j, s_j] − L[T, s_j]): how later stages changed the loss on earlier
  domains (negative = forgetting, positive = later stages helped);
* forward transfer FWT = 1/(T−1) Σ_{j=2..T} (L[0, s_j] − L[j−1, s_j]): how earlier stages changed the loss on a
  domain before it was trained on, relative to the base (positive = earlier stages helped);
* `final_loss` = mean_j L[T, s_j] over the sequence's domains, and each number also as a change of perplexity in %
  (exp(Δ) − 1) where it is a difference of losses.
"""

from __future__ import annotations

import math
from typing import Sequence


def _pct(delta_loss: float | None) -> float | None:
    return None if delta_loss is None else 100.0 * (math.exp(delta_loss) - 1.0)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def forgetting_summary(losses: Sequence[dict[str, float]], stages: Sequence[str]) -> dict:
    """Summaries of a loss matrix (rows: base, after stage 1..T; see the module docstring).

    `losses[k]` maps evaluation domain -> loss after stage k (k = 0: the base); `stages[k-1]` is the domain adapted
    to at stage k. Every stage domain must be evaluated in every row."""
    T = len(stages)
    if len(losses) != T + 1:
        raise ValueError(f"{len(losses)} rows of losses for {T} stages: give the base's row and one per stage")
    for k, row in enumerate(losses):
        missing = [s for s in stages if row.get(s) is None]
        if missing:
            raise ValueError(f"row {k}: no loss for stage domain(s) {missing}")
    if len(set(stages)) != T:
        raise ValueError(f"stages repeat a domain: {list(stages)}")
    domains = list(dict.fromkeys(d for row in losses for d in row))
    L = [{d: row.get(d) for d in domains} for row in losses]

    # F[k][s_j] for k > j (stage index j is 1-based: s_j = stages[j-1])
    forgetting_matrix: list[dict[str, float | None]] = []
    for k in range(T + 1):
        row = {}
        for j, s in enumerate(stages, start=1):
            row[s] = (L[k][s] - min(L[l][s] for l in range(j, k))) if k > j else None
        forgetting_matrix.append(row)
    per_domain = {s: forgetting_matrix[T][s] for s in stages[:-1]}
    bwt_terms = [L[j][s] - L[T][s] for j, s in enumerate(stages[:-1], start=1)]
    fwt_terms = [L[0][s] - L[j - 1][s] for j, s in enumerate(stages, start=1) if j >= 2]
    avg_f = _mean(list(per_domain.values()))
    bwt, fwt = _mean(bwt_terms), _mean(fwt_terms)
    return {
        "stages": list(stages),
        "domains": domains,
        "loss": L,
        "perplexity": [{d: (math.exp(v) if v is not None else None) for d, v in row.items()} for row in L],
        "forgetting_matrix": forgetting_matrix,
        "forgetting": per_domain,
        "forgetting_pct": {s: _pct(v) for s, v in per_domain.items()},
        "average_forgetting": avg_f,
        "average_forgetting_pct": _pct(avg_f),
        "backward_transfer": bwt,
        "backward_transfer_terms": dict(zip(stages[:-1], bwt_terms)),
        "forward_transfer": fwt,
        "forward_transfer_terms": dict(zip(stages[1:], fwt_terms)),
        "final_loss": _mean([L[T][s] for s in stages]),
        "base_loss": _mean([L[0][s] for s in stages]),
        "units": "nats/token (loss = log token perplexity); *_pct: change of perplexity in %",
    }


def losses_from_evals(evals: Sequence[dict]) -> list[dict[str, float]]:
    """Rows of losses from eval step outputs ({"domains": {d: {nll_sum, tokens, token_perplexity, ...}}} or the
    `domains` mapping itself): loss = nll_sum / tokens (= log token_perplexity)."""
    rows = []
    for e in evals:
        doms = e.get("domains", e) if isinstance(e, dict) else {}
        row = {}
        for d, m in doms.items():
            if not isinstance(m, dict):
                continue
            if m.get("nll_sum") is not None and m.get("tokens"):
                row[d] = float(m["nll_sum"]) / float(m["tokens"])
            elif m.get("token_perplexity"):
                row[d] = math.log(float(m["token_perplexity"]))
        rows.append(row)
    return rows
