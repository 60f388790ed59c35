"""lm-evaluation-harness tasks on an already loaded cptlab model, through `lm_eval.simple_evaluate`.

The model goes in as `HFLM(pretrained=<model>, tokenizer=<tokenizer>)`, so lm-eval scores exactly the weights
cptlab loaded (and never downloads a model). Task data must be local or in the HF datasets cache: runs are
offline. Metrics come back under lm-eval's names with the `,none` filter suffix dropped (`acc`, `acc_stderr`,
`acc_norm`, ...; a metric of another filter keeps `metric,filter`); "N/A" stderrs become None.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from cptlab.errors import CptlabError


def _task_manager(specs: list[str], include_path):
    """A TaskManager that knows every spec: first the include path alone (fast: no index of lm-eval's ~15k
    built-in YAMLs), else with lm-eval's own tasks; an unknown name is a CptlabError listing close names."""
    from lm_eval.tasks import TaskManager

    names = [s for s in specs if not Path(s).is_file()]
    if include_path is not None or not names:
        tm = TaskManager(include_path=str(include_path) if include_path is not None else None,
                         include_defaults=False)
        if not names or all(tm.match_tasks([n]) for n in names):
            return tm
    tm = TaskManager(include_path=str(include_path) if include_path is not None else None)
    for n in names:
        if not tm.match_tasks([n]):
            close = difflib.get_close_matches(n, tm.all_tasks, n=8, cutoff=0.6)
            hint = f"; close names: {', '.join(close)}" if close else ""
            where = f" (nor in --include-path {include_path})" if include_path is not None else ""
            raise CptlabError(f"--tasks {n}: not a task file and not an lm-eval task{where}{hint}")
    return tm


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if key in ("alias", "name", "sample_len", "sample_count"):
            continue
        metric, _, filt = key.partition(",")
        name = metric if filt in ("", "none") else key
        out[name] = None if value == "N/A" else value
    return out


def run_lm_eval(model, tokenizer, specs: list[str], batch_size="auto", precision: str = "fp32",
                limit: int | None = None, include_path=None, log_samples: bool = False, num_fewshot=None,
                ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """({task: metrics}, sample rows, settings) of lm-eval's `simple_evaluate` on the loaded model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from cptlab.evaluate.scoring import parse_batch_size

    from cptlab.console import is_quiet

    if is_quiet():  # lm-eval logs every task's config at INFO
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tm = _task_manager(specs, include_path)
    bs = parse_batch_size(batch_size) or "auto"
    kwargs = {"mixed_precision_dtype": "bfloat16"} if precision == "bf16" else {}
    if precision == "fp16":
        kwargs = {"mixed_precision_dtype": "float16"}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=bs, **kwargs)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(specs), task_manager=tm, limit=limit,
                                      log_samples=log_samples, num_fewshot=num_fewshot)
    except CptlabError:
        raise
    except Exception as e:  # lm-eval's and datasets' errors: one line naming the tasks
        msg = " ".join(str(e).split())[:600]
        raise CptlabError(f"lm-eval task(s) {', '.join(specs)}: {type(e).__name__}: {msg}") from None
    if out is None:
        raise CptlabError(f"lm-eval task(s) {', '.join(specs)}: no results")
    results: dict[str, dict[str, Any]] = {}
    for name, metrics in out["results"].items():
        entry = _clean_metrics(metrics)
        counts = out.get("n-samples", {}).get(name) or {}
        entry["n"] = counts.get("effective")
        entry["source"] = "lm-eval"
        entry["file"] = None
        entry["config"] = {"num_fewshot": out.get("n-shot", {}).get(name)}
        results[name] = entry
    rows = []
    for name, samples in (out.get("samples") or {}).items():
        for s in samples:
            resps = s.get("filtered_resps") or []
            lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
            row = {"task": name, "index": s.get("doc_id"), "line": None, "target": s.get("target"),
                   "loglikelihoods": lls}
            for k in ("acc", "acc_norm"):
                if k in s:
                    row[k] = s[k]
            rows.append(row)
    settings = {"lm_eval_version": getattr(lm_eval, "__version__", None)}
    return results, rows, settings
