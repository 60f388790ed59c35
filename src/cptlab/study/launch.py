"""Entry point of one step under torchrun (`python -m cptlab.study.launch STEP_DIR/launch.json`).

Every rank calls the step function with the same config; the step kind (e.g. `train`, through accelerate)
joins the process group from torchrun's environment. Rank 0 writes the step's outputs and record to the
result file, which the runner reads back into the run's record.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from cptlab.fsutil import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    from cptlab.study.spec import RunSpec
    from cptlab.study.steps import StepContext, _jsonable, get_step_kind
    from cptlab.study.store import RunRecord

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    importlib.import_module(spec["module"])  # registers the step kind (a plug-in module or the built-ins)
    kind = get_step_kind(spec["kind"])
    rank = int(os.environ.get("RANK", "0"))
    ctx = StepContext(run=RunSpec(**spec["run"]), run_dir=Path(spec["run_dir"]), step_dir=Path(spec["step_dir"]),
                      study_dir=Path(spec["study_dir"]), step_name=spec["step_name"], outputs=spec["outputs"],
                      record=RunRecord(), seed=int(spec["seed"]), launcher=spec["launcher"], rank=rank)
    out = kind.fn(spec["step"], ctx)
    if rank == 0:
        atomic_write_json(spec["result"], {"outputs": _jsonable(out or {}), "record": _jsonable(asdict(ctx.record)),
                                           "world_size": int(os.environ.get("WORLD_SIZE", "1"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
