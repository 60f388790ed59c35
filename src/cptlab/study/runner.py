"""Run a study: expand the spec, record the runs in the database, run what is not done yet.

    cptlab study run study.yaml --out runs/lr-sweep            # sequential, in this process
    cptlab study run study.yaml --only 'grid-code-*' --dry-run  # what would run, tokens and compute
    cptlab study run study.yaml --executor slurm                # one SLURM array job (submitit)

Skipping is keyed by each run's config hash: a run whose hash is in the database as `done` is not run again; a
changed config puts that run (only) back to pending. Several runner processes may work on one study at once
(the same host or, with a shared filesystem, several): each run is claimed in one `BEGIN IMMEDIATE`
transaction, so no two processes run it; a claim whose process died (SIGKILL, node lost) is taken over and the
run redone. A run's results are committed in the transaction that marks it done, so a killed run leaves none.

Inside a run, every finished step leaves `<step dir>/step-done.json` (its outputs and what it recorded, with the
run's config hash): a redone run reuses finished steps and restarts at the one that was interrupted. A run dir
left by a different config of the run is deleted before the run starts again.

Executors: `local` (default: sequential, this process), `submitit-local` (each run a process, via submitit's
local executor) and `slurm` (a SLURM job array via submitit; set its parameters in the study YAML):

    executor:
      slurm:
        partition: gpu
        timeout_min: 240
        gpus_per_node: 1
        cpus_per_task: 8
        array_parallelism: 16      # at most 16 runs at once
        additional_parameters: {account: my-project}

`--launcher torchrun --nproc N` runs the steps that support it (`train`) under torchrun with N processes on
the node; the other steps run in the runner's process.
"""

from __future__ import annotations

import json
import os
from collections import deque
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cptlab.console import is_quiet, log, progress
from cptlab.errors import CptlabError, UsageError
from cptlab.fsutil import atomic_write_json
from cptlab.study.spec import RUNTIME_ROOTS, RunSpec, StudySpec, canonical_json, load_spec, select, substitute
from cptlab.study.steps import StepContext, _jsonable, get_step_kind
from cptlab.study.store import Claim, RunRecord, Store

EXECUTORS = ("local", "submitit-local", "slurm")
STEP_DONE = "step-done.json"
RUN_JSON = "run.json"


@dataclass
class RunnerOptions:
    fail_fast: bool = False
    launcher: str | None = None  # None | "torchrun"
    nproc: int = 1
    executor: str = "local"
    stale_after: float = 120.0  # a claim with no heartbeat for this long (other host) is taken over
    heartbeat_every: float = 5.0
    wait: bool = True  # wait for runs that another live runner is running
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    spec: StudySpec
    spec_path: Path
    spec_dir: Path
    dir: Path
    runs: list[RunSpec]  # every run of the spec
    sections: list[str]


def default_study_dir(spec: StudySpec) -> Path:
    return Path("runs") / spec.name


def open_study(spec_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> Study:
    """Load and expand a study spec (no database writes)."""
    from cptlab.study.kinds import expand, get_study_kind

    spec, spec_dir = load_spec(spec_path, overrides)
    runs = expand(spec, spec_dir)
    study_dir = Path(out) if out is not None else default_study_dir(spec)
    return Study(spec, Path(spec_path).resolve(), spec_dir, study_dir.resolve(), runs,
                 list(get_study_kind(spec.kind).sections))


# ---------------------------------------------------------------- executing one run


def _heartbeat_loop(db_path: Path, claim: Claim, every: float, stop: threading.Event) -> None:
    store = Store(db_path)
    try:
        while not stop.wait(every):
            try:
                store.heartbeat(claim)
            except Exception:  # a busy DB must never kill the run
                pass
    finally:
        store.close()


def _prepare_run_dir(run_dir: Path, run: RunSpec) -> None:
    """Keep a run dir left by an interrupted attempt of the same config; wipe one left by another config."""
    marker = run_dir / RUN_JSON
    if run_dir.exists():
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get("hash")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != run.hash:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"name": run.name, "hash": run.hash, "config": run.config})


def _runtime_vars(study_dir: Path, run_dir: Path, step_dir: Path, run: RunSpec,
                  outputs: dict[str, Any]) -> dict[str, Any]:
    return {"steps": outputs, "run": {"dir": str(run_dir), "name": run.name, "seed": _seed(run)},
            "step": {"dir": str(step_dir)}, "study": {"dir": str(study_dir)}}


def _seed(run: RunSpec) -> int:
    try:
        return int(run.axes.get("seed", run.meta.get("seed", 0)))
    except (TypeError, ValueError):
        return 0


def execute_run(run: RunSpec, study_dir: Path, options: RunnerOptions, on_step=None) -> RunRecord:
    """Run every step of `run` (reusing steps an interrupted attempt finished); return what it recorded.
    Raises on a failing step (the exception names the step)."""
    run_dir = study_dir / "runs" / run.name
    _prepare_run_dir(run_dir, run)
    record = RunRecord()
    outputs: dict[str, Any] = {}
    for i, raw in enumerate(run.steps):
        name = raw["name"]
        where = f"run {run.name}, step {name}"
        step_dir = run_dir / name
        if on_step is not None:
            on_step(i, name)
        done = _load_step_done(step_dir, run.hash, raw)
        if done is not None:
            outputs[name] = done["outputs"]
            _merge_record(record, RunRecord(**done["record"]))
            continue
        kind = get_step_kind(str(raw["kind"]), where)
        step = substitute(raw, _runtime_vars(study_dir, run_dir, step_dir, run, outputs), where,
                          deferred=frozenset())
        step = kind.resolve(step, where)
        started = time.time()
        part = RunRecord()
        ctx = StepContext(run=run, run_dir=run_dir, step_dir=step_dir, study_dir=study_dir, step_name=name,
                          outputs=outputs, record=part, seed=_seed(run),
                          launcher={"kind": options.launcher, "nproc": options.nproc} if options.launcher else {})
        try:
            if options.launcher == "torchrun" and kind.distributed:
                out = _launch_torchrun(kind, step, ctx, options.nproc)
            else:
                out = kind.fn(step, ctx)
        except CptlabError as e:
            raise CptlabError(f"step {name} ({step['kind']}): {e}") from e
        out = _jsonable(out or {})
        if not isinstance(out, dict):
            raise CptlabError(f"step {name} ({step['kind']}): a step kind must return a dict, got "
                              f"{type(out).__name__}")
        part.steps.append({"name": name, "kind": str(step["kind"]), "result": out, "started": started,
                           "ended": time.time()})
        atomic_write_json(step_dir / STEP_DONE, {"hash": run.hash, "step": canonical_json(raw), "outputs": out,
                                                 "record": asdict(part)})
        outputs[name] = out
        _merge_record(record, part)
    return record


def _load_step_done(step_dir: Path, run_hash: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    path = step_dir / STEP_DONE
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("hash") != run_hash or done.get("step") != canonical_json(raw):
        return None
    rec = done["record"]
    rec["metrics"] = [tuple(m) for m in rec.get("metrics", [])]
    rec["diagnostics"] = [tuple(d) for d in rec.get("diagnostics", [])]
    rec["artifacts"] = [tuple(a) for a in rec.get("artifacts", [])]
    rec["task_results"] = [tuple(t) for t in rec.get("task_results", [])]
    return done


def _merge_record(into: RunRecord, part: RunRecord) -> None:
    into.steps.extend(part.steps)
    into.metrics.extend(part.metrics)
    into.evaluations.extend(part.evaluations)
    into.diagnostics.extend(part.diagnostics)
    into.artifacts.extend(part.artifacts)
    into.task_results.extend(part.task_results)


def _launch_torchrun(kind, step: dict[str, Any], ctx: StepContext, nproc: int) -> dict[str, Any]:
    """Run one step under torchrun: every rank calls the step function; rank 0 writes outputs + record."""
    spec_path = ctx.step_dir / "launch.json"
    result_path = ctx.step_dir / "launch-result.json"
    result_path.unlink(missing_ok=True)
    atomic_write_json(spec_path, {
        "kind": kind.name, "module": kind.fn.__module__, "step": step, "run": asdict(ctx.run),
        "run_dir": str(ctx.run_dir), "step_dir": str(ctx.step_dir), "study_dir": str(ctx.study_dir),
        "step_name": ctx.step_name, "outputs": ctx.outputs, "seed": ctx.seed, "launcher": ctx.launcher,
        "result": str(result_path)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cptlab.study.launch", str(spec_path)]
    log(f"[dim]{' '.join(cmd)}[/]")
    # The ranks' logs go to the user's stderr as they come (and to torchrun.log); the last lines name a failure.
    tail: deque[str] = deque(maxlen=8)
    with subprocess.Popen(cmd, stdout=None, stderr=subprocess.PIPE, text=True, bufsize=1) as proc, \
            open(ctx.step_dir / "torchrun.log", "w", encoding="utf-8") as log_file:
        for line in proc.stderr:
            log_file.write(line)
            if not is_quiet():
                sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
        returncode = proc.wait()
    if returncode != 0:
        raise CptlabError(f"torchrun exited with {returncode} (log: {ctx.step_dir / 'torchrun.log'}): "
                          f"{' | '.join(list(tail)[-4:])}")
    data = json.loads(result_path.read_text(encoding="utf-8"))
    rec = data["record"]
    ctx.record.metrics.extend(tuple(m) for m in rec["metrics"])
    ctx.record.evaluations.extend(rec["evaluations"])
    ctx.record.diagnostics.extend(tuple(d) for d in rec["diagnostics"])
    ctx.record.artifacts.extend(tuple(a) for a in rec["artifacts"])
    return data["outputs"]


def _error_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}" if not isinstance(e, CptlabError) else " ".join(msg)
    return text[:500]


def run_claimed(store: Store, claim: Claim, run: RunSpec, study_dir: Path, options: RunnerOptions,
                on_step=None) -> tuple[str, str | None]:
    """Execute a claimed run and record the outcome. Returns (status, error)."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(store.path, claim, options.heartbeat_every, stop),
                            daemon=True)
    beat.start()
    started = time.time()
    try:
        record = execute_run(run, study_dir, options, on_step=on_step)
    except (KeyboardInterrupt, SystemExit):
        stop.set()
        store.release(claim)
        raise
    except BaseException as e:  # noqa: BLE001 - a failed run is recorded and the study goes on
        stop.set()
        err = _error_line(e)
        log_path = study_dir / "runs" / run.name / "error.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(traceback.format_exception(e)), encoding="utf-8")
        store.fail(claim, err)
        return "failed", err
    finally:
        stop.set()
    if not store.finish(claim, record, started=started):
        return "lost", "the claim was taken over by another runner (no heartbeat?)"
    return "done", None


def run_one_job(study_dir: str, run_dict: dict[str, Any], options_dict: dict[str, Any],
                retry_failed_before: float | None) -> dict[str, Any]:
    """What one submitit job does: claim the run, execute it, record it. Returns {name, status, error}."""
    run = RunSpec(**run_dict)
    options = RunnerOptions(**options_dict)
    with Store(study_dir) as store:
        claim = store.claim(run.name, run.hash, options.stale_after, retry_failed_before)
        if claim is None:
            row = store.run(run.name)
            return {"name": run.name, "status": "skipped", "error": None, "db_status": row["status"] if row else None}
        status, err = run_claimed(store, claim, run, Path(study_dir), options)
    return {"name": run.name, "status": status, "error": err}


# ---------------------------------------------------------------- the study


def estimate(study: Study, runs: list[RunSpec]) -> list[dict[str, Any]]:
    """Per run: step kinds and, where a step kind can tell, estimated tokens and FLOPs (6·N·D for training)."""
    from cptlab.study.estimate import estimate_step

    out = []
    for run in runs:
        tokens = flops = 0.0
        known = True
        for step in run.steps:
            e = estimate_step(step)
            if e is None:
                continue
            if e.get("tokens") is None:
                known = False
            tokens += e.get("tokens") or 0
            flops += e.get("flops") or 0
        out.append({"name": run.name, "role": run.role, "hash": run.hash,
                    "steps": " → ".join(f"{s['name']}" + (f"({s['kind']})" if s["kind"] != s["name"] else "")
                                        for s in run.steps),
                    "tokens": int(tokens) if tokens else None, "flops": flops or None, "estimate_complete": known})
    return out


def run_study(spec_path: str | Path, out: str | Path | None = None, only: list[str] | None = None,
              options: RunnerOptions | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every selected run not done yet. Returns {"study_dir", "runs": {name: status}, "counts"}."""
    options = options or RunnerOptions()
    if options.executor not in EXECUTORS:
        raise UsageError(f"--executor {options.executor}: expected one of {', '.join(EXECUTORS)}")
    if options.launcher not in (None, "torchrun"):
        raise UsageError(f"--launcher {options.launcher}: expected torchrun")
    study = open_study(spec_path, out, overrides)
    if not options.slurm:
        options.slurm = dict(study.spec.executor.get("slurm") or {})
    selected = select(study.runs, only)
    store = Store(study.dir)
    try:
        store.set_meta("study", {"name": study.spec.name, "kind": study.spec.kind,
                                 "description": study.spec.description, "spec_path": str(study.spec_path),
                                 "sections": study.sections})
        store.set_meta("spec", study.spec.model_dump(mode="json"))
        actions = store.sync_runs(study.runs, options.stale_after)
        gone = store.prune({r.name for r in study.runs})
        for name in gone:
            log(f"removed {name} (no longer in the study)")
        changed = [n for n, a in actions.items() if a == "changed"]
        if changed:
            log(f"config changed, will re-run: {', '.join(changed)}")
        retry_before = time.time()
        if options.executor == "local":
            results = _run_local(store, study, selected, options, retry_before)
        else:
            results = _run_submitit(store, study, selected, options, retry_before)
        counts = store.counts()
    finally:
        store.close()
    return {"study_dir": str(study.dir), "runs": results, "counts": counts}


def _run_local(store: Store, study: Study, selected: list[RunSpec], options: RunnerOptions,
               retry_before: float) -> dict[str, str]:
    results: dict[str, str] = {}
    pending = list(selected)
    with progress() as bars:
        overall = bars.add_task(f"study {study.spec.name}", total=len(selected))
        while pending:
            waiting = []
            for run in pending:
                claim = store.claim(run.name, run.hash, options.stale_after, retry_before)
                if claim is None:
                    row = store.run(run.name)
                    status = row["status"] if row else "missing"
                    if status == "running" and options.wait:
                        waiting.append(run)  # another runner has it; look again later
                        continue
                    results[run.name] = "skipped" if status == "done" else status
                    bars.advance(overall)
                    continue
                log(f"run {run.name} ({len(run.steps)} steps)")
                task = bars.add_task(f"  {run.name}", total=len(run.steps))

                def on_step(i, name, task=task, run=run):
                    bars.update(task, completed=i, description=f"  {run.name}: {name}")

                status, err = run_claimed(store, claim, run, study.dir, options, on_step=on_step)
                bars.update(task, completed=len(run.steps))
                bars.remove_task(task)
                bars.advance(overall)
                results[run.name] = status
                if status == "failed":
                    log(f"[red]run {run.name} failed:[/] {err}")
                    if options.fail_fast:
                        raise CptlabError(f"run {run.name} failed (--fail-fast): {err}")
                else:
                    log(f"run {run.name}: {status}")
            if waiting:
                time.sleep(min(1.0, options.heartbeat_every))
            pending = waiting
    return results


# submitit's AutoExecutor parameters shared by every cluster; the other keys of `executor.slurm` are SLURM's own
# (`partition`, `additional_parameters`, ...) and are passed as `slurm_<key>`.
_COMMON_PARAMS = ("timeout_min", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node", "mem_gb", "name",
                  "stderr_to_stdout")


def make_executor(folder: Path, cluster: str, params: dict[str, Any], name: str):
    """A submitit AutoExecutor for `cluster` ("slurm" or "local") with the study's `executor.slurm` parameters.

    SLURM: one job array, at most `array_parallelism` (default 64) runs at once; unknown parameters are refused
    by submitit with the list of valid ones. Needs SLURM's `srun` on PATH (a login node).
    """
    import submitit

    params = dict(params or {})
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as e:
        raise CptlabError(f"--executor slurm: {e} (run `cptlab study run` on a SLURM login node, or use "
                          f"--executor submitit-local / local)") from None
    if cluster == "slurm":
        params.setdefault("name", name)
        parallelism = int(params.pop("array_parallelism", 64))
        common = {k: v for k, v in params.items() if k in _COMMON_PARAMS}
        own = {f"slurm_{k}": v for k, v in params.items() if k not in _COMMON_PARAMS}
        try:
            executor.update_parameters(**common, **own, slurm_array_parallelism=parallelism)
        except (NameError, ValueError, TypeError) as e:  # submitit: NameError for an unknown parameter
            raise CptlabError(f"executor.slurm: {str(e).strip().splitlines()[0]}") from None
    else:
        executor.update_parameters(timeout_min=int(params.get("timeout_min", 60 * 24)))
    return executor


def _run_submitit(store: Store, study: Study, selected: list[RunSpec], options: RunnerOptions,
                  retry_before: float) -> dict[str, str]:

    todo = []
    results: dict[str, str] = {}
    for run in selected:
        row = store.run(run.name)
        if row is not None and row["status"] == "done":
            results[run.name] = "skipped"
        else:
            todo.append(run)
    if not todo:
        return results
    folder = study.dir / "submitit"
    cluster = "local" if options.executor == "submitit-local" else "slurm"
    executor = make_executor(folder, cluster, options.slurm, f"cptlab-{study.spec.name}")
    opts = asdict(options)
    jobs = executor.map_array(run_one_job, [str(study.dir)] * len(todo), [asdict(r) for r in todo],
                              [opts] * len(todo), [retry_before] * len(todo))
    log(f"submitted {len(jobs)} {cluster} jobs (logs in {folder})")
    with progress() as bars:
        overall = bars.add_task(f"study {study.spec.name}", total=len(jobs))
        remaining = dict(zip([r.name for r in todo], jobs))
        while remaining:
            for name, job in list(remaining.items()):
                if job.done():
                    try:
                        res = job.result()
                        results[name] = res["status"]
                        if res["status"] == "failed":
                            log(f"[red]run {name} failed:[/] {res['error']}")
                    except Exception as e:  # the job itself died (killed, out of time)
                        results[name] = "failed"
                        log(f"[red]run {name}: job {job.job_id} failed:[/] {_error_line(e)}")
                    del remaining[name]
                    bars.advance(overall)
                    if options.fail_fast and results[name] == "failed":
                        for other in remaining.values():
                            other.cancel(check=False)
                        raise CptlabError(f"run {name} failed (--fail-fast)")
            time.sleep(0.5)
    return results


def claimant_description() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


__all__ = ["RunnerOptions", "Study", "open_study", "run_study", "execute_run", "estimate", "RUNTIME_ROOTS"]
