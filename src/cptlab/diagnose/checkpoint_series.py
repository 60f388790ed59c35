"""A series of checkpoints of one pretraining run, ordered by tokens seen, and the U-shape verdict over it.

Where a checkpoint's "tokens seen" comes from, in order:
  1. given explicitly (`--tokens` on the command line, `tokens:` in a study);
  2. the checkpoint's training state: any JSON file in `<ckpt>/state/` (or, for a model dir `<ckpt>/model`, in its
     sibling `state/`; the trainer writes `state/trainer.json`), else the model dir's `cptlab_train.json`, with a
     top-level or one-level-nested key `tokens_seen`, `tokens`, `num_tokens` or `train_tokens`;
  3. none: the series is then ordered as given and the report says the token counts are unknown.

`checkpoints/step-XXXXXXXX/` dirs without a `COMPLETE` marker (a save cut by a kill) are skipped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from cptlab.errors import CptlabError

TOKEN_KEYS = ("tokens_seen", "tokens", "num_tokens", "train_tokens")
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """One model of the series: where its HF dir is, and how far into pretraining it was taken."""

    label: str
    model_dir: str
    tokens: int | None = None
    tokens_source: str | None = None  # "given" | "state:<file>" | None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_dir_of(path: str | Path) -> Path:
    """The HF model dir of a checkpoint path: `<ckpt>/model` when present, else the path itself."""
    p = Path(path).expanduser()
    if (p / "model" / "config.json").is_file():
        return p / "model"
    return p


def _state_dirs(path: Path, model_dir: Path) -> list[Path]:
    dirs = [path / "state", model_dir.parent / "state", model_dir / "state"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def _find_tokens(data: Any, depth: int = 0) -> int | None:
    if not isinstance(data, dict):
        return None
    for key in TOKEN_KEYS:
        v = data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            return int(v)
    if depth == 0:
        for v in data.values():
            found = _find_tokens(v, 1)
            if found is not None:
                return found
    return None


def read_tokens_seen(path: str | Path) -> tuple[int | None, str | None]:
    """(tokens seen, the file it came from) from a checkpoint's training state; (None, None) if not found."""
    p = Path(path).expanduser()
    model_dir = model_dir_of(p)
    files = [f for d in _state_dirs(p, model_dir) for f in sorted(d.glob("*.json"))]
    files.append(model_dir / "cptlab_train.json")  # the trainer's note beside the weights (final/ has one)
    for f in files:
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            tokens = _find_tokens(data)
            if tokens is not None:
                return tokens, str(f)
    return None, None


def _step_of(path: Path) -> int | None:
    for part in (path.name, path.parent.name):
        m = _STEP_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


def checkpoint_from_path(path: str | Path, tokens: int | None = None, label: str | None = None) -> Checkpoint:
    p = Path(path).expanduser()
    model_dir = model_dir_of(p)
    if not (model_dir / "config.json").is_file():
        raise CptlabError(f"model {path}: no HF model here (expected {model_dir / 'config.json'})")
    step = _step_of(model_dir if model_dir != p else p)
    source = "given" if tokens is not None else None
    if tokens is None:
        tokens, found = read_tokens_seen(p)
        source = f"state:{found}" if found else None
    if label is None:
        label = p.name if p.name != "model" else p.parent.name
    return Checkpoint(label=label, model_dir=str(model_dir.resolve()), tokens=tokens, tokens_source=source,
                      step=step)


def list_run_checkpoints(run_dir: str | Path, include_final: bool = False) -> list[Checkpoint]:
    """The complete checkpoints of a training run dir (`run_dir/checkpoints/step-*/` with COMPLETE), by tokens."""
    run_dir = Path(run_dir).expanduser()
    root = run_dir / "checkpoints"
    if not root.is_dir():
        raise CptlabError(f"{run_dir}: no checkpoints/ folder (is this a `cptlab train` output dir?)")
    found = []
    for d in sorted(root.iterdir()):
        if _STEP_DIR.match(d.name) and d.is_dir() and (d / "COMPLETE").exists():
            found.append(checkpoint_from_path(d))
    if include_final and (run_dir / "final" / "config.json").is_file():
        final = checkpoint_from_path(run_dir / "final", label="final")
        if final.tokens is None:
            final.tokens = _tokens_from_metrics(run_dir)
            final.tokens_source = "metrics.jsonl" if final.tokens is not None else None
        if not any(c.tokens is not None and c.tokens == final.tokens for c in found):
            found.append(final)
    if not found:
        raise CptlabError(f"{root}: no complete checkpoint (step-*/ with a COMPLETE marker)")
    return order_series(found)


def _tokens_from_metrics(run_dir: Path) -> int | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        t = _find_tokens(row) if isinstance(row, dict) else None
        if t is not None:
            last = t
    return last


def resolve_series(paths: Sequence[str | Path], tokens: Sequence[int] | None = None,
                   labels: Sequence[str] | None = None) -> list[Checkpoint]:
    """Checkpoints from paths (each a checkpoint dir, a model dir, or a training run dir with checkpoints/)."""
    if tokens is not None and len(tokens) != len(paths):
        raise CptlabError(f"--tokens: {len(tokens)} value(s) for {len(paths)} model(s); give one per --model")
    if labels is not None and len(labels) != len(paths):
        raise CptlabError(f"labels: {len(labels)} for {len(paths)} model(s)")
    out: list[Checkpoint] = []
    for i, p in enumerate(paths):
        pp = Path(p).expanduser()
        if (pp / "checkpoints").is_dir() and not (pp / "config.json").is_file() and tokens is None:
            out.extend(list_run_checkpoints(pp))
            continue
        out.append(checkpoint_from_path(pp, tokens=None if tokens is None else int(tokens[i]),
                                        label=None if labels is None else labels[i]))
    seen: dict[str, int] = {}
    for c in out:  # labels name rows in tables: make them unique
        if c.label in seen:
            seen[c.label] += 1
            c.label = f"{c.label}#{seen[c.label]}"
        else:
            seen[c.label] = 1
    return order_series(out)


def order_series(series: list[Checkpoint]) -> list[Checkpoint]:
    """Ordered by tokens seen when every checkpoint has a count; else as given."""
    if series and all(c.tokens is not None for c in series):
        return sorted(series, key=lambda c: (c.tokens, c.step or 0))
    return list(series)


# ---------------------------------------------------------------- statistics and the verdict


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof=1), standard error of the mean, n, and the values themselves."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "sem": None, "values": []}
    mean = sum(vals) / n
    if n > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        sem = std / math.sqrt(n)
    else:
        std = sem = None
    return {"n": n, "mean": mean, "std": std, "sem": sem, "values": vals}


def difference(first: dict[str, Any], last: dict[str, Any]) -> tuple[float, float | None]:
    """`last` mean - `first` mean (two `summarize` results) and its standard error, None without a spread."""
    diff = last["mean"] - first["mean"]
    if first["sem"] is None or last["sem"] is None:
        return diff, None
    return diff, math.sqrt(first["sem"] ** 2 + last["sem"] ** 2)


def welch_test(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    """Welch's t-test of `last` mean - `first` mean (two `summarize` results, seeds independent between them).

    {"difference", "se", "t", "df" (Welch-Satterthwaite), "p_greater" (one-sided: last > first), "p_less",
    "p_two_sided"}; None when either side has fewer than two values or both have zero spread (no variance to
    test against). Unpaired, so valid whether or not runs with the same seed are correlated across checkpoints
    (a positive correlation only makes it conservative)."""
    if first["n"] < 2 or last["n"] < 2:
        return None
    diff, se = difference(first, last)
    if se is None or not se > 0:
        return None
    from scipy.special import stdtr  # the t CDF (a ufunc: much cheaper per call than scipy.stats.t)

    v1, v2 = first["sem"] ** 2, last["sem"] ** 2
    df = (v1 + v2) ** 2 / (v1 ** 2 / (first["n"] - 1) + v2 ** 2 / (last["n"] - 1))
    t = diff / se
    p_greater = float(stdtr(df, -t))
    p_less = float(stdtr(df, t))
    return {"difference": diff, "se": se, "t": t, "df": df, "p_greater": p_greater, "p_less": p_less,
            "p_two_sided": min(1.0, 2 * min(p_greater, p_less))}


U_TEST = "one-sided Welch t-tests of the last checkpoint against each earlier one, Bonferroni-corrected"


def u_shape_verdict(points: Sequence[dict[str, Any]], metric: str = "target perplexity after adaptation",
                    alpha: float = 0.05) -> dict[str, Any]:
    """Does adapting from the last checkpoint end worse than from an earlier one? A test at level `alpha`.

    `points`: one per checkpoint, in pretraining order, each `{"label", "tokens", "values": [one per seed]}` and
    optionally "parameters" (then the text says how many tokens per parameter the checkpoints saw); lower is
    better. The best checkpoint is the one with the lowest mean.

    The test. Picking the best checkpoint after looking at the means and then testing the last one against it
    inflates the error rate (with z = 2 and 2-5 seeds, 14-20% of flat curves were called U-shaped). Instead the
    last checkpoint is tested against *every* earlier checkpoint, each with a one-sided Welch t-test (t quantiles,
    so 2 or 3 seeds are judged with their real, wide, uncertainty), and the smallest p-value is multiplied by the
    number of comparisons (Bonferroni). Whichever earlier checkpoint turns out best, the chance that a curve
    with no rise (all checkpoints equal in expectation, or falling) is called U-shaped is at most `alpha`
    (tests/diagnose/test_u_shape_test.py measures it by simulation). Comparisons need at least two seeds on both
    sides; with a single seed there is no spread and no verdict (`u_shape` None).

    Fields: best/last (label, tokens, mean), `difference` (last - best mean), `relative_difference`,
    `difference_se`, `later_worse`, `u_shape` (True: shown at `alpha`; False: not shown; None: no test possible),
    `verdict`, `text`, and the test's `test`, `alpha`, `p_value` (Bonferroni-adjusted), `p_value_raw`,
    `comparisons` (how many earlier checkpoints were tested), `compared_with` (the earlier checkpoint with the
    smallest p-value), `t`, `df`, `detectable_difference` (the rise over that checkpoint that would have been
    significant at this spread).
    """
    rows = []
    for p in points:
        s = summarize(p.get("values") or [])
        if s["n"]:
            rows.append({"label": p["label"], "tokens": p.get("tokens"), "parameters": p.get("parameters"), **s})
    if not rows:
        return {"verdict": "no results", "text": f"No {metric} to compare.", "u_shape": None, "test": U_TEST,
                "alpha": alpha, "p_value": None}
    best_i = min(range(len(rows)), key=lambda i: rows[i]["mean"])
    best = rows[best_i]
    last = rows[-1]
    out: dict[str, Any] = {"metric": metric, "best": best["label"], "best_tokens": best["tokens"],
                           "best_mean": best["mean"], "last": last["label"], "last_tokens": last["tokens"],
                           "last_mean": last["mean"], "checkpoints": rows, "test": U_TEST, "alpha": alpha,
                           "p_value": None, "p_value_raw": None, "comparisons": 0, "compared_with": None}
    tests = [(r, welch_test(r, last)) for r in rows[:-1]]
    tests = [(r, w) for r, w in tests if w is not None]
    if tests:
        from scipy.special import stdtrit  # t quantile

        m = len(tests)
        ref, w = min(tests, key=lambda rw: rw[1]["p_greater"])
        crit = float(stdtrit(w["df"], 1 - alpha / m))
        out.update(comparisons=m, compared_with=ref["label"], p_value_raw=w["p_greater"],
                   p_value=min(1.0, m * w["p_greater"]), t=w["t"], df=w["df"],
                   detectable_difference=crit * w["se"])
    how = (f"Test ({U_TEST} over {out['comparisons']} comparison(s), alpha = {alpha:g})"
           if tests else "")
    if best_i == len(rows) - 1:
        out.update(u_shape=False, difference=0.0, difference_se=None, verdict="monotone",
                   text=f"Adapting from the last checkpoint {last['label']}{seen_text(last)} ends "
                   f"best ({metric}: {last['mean']:.4g}); no sign that longer pretraining hurt adaptation.")
        return out
    diff, se = difference(best, last)
    rel = diff / best["mean"] if best["mean"] else float("nan")
    later = rows[best_i + 1:]
    worse_later = [r["label"] for r in later if r["mean"] > best["mean"]]
    out.update(difference=diff, relative_difference=rel, difference_se=se, later_worse=worse_later)
    head = (f"Adapting from checkpoint {best['label']}{seen_text(best)} ends best ({metric}: {best['mean']:.4g}); "
            f"the last checkpoint {last['label']}{seen_text(last)} ends worse by {diff:.4g} ({100 * rel:+.1f}%)")
    if not tests:
        n_last = last["n"]
        why = ("a single seed" if max(r["n"] for r in rows) < 2 else
               f"only {n_last} seed of the last checkpoint" if n_last < 2 else
               "no earlier checkpoint with two or more seeds and a spread to compare with")
        out.update(u_shape=None, verdict="undecided (one seed)" if max(r["n"] for r in rows) < 2 else "undecided",
                   text=head + f", from {why}: no variance to test whether this is more than noise, so no "
                   "verdict (run at least two seeds per checkpoint).")
        return out
    p, ref = out["p_value"], out["compared_with"]
    head += f", over {best['n']} and {last['n']} seeds. {how}: vs {ref}, t = {out['t']:.2f} on {out['df']:.1f} df, "
    if p <= alpha:
        out.update(u_shape=True, verdict="u-shape",
                   text=head + f"adjusted p = {p:.3g} <= {alpha:g}: later pretraining made adaptation end worse.")
    else:
        out.update(u_shape=False, verdict="within noise",
                   text=head + f"adjusted p = {p:.3g} > {alpha:g}: within the spread over seeds, not evidence of a "
                   f"U-shape (at this spread, {last['label']} would have had to end worse than {ref} by more than "
                   f"{out['detectable_difference']:.3g}).")
    return out


def seen_text(row: dict[str, Any]) -> str:
    """' (1.47M tokens, 34 tokens/parameter)' for a verdict row; '' when the token count is unknown."""
    if row.get("tokens") is None:
        return ""
    tpp = f", {row['tokens'] / row['parameters']:.3g} tokens/parameter" if row.get("parameters") else ""
    return f" ({tokens_text(row['tokens'])} tokens{tpp})"


def tokens_text(tokens: int | float | None) -> str:
    if tokens is None:
        return "?"
    t = float(tokens)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if t >= div:
            return f"{t / div:.3g}{unit}"
    return f"{int(t)}"


def parameters_in_dir(model_dir: str | Path) -> int | None:
    """Parameter count of an HF dir from its safetensors headers (no weights loaded; tied weights stored once)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    try:
        from safetensors import safe_open

        total = 0
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    n = 1
                    for d in st.get_slice(key).get_shape():
                        n *= int(d)
                    total += n
        return total
    except Exception:  # an unreadable header: the count is only informative
        return None


def token_ticks(ax, xs: Sequence[float]) -> None:
    """Log-scale x axis with one labelled tick per checkpoint (e.g. "40.9k"), no overlapping minor labels."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted(set(xs))
    ax.set_xticks(ticks)
    ax.set_xticklabels([tokens_text(t) for t in ticks], fontsize=8)
