"""Study YAML writers and a database dump that ignores times, for comparing two studies."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml


def toy_study(path: Path, domains=("code", "prose"), scales=(1.0, 2.0), sleep: float = 0.0,
              name: str = "toy", seeds=None, extra: dict | None = None) -> Path:
    grid = {"domain": list(domains), "scale": list(scales)}
    if seeds:
        grid["seed"] = list(seeds)
    spec = {
        "name": name,
        "seed": 1,
        "defs": {"toy": {"points": 4, "sleep": sleep}},
        "grid": grid,
        "baseline": {"axes": [], "steps": [{"kind": "toy", "name": "eval", "scale": 0.5, "label": "before"}]},
        "steps": [
            {"kind": "toy", "name": "train", "scale": "${scale}", "sleep": sleep, "fail": False,
             "domains": ["${domain}"]},
            {"kind": "toy", "name": "eval", "scale": "${scale}", "offset": "${steps.train.value}",
             "label": "after"},
        ],
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dump(study_dir: Path) -> dict:
    """The database's content without times, attempts and claims: what two equal studies share."""
    conn = sqlite3.connect(str(Path(study_dir) / "results.sqlite"))
    conn.row_factory = sqlite3.Row
    out = {"runs": [dict(name=r["name"], hash=r["hash"], status=r["status"], config=r["config"], error=r["error"],
                         role=r["role"], baseline=r["baseline"])
                    for r in conn.execute("SELECT * FROM runs ORDER BY name")]}
    out["steps"] = [(r["run"], r["position"], r["name"], r["kind"], r["result"])
                    for r in conn.execute("SELECT * FROM steps ORDER BY run, position")]
    for table in ("metrics", "evaluations", "diagnostics", "artifacts"):
        out[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")]
    conn.close()
    return json.loads(json.dumps(out, default=str))
