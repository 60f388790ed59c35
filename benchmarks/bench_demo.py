"""Benchmark: how long the demo takes, cold and re-run, and how much memory it needs.

    python benchmarks/bench_demo.py [--only quick|overtraining] [--out benchmarks/results/demo.md] [--keep DIR]

For each demo (`cptlab demo --quick` and `cptlab demo --study overtraining --quick`) the venv's `cptlab` runs as a
subprocess, exactly as a user types it (stdout/stderr to log files, so no progress bars), into a fresh empty
output directory in a new temporary directory:

- cold: nothing reused. Every stage the demo caches (corpus, tokenizer, token cache, base model / checkpoints,
  study database, report) lives under its `--out` (cptlab/demo/pipeline.py, cptlab/demo/overtraining.py), which is
  new; the caches of the libraries it uses point into the temporary directory too (MPLCONFIGDIR, HF_HOME,
  XDG_CACHE_HOME, TORCHINDUCTOR_CACHE_DIR, TMPDIR). Not cold: Python's bytecode of the installed packages and the
  OS page cache (the demo reads its text from /usr/share and the Python standard library).
- warm: the same command again in the same directory (every finished stage is reused).

Measured per run: wall time; CPU time (user + system of the process and every child it waited for, from
os.wait4); peak RSS of the largest single process in the tree (wait4's ru_maxrss: the maximum over the process and
its waited-for children, NOT their sum); and the peak of the summed RSS of the whole process tree, sampled every
0.5 s with psutil (an upper bound: pages shared between forked workers count once per process). Load average
before, after, and its maximum sampled during the run (the machine is shared). What it produced: the report's
index.html (exists, size), the study runs' status and attempts (the study's results.sqlite) after each run, and
which files under OUT the re-run wrote (modification time at or after its start; the report and results.json
are rewritten every time).
Writes benchmarks/results/demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CPTLAB = Path(sys.executable).parent / "cptlab"

DEMOS = {
    # name: (arguments after `cptlab`, the report's path under --out)
    "quick": (["demo", "--quick"], "study/report/index.html"),
    "overtraining": (["demo", "--study", "overtraining", "--quick"], "overtraining/report/index.html"),
}
# The study database under OUT (the demo's study dir), for the runs' status and attempts.
STUDY_DB = {"quick": "study/results.sqlite", "overtraining": "overtraining/study/results.sqlite"}


def tree_rss(proc) -> int:
    """Summed RSS (bytes) of `proc` and all its descendants; 0 when it is gone."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], cwd: Path, env: dict, log_prefix: Path, interval: float = 0.5) -> dict:
    """Run `cmd` to completion; wall, CPU, peak RSS (largest process; sampled tree sum), load average."""
    import psutil

    load0 = os.getloadavg()
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak, load_max = [0], [load0[0]]
        done = threading.Event()

        def sample() -> None:
            try:
                proc = psutil.Process(child.pid)
            except psutil.Error:
                return
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(proc))
                load_max[0] = max(load_max[0], os.getloadavg()[0])
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
        done.set()
        sampler.join()
    return {
        "rc": child.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "tree_rss_mb": peak[0] / 2**20, "load_before": load0, "load_after": os.getloadavg(),
        "load_max": load_max[0],
        "stdout": f"{log_prefix}.out", "stderr": f"{log_prefix}.err",
    }


def fresh_env(tmp: Path) -> dict:
    env = dict(os.environ)
    for key, sub in (("MPLCONFIGDIR", "mpl"), ("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg-cache"),
                     ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TMPDIR", "tmp")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(tmp / sub)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("CPTLAB_QUIET", None)
    return env


def run_demo(name: str, work: Path) -> dict:
    args, report_rel = DEMOS[name]
    tmp = work / name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    out = tmp / "demo"
    cmd = [str(CPTLAB), *args, "--out", str(out)]
    env = fresh_env(tmp)
    res: dict = {"name": name, "command": "cptlab " + " ".join(args) + " --out OUT", "runs": {}}
    for phase in ("cold", "warm"):
        print(f"[bench_demo] {name} {phase}: {' '.join(cmd)} (load {os.getloadavg()[0]:.2f})", file=sys.stderr,
              flush=True)
        before = time.time()
        r = measure(cmd, tmp, env, tmp / f"{phase}")
        err = Path(r["stderr"]).read_text(errors="replace")
        r["written"] = written_since(out, before) if phase == "warm" else None
        r["study"] = study_runs(out / STUDY_DB[name])
        r["reported_seconds"] = read_json(out / "results.json").get("seconds")
        res["runs"][phase] = r
        print(f"[bench_demo] {name} {phase}: exit {r['rc']}, {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, "
              f"peak RSS {r['maxrss_mb']:.0f} MB (tree {r['tree_rss_mb']:.0f} MB)", file=sys.stderr, flush=True)
        if r["rc"] != 0:
            print(err[-3000:], file=sys.stderr)
            break
    report = out / report_rel
    res["report_rel"] = report_rel
    res["report_exists"] = report.is_file()
    res["report_kb"] = report.stat().st_size / 1024 if report.is_file() else None
    res["pngs"] = len(list(report.parent.glob("*.png"))) if report.parent.is_dir() else 0
    res["out_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20 if out.exists() else 0
    return res


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def study_runs(db: Path) -> dict:
    """{status: number of runs} and the most attempts of any run, from the study's results.sqlite."""
    if not db.is_file():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        status = dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        attempts = conn.execute("SELECT MAX(attempts) FROM runs").fetchone()[0]
    finally:
        conn.close()
    return {"status": status, "max_attempts": attempts}


def written_since(out: Path, t: float) -> dict[str, int]:
    """Files under `out` modified at or after time `t`, counted per stage (the first two path components)."""
    counts: dict[str, int] = {}
    for p in out.rglob("*"):
        try:
            if p.is_file() and p.stat().st_mtime >= t:
                key = "/".join(p.relative_to(out).parts[:2])
                counts[key] = counts.get(key, 0) + 1
        except OSError:
            pass
    return dict(sorted(counts.items()))


def fmt_time(s: float) -> str:
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def report_md(results: list[dict], argv: list[str], started: str, minutes: float) -> str:
    cmd = "python benchmarks/bench_demo.py" + (" " + " ".join(argv) if argv else "")
    # The demo itself keeps both cores busy (load ~2); what was running before the first demo tells how quiet it was.
    first = next(iter(results[0]["runs"].values()), None) if results else None
    quiet = first is not None and first["load_before"][0] < 0.5
    machine = ("quiet before the first run (1-minute load average "
               f"{first['load_before'][0]:.2f}; other jobs may have started since: load average in the table)"
               if quiet else "**shared with other engineers' jobs** (load average in the table)")
    lines = [
        "## Demo: wall time and memory, cold and re-run",
        "",
        f"`{cmd}` — {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {machine}, "
        f"Python {platform.python_version()}; {started}; {minutes:.1f} min in all.",
        "",
        "Each demo runs as a user runs it (the venv's `cptlab`, `HF_HUB_OFFLINE=1`, output to log files) into a fresh "
        "empty `--out` in a new temporary directory, with the matplotlib, Hugging Face, XDG, TorchInductor and "
        "temp-file caches pointed into it too (cold: no stage reused; Python bytecode and the OS page cache are "
        "not cleared), then again in the same directory (warm re-run: finished stages reused). CPU = user + system "
        "time of the process and its children. Peak RSS = `ru_maxrss` from `os.wait4`: the largest single "
        "process of the tree, not a sum; \"tree\" = the peak of the summed RSS of the process and all its "
        "descendants, sampled every 0.5 s (counts shared pages once per process).",
        "",
        "| demo | cold wall | cold CPU | warm re-run wall | warm CPU | peak RSS cold / warm (MB) | "
        "peak tree RSS cold (MB) | load avg (1 min) before → max during → after cold |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        c, w = res["runs"].get("cold"), res["runs"].get("warm")
        cell = (lambda r, k: "failed" if r is None or r["rc"] else fmt_time(r[k]))
        cpu = (lambda r: "–" if r is None or r["rc"] else f"{r['cpu_s']:.0f} s")
        rss = f"{c['maxrss_mb']:,.0f} / " + (f"{w['maxrss_mb']:,.0f}" if w else "–")
        lines.append(f"| `{res['command']}` | {cell(c, 'wall_s')} | {cpu(c)} | {cell(w, 'wall_s')} | {cpu(w)} | "
                     f"{rss} | {c['tree_rss_mb']:,.0f} | {c['load_before'][0]:.2f} → {c['load_max']:.2f} → "
                     f"{c['load_after'][0]:.2f} |")
    lines += ["", "What each run produced:", ""]
    for res in results:
        c, w = res["runs"].get("cold"), res["runs"].get("warm")
        ok = c and c["rc"] == 0 and w and w["rc"] == 0

        def runs(r: dict) -> str:
            st = r.get("study") or {}
            if not st:
                return "no study database"
            return (", ".join(f"{n} {s}" for s, n in sorted(st["status"].items()))
                    + f" (most attempts of a run: {st['max_attempts']})")

        lines.append(
            f"- `{res['command']}`: exit codes {c['rc'] if c else '–'} (cold), {w['rc'] if w else '–'} (warm); "
            f"report `OUT/{res['report_rel']}` "
            + (f"exists ({res['report_kb']:,.0f} KB, {res['pngs']} PNG figures beside it)" if res["report_exists"]
               else "**missing**")
            + f"; {res['out_mb']:,.0f} MB under OUT."
            + (f" Study runs after the cold run: {runs(c)}; after the re-run: {runs(w)}." if w else "")
            + " The demo's own timer (results.json `seconds`): "
            + ", ".join(f"{r['reported_seconds']} s {p}" for p, r in res["runs"].items())
            + "." + ("" if ok else " **FAILED**, see the log tail printed by the script."))
        if w:
            written = ", ".join(f"`{k}` ({n})" for k, n in w["written"].items()) or "none"
            lines.append(f"  Files the re-run wrote, per directory under OUT (number of files): {written}.")
        lines.append(f"  Load average (1/5/15 min) before cold {'/'.join(f'{x:.2f}' for x in c['load_before'])}, "
                     f"after cold {'/'.join(f'{x:.2f}' for x in c['load_after'])}"
                     + (f", after warm {'/'.join(f'{x:.2f}' for x in w['load_after'])}." if w else "."))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(DEMOS), default=None, help="run one demo (default: both)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "demo.md")
    ap.add_argument("--keep", type=Path, default=None,
                    help="work in this directory and keep it (default: a temporary directory, removed)")
    args = ap.parse_args()
    if not CPTLAB.exists():
        print(f"{CPTLAB}: not found (run with the venv's python)", file=sys.stderr)
        return 2
    names = [args.only] if args.only else list(DEMOS)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="cptlab-bench-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_demo(n, work) for n in names]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[bench_demo] kept {work}", file=sys.stderr)
    argv = sys.argv[1:]
    text = report_md(results, argv, started, (time.perf_counter() - t0) / 60)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    ok = all(r["rc"] == 0 for res in results for r in res["runs"].values()) and all(
        res["report_exists"] for res in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
