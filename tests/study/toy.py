"""A toy step kind for the runner's tests: deterministic numbers, optional sleeps and failures, no torch.

Imported by the runner through CPTLAB_PLUGINS=tests.study.toy (subprocesses and submitit jobs too).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class ToyStep(StrictModel):
    scale: float = 1.0
    points: int = 4
    sleep: float = 0.0  # seconds per point (gives the kill test time to kill mid-step)
    fail: bool = False
    domains: list[str] = ["code", "prose"]
    label: str = "model"
    offset: float = 0.0  # e.g. "${steps.toy.value}"


def toy_numbers(scale: float, seed: int, domain: str, offset: float = 0.0) -> dict:
    """The evaluation a toy step records: an independent formula the tests recompute."""
    ppl = 10.0 * scale + seed * 0.5 + len(domain) + offset
    tokens = 100 + len(domain)
    nll = math.log(ppl) * tokens
    return {"documents": 3, "tokens": tokens, "words": 50, "bytes": 400, "nll_sum": nll,
            "token_perplexity": ppl, "word_perplexity": math.exp(nll / 50), "byte_perplexity": math.exp(nll / 400),
            "bits_per_byte": nll / 400 / math.log(2)}


def toy(step: dict, ctx: StepContext) -> dict:
    log = os.environ.get("TOY_LOG") or str(ctx.study_dir / "toy-calls.log")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{ctx.run.name}/{ctx.step_name}\n")
    (ctx.step_dir / "started").write_text(str(time.time()))
    if step["fail"]:
        raise ValueError(f"toy failure in {ctx.run.name}")
    for i in range(step["points"]):
        if step["sleep"]:
            time.sleep(step["sleep"])
        ctx.add_metric(i, "loss", step["scale"] * 3.0 / (i + 1) + ctx.seed * 0.01)
    ctx.add_evaluation(step["label"], {"settings": {"split": "test"},
                                       "domains": {d: toy_numbers(step["scale"], ctx.seed, d, step["offset"])
                                                   for d in step["domains"]}})
    (ctx.step_dir / "out.json").write_text(json.dumps({"scale": step["scale"]}))
    ctx.add_artifact("toy-output", ctx.step_dir / "out.json")
    ctx.add_diagnostic("toy", {"scale": step["scale"], "nan": float("nan")})
    return {"value": step["scale"] * 2, "file": str(Path(ctx.step_dir).relative_to(ctx.study_dir) / "out.json")}


def toy_dist(step: dict, ctx: StepContext) -> dict:
    """Distributed toy: each rank sums its rank with torch.distributed (gloo) when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    total = 0
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t)
        total = int(t.item())
        dist.destroy_process_group()
    ctx.add_metric(0, "world_size", world)
    ctx.add_metric(0, "rank_sum", total)
    return {"world_size": world, "rank_sum": total, "rank": ctx.rank}


register_step_kind("toy", toy, ToyStep)
register_step_kind("toy-dist", toy_dist, distributed=True)
