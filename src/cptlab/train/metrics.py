"""metrics.jsonl (one JSON object per optimizer step, plus eval records), TensorBoard, and the spike detector.

Train records: {"step", "loss", "lr", "tokens", "tokens_by_source", "epochs_by_source", "grad_norm",
"skipped", "spike", "z", "time"} (+ "reg_loss" with a regularizer). Eval records: {"step", "split", "domain",
"loss", "tokens"}. Steps are 1-based: record `step: n` is written after the n-th optimizer step.
On resume the file is cut back to the checkpoint's step, so it continues without duplicate or missing steps.
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

from cptlab.fsutil import atomic_write_text


def read_metrics(path: str | Path) -> list[dict]:
    """All complete records of a metrics.jsonl (a torn last line, from a killed writer, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep the records with step <= `step` (atomically); return how many were kept."""
    path = Path(path)
    keep = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(keep)


class MetricsWriter:
    """Appends records to metrics.jsonl (flushed per line) and mirrors scalars to TensorBoard when asked."""

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._f = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                from cptlab.console import log

                log("tensorboard is not installed: no TensorBoard logs (metrics.jsonl has everything)")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            step = record["step"]
            if "domain" in record:
                self._tb.add_scalar(f"eval/{record['split']}/{record['domain']}", record["loss"], step)
            else:
                for key in ("loss", "lr", "grad_norm", "reg_loss"):
                    v = record.get(key)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        self._tb.add_scalar(f"train/{key}", v, step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class SpikeDetector:
    """Rolling z-score of the loss over the last `window` finite losses; state is a plain list (resumable)."""

    def __init__(self, window: int = 50, z: float = 4.0, history: list[float] | None = None):
        self.window, self.threshold = window, z
        self.history: deque[float] = deque(history or [], maxlen=window)

    def update(self, loss: float) -> tuple[bool, float | None]:
        """(is a spike, z-score or None while the window fills) for this loss; then add it to the window."""
        z = None
        if len(self.history) >= max(10, self.window // 2):
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (n - 1))
            z = (loss - mean) / std if std > 0 else 0.0
        spike = z is not None and z > self.threshold
        if math.isfinite(loss):
            self.history.append(loss)
        return spike, z
