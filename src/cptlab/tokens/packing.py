"""Packing: cut one token array into fixed windows and visit them in a seeded order, epoch after epoch.

With N tokens and sequence length L, window k is `ids[k*L : k*L + L + 1]` for k = 0 .. (N-1)//L - 1:
consecutive windows share one boundary token, so within an epoch every token after the first is a target
exactly once (the tail that does not fill a window is left out). Documents are packed back to back with EOS
between them; no padding. An epoch visits the windows in a permutation drawn from (seed, epoch), so the
order is reproducible and the state is just {epoch, index} (plain JSON).

`position_ids` restart at 0 at the window start and after every EOS (the token after an EOS begins a new
document), so a model that supports document masking (flash-attention varlen / position-id based masks)
attends only within documents, and positions never exceed L - 1.
"""

from __future__ import annotations

import numpy as np

from cptlab.errors import CptlabError


def window_order(seed: int, epoch: int, num_windows: int) -> np.ndarray:
    """The order of the windows in an epoch: a permutation of 0..num_windows-1 fixed by (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    return rng.permutation(num_windows)


def document_positions(doc_offsets: np.ndarray, start: int, length: int) -> np.ndarray:
    """Position ids for tokens start..start+length-1: 0 at `start` and at every document start after it."""
    lo = int(np.searchsorted(doc_offsets, start, side="right"))
    hi = int(np.searchsorted(doc_offsets, start + length, side="left"))
    starts = np.asarray(doc_offsets[lo:hi], dtype=np.int64) - start  # document starts inside the window
    last_start = np.zeros(length, dtype=np.int64)
    last_start[starts] = starts
    np.maximum.accumulate(last_start, out=last_start)
    return np.arange(length, dtype=np.int64) - last_start


class PackedSource:
    """Fixed-length windows over one `TokenArray` (anything with `.ids` and `.doc_offsets`), in seeded order.

    `next()` returns (window ids int64 [L+1], position_ids int64 [L]) and advances; after the last window of
    an epoch the next epoch (a new permutation) begins. `state_dict()` / `load_state_dict()` save and restore
    the position exactly.
    """

    def __init__(self, tokens, seq_len: int, seed: int = 0, name: str | None = None):
        if int(seq_len) < 1:
            raise CptlabError(f"seq_len {seq_len}: must be at least 1")
        if int(seed) < 0:
            raise CptlabError(f"seed {seed}: must be non-negative")
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        manifest = getattr(tokens, "manifest", None) or {}
        self.name = name or (f"{manifest['domain']}/{manifest['split']}" if "domain" in manifest else "tokens")
        n = int(tokens.ids.shape[0])
        self.num_windows = (n - 1) // self.seq_len if n > 0 else 0
        if self.num_windows < 1:
            where = getattr(tokens, "path", self.name)
            raise CptlabError(f"token cache {where}: {n} tokens, too few for one sequence of {self.seq_len}+1 "
                              f"tokens; use a shorter seq_len or more data")
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens in one epoch (num_windows * seq_len)."""
        return self.num_windows * self.seq_len

    @property
    def epochs_completed(self) -> int:
        return self.epoch

    @property
    def epoch_progress(self) -> float:
        """Epochs seen so far, with the fraction of the current one (e.g. 2.25)."""
        return self.epoch + self.index / self.num_windows

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = window_order(self.seed, epoch, self.num_windows)
            self._order_epoch = epoch
        return self._order

    def next_window(self) -> tuple[int, int]:
        """Advance by one window; return (epoch, window index k) of the window taken."""
        epoch, k = self.epoch, int(self.order(self.epoch)[self.index])
        self.index += 1
        if self.index == self.num_windows:
            self.epoch += 1
            self.index = 0
        return epoch, k

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [L+1], position_ids int64 [L]) of window k."""
        if not 0 <= k < self.num_windows:
            raise IndexError(f"window {k} out of range (0..{self.num_windows - 1})")
        start = k * self.seq_len
        ids = np.asarray(self.tokens.ids[start : start + self.seq_len + 1], dtype=np.int64)
        return ids, document_positions(self.tokens.doc_offsets, start, self.seq_len)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        return self.window(self.next_window()[1])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "num_windows": self.num_windows,
                "seq_len": self.seq_len, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_windows", "seq_len", "seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise CptlabError(f"data state for {self.name}: saved with {key}={state[key]}, now "
                                  f"{getattr(self, key)} (the token cache or the data config changed); "
                                  f"start a new run instead of resuming")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.num_windows:
            raise CptlabError(f"data state for {self.name}: invalid position epoch={epoch} index={index}")
        self.epoch, self.index = epoch, index
