"""Checkpoints: `OUT/checkpoints/step-XXXXXXXX/{model/, state/, COMPLETE}`, written atomically.

- `model/`: an HF dir (config + safetensors + tokenizer) that transformers and lm-eval load directly
  (LoRA merged into plain weights), plus `cptlab_train.json` (step, tokens seen, tokens by source).
- `state/`: `optimizer.pt` (tensors and numbers only: loads with `torch.load(weights_only=True)`),
  `rng.pt` (torch RNG states), `adapter.safetensors` (LoRA runs: the adapter weights, unmerged),
  `trainer.json` (step, tokens, data-sampler position, spike-detector window, fault counter).
- `COMPLETE`: written last. The directory is built as `step-XXXXXXXX.tmp`, fsynced and renamed, so a
  checkpoint either exists completely or not at all; a `.tmp` left by a killed save is ignored and removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_dir

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` (marker present), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "COMPLETE").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def remove_incomplete(root: str | Path) -> list[Path]:
    """Delete leftovers of killed saves (`*.tmp`, `*.old`, dirs without COMPLETE); return them."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (p.name.endswith((".tmp", ".old")) or not (p / "COMPLETE").is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _test_kill_in_save(step: int) -> None:
    """Test hook: CPTLAB_TEST_KILL_IN_SAVE=N makes the process SIGKILL itself halfway through saving step N."""
    if os.environ.get("CPTLAB_TEST_KILL_IN_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(root: str | Path, step: int, model, tokenizer, optimizer_state: dict, trainer_state: dict,
                    adapter_state: dict | None = None, model_info: dict | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically and return its path."""
    import torch
    from safetensors.torch import save_file

    from cptlab.model import save_model

    final = Path(root) / checkpoint_name(step)
    info = json.dumps(model_info or {}, indent=2, sort_keys=True).encode()
    with atomic_dir(final) as tmp:
        save_model(model, tokenizer, tmp / "model", extra_files={"cptlab_train.json": info})
        state = tmp / "state"
        state.mkdir()
        torch.save(optimizer_state, state / "optimizer.pt")
        _test_kill_in_save(step)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, state / "rng.pt")
        if adapter_state is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in adapter_state.items()},
                      str(state / "adapter.safetensors"))
        (state / "trainer.json").write_text(json.dumps(trainer_state, indent=1, sort_keys=True), encoding="utf-8")
        (tmp / "COMPLETE").write_text(f"step {step}\n", encoding="utf-8")
    return final


def load_trainer_state(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "state" / "trainer.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CptlabError(f"{path}: unreadable training state ({e})") from None


def load_tensors(path: str | Path):
    """A `torch.save`d object of tensors/numbers/containers, loaded without unpickling arbitrary objects."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file for the user
        raise CptlabError(f"{path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None


def apply_retention(root: str | Path, keep_last: int | None, pinned: set[int]) -> list[Path]:
    """Delete old unpinned checkpoints beyond the newest `keep_last`; never the newest complete one."""
    if keep_last is None:
        return []
    found = list_checkpoints(root)
    if not found:
        return []
    newest = found[-1][0]
    unpinned = [(s, p) for s, p in found if s not in pinned and s != newest]
    # the newest counts towards keep_last when it is itself unpinned
    budget = keep_last - (1 if newest not in pinned else 0)
    doomed = unpinned[: max(len(unpinned) - max(budget, 0), 0)]
    for _, p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return [p for _, p in doomed]


def checkpoint_steps(total_steps: int, tokens_per_step: int, interval: int | None, at_tokens: list[int] | None,
                     log_spaced: int | None, at_end: bool) -> tuple[set[int], set[int]]:
    """(all checkpoint steps, pinned steps that retention keeps). Steps are 1-based optimizer steps.

    A token target t becomes the first step whose cumulative tokens reach t (ceil(t / tokens_per_step));
    `log_spaced` = N targets spaced evenly in log(tokens) from one step's tokens to the run's total.
    """
    import numpy as np

    pinned: set[int] = set()
    for t in at_tokens or []:
        pinned.add(min(max(1, -(-int(t) // tokens_per_step)), total_steps))
    if log_spaced:
        if log_spaced == 1:
            pinned.add(total_steps)
        else:
            targets = np.geomspace(tokens_per_step, total_steps * tokens_per_step, log_spaced)
            pinned.update(min(max(1, int(round(t / tokens_per_step))), total_steps) for t in targets)
    if at_end:
        pinned.add(total_steps)
    steps = set(pinned)
    if interval:
        steps.update(range(interval, total_steps + 1, interval))
    return steps, pinned
