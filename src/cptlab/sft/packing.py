"""Packing SFT examples into rows of `seq_len` positions, epoch after epoch, in a seeded order.

An example of n tokens takes n - 1 positions (inputs ids[:-1], labels ids[1:], the label -100 where the
token is not a response token). Each epoch visits the examples in a permutation drawn from (seed, epoch) and
fills rows first-come: an example goes into the current row when it fits, else it starts the next one. Examples
are never split across rows (a response without its prompt teaches nothing), the rest of a row is padding
(label -100), and position ids restart at 0 for every example, so with document masking attention stays
inside each example (transformers builds the block mask from the position ids). `packing: false` puts one
example in each row.

The state is {epoch, index} (plain JSON), as for pretraining data: a restored sampler gives exactly the rows the
uninterrupted one would have. Every rank builds the same global batch and keeps its contiguous slice; the
number of target tokens of the whole global batch is known to every rank without communication.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cptlab.errors import CptlabError
from cptlab.tokens.packing import window_order

STATE_VERSION = 1


@dataclass
class SFTBatch:
    input_ids: "torch.LongTensor"  # [b, L]  # noqa: F821
    position_ids: "torch.LongTensor"  # [b, L]  # noqa: F821
    labels: "torch.LongTensor"  # [b, L]: -100 on prompt tokens, padding and the first token of each example
    sources: list[str]
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # (source, epoch, row) per row
    global_targets: int = 0  # labels != -100 over the whole global batch (all ranks)


def pack_rows(lengths: np.ndarray, order: np.ndarray, seq_len: int, packing: bool = True) -> list[list[int]]:
    """Example indices of each row, visiting `order`; lengths are positions (tokens - 1), all <= seq_len."""
    rows: list[list[int]] = []
    used = seq_len + 1  # forces a new row for the first example
    for i in order.tolist():
        n = int(lengths[i])
        if not packing or used + n > seq_len:
            rows.append([i])
            used = n
        else:
            rows[-1].append(i)
            used += n
    return rows


class SFTRows:
    """The packed rows of one SFT file: `row(k) -> (input_ids, position_ids, labels)` as int64 [L] arrays."""

    def __init__(self, examples, seq_len: int, pad_id: int, name: str = "sft"):
        self.examples = examples
        self.seq_len = int(seq_len)
        self.pad_id = int(pad_id)
        self.name = name
        self.lengths = np.array([e.positions for e in examples], dtype=np.int64)
        self.targets = np.array([e.targets for e in examples], dtype=np.int64)
        if len(examples) == 0:
            raise CptlabError(f"{name}: no examples")
        if self.lengths.max() > self.seq_len:
            raise CptlabError(f"{name}: an example takes {self.lengths.max()} positions, more than seq_len "
                              f"{self.seq_len}")

    def build(self, rows: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        L = self.seq_len
        ids = np.full(L, self.pad_id, dtype=np.int64)
        labels = np.full(L, -100, dtype=np.int64)
        pos = np.zeros(L, dtype=np.int64)
        at = 0
        for i in rows[k]:
            e = self.examples[i]
            n = len(e.ids) - 1
            ids[at : at + n] = e.ids[:-1]
            labels[at : at + n] = np.where(e.target[1:], e.ids[1:], -100)
            pos[at : at + n] = np.arange(n)
            at += n
        pos[at:] = np.arange(L - at)  # padding: one more "document" that nothing attends to from outside
        return ids, pos, labels

    def row_targets(self, rows: list[list[int]], k: int) -> int:
        return int(self.targets[rows[k]].sum())


class SFTSampler:
    """Seeded epochs of packed rows over one set of examples; the trainer's data source for `cptlab sft`."""

    def __init__(self, rows: SFTRows, seed: int = 0, packing: bool = True):
        self.data = rows
        self.seed = int(seed)
        self.packing = bool(packing)
        self.name = rows.name
        self.names = [rows.name]
        self.seq_len = rows.seq_len
        self.epoch = 0
        self.index = 0
        self.rows_seen = 0
        self.targets_seen = 0
        self._epoch_rows: tuple[int, list[list[int]]] | None = None
        self.num_rows = len(self.rows(0))  # differs a little from epoch to epoch (packing order)

    def rows(self, epoch: int) -> list[list[int]]:
        if self._epoch_rows is None or self._epoch_rows[0] != epoch:
            order = window_order(self.seed, epoch, len(self.data.examples))
            self._epoch_rows = (epoch, pack_rows(self.data.lengths, order, self.seq_len, self.packing))
        return self._epoch_rows[1]

    def next_row(self) -> tuple[int, int]:
        """Advance by one row; (epoch, row index) of the row taken."""
        epoch, k = self.epoch, self.index
        self.index += 1
        if self.index == len(self.rows(epoch)):
            self.epoch, self.index = epoch + 1, 0
        return epoch, k

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> SFTBatch:
        import torch

        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise CptlabError(f"next_batch: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        per_rank = batch_size // world_size
        lo, hi = rank * per_rank, (rank + 1) * per_rank
        ids, pos, labels, windows, total = [], [], [], [], 0
        for j in range(batch_size):
            epoch, k = self.next_row()
            rows = self.rows(epoch)
            total += self.data.row_targets(rows, k)
            if lo <= j < hi:
                a, b, c = self.data.build(rows, k)
                ids.append(a)
                pos.append(b)
                labels.append(c)
                windows.append((self.name, epoch, k))
        self.rows_seen += batch_size
        self.targets_seen += total
        t = torch.from_numpy
        return SFTBatch(t(np.stack(ids)), t(np.stack(pos)), t(np.stack(labels)), [self.name] * per_rank,
                        windows, total)

    @property
    def max_id(self) -> int:
        return max(int(e.ids.max()) for e in self.data.examples)

    @property
    def tokens_by_source(self) -> dict[str, int]:
        """Positions drawn (rows * seq_len, padding included), as for pretraining data."""
        return {self.name: self.rows_seen * self.seq_len}

    @property
    def epochs_by_source(self) -> dict[str, float]:
        return {self.name: self.epoch + self.index / len(self.rows(self.epoch))}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "kind": "sft", "epoch": self.epoch, "index": self.index,
                "rows_seen": self.rows_seen, "targets_seen": self.targets_seen, "seed": self.seed,
                "seq_len": self.seq_len, "examples": len(self.data.examples), "packing": self.packing}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sft" or state.get("version") != STATE_VERSION:
            raise CptlabError("data state: not saved by an SFT run (version or kind differ); start a new run")
        for key, have in (("seed", self.seed), ("seq_len", self.seq_len), ("examples", len(self.data.examples)),
                          ("packing", self.packing)):
            if state[key] != have:
                raise CptlabError(f"data state: saved with {key}={state[key]}, now {have} (the SFT data or config "
                                  f"changed); start a new run instead of resuming")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.rows_seen, self.targets_seen = int(state["rows_seen"]), int(state["targets_seen"])


class SFTEvalRows:
    """Validation rows in file order (packed the same way), for the trainer's periodic evaluation."""

    def __init__(self, rows: SFTRows, packing: bool = True):
        self.data = rows
        self._rows = pack_rows(rows.lengths, np.arange(len(rows.examples)), rows.seq_len, packing)
        self.num_windows = len(self._rows)

    def rows(self, ks: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        built = [self.data.build(self._rows, k) for k in ks]
        return tuple(np.stack([b[i] for b in built]) for i in range(3))
