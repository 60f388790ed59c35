"""Mixture sampler: which source each packed sequence comes from, so that token counts follow the weights.

The choice is smooth weighted round-robin in exact integer arithmetic: every sequence each source gains its
weight, the source with the most credit is chosen and pays the total. Over any prefix of n sequences a source
with weight w has been chosen within (n*w - (k-1), n*w + 1) times (k = sources with weight > 0; for two
sources: within 1). No randomness decides the source; the seed breaks ties and orders each source's windows
(`PackedSource`). All sequences have the same length, so token counts follow the same bound.

`state_dict()` is plain JSON (ints, floats, strings): a sampler restored from it continues with exactly the
batches the uninterrupted one would have produced. For data parallelism every rank builds the same global
batch and keeps its slice (`next_batch(B, rank, world_size)`), so ranks never overlap or drift apart.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from cptlab.errors import CptlabError
from cptlab.tokens.packing import PackedSource

STATE_VERSION = 1
_SCALE = 1 << 40  # weights become integers summing to about this: exact, no floating-point drift


@dataclass
class Batch:
    input_ids: "torch.LongTensor"  # [B, L+1]: inputs are [:, :-1], labels [:, 1:]  # noqa: F821
    position_ids: "torch.LongTensor"  # [B, L]: 0 at each window start and after every EOS  # noqa: F821
    sources: list[str]  # source name of each row
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # (source, epoch, window k) per row

    @property
    def num_tokens(self) -> int:
        """Target tokens in this batch (B * L)."""
        return int(self.position_ids.numel())


def source_seed(seed: int, name: str) -> int:
    """A per-source seed derived from the run seed and the source name (stable across Python versions)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))]).generate_state(1)[0])


class MixtureSampler:
    """Draws packed sequences from several `PackedSource`s with given weights (normalised; 0 allowed)."""

    def __init__(self, sources: dict[str, PackedSource], weights: dict[str, float], seed: int = 0):
        if not sources:
            raise CptlabError("data mixture: no sources")
        missing = sorted(set(sources) - set(weights))
        extra = sorted(set(weights) - set(sources))
        if missing or extra:
            raise CptlabError(f"data mixture: weights for {', '.join(extra)} name no source" if extra else
                              f"data mixture: no weight for source(s) {', '.join(missing)}")
        for name, w in weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise CptlabError(f"data mixture: weight of {name} is {w!r}; weights must be finite and >= 0")
        total = float(sum(weights.values()))
        if total <= 0:
            raise CptlabError("data mixture: all weights are 0")
        seq_lens = {s.seq_len for s in sources.values()}
        if len(seq_lens) != 1:
            raise CptlabError(f"data mixture: sources have different seq_len {sorted(seq_lens)}")
        prints = {n: (getattr(s.tokens, "manifest", None) or {}).get("tokenizer_fingerprint") for n, s in
                  sources.items()}
        if len({p for p in prints.values() if p}) > 1:
            raise CptlabError("data mixture: the token caches were made with different tokenizers: "
                              + ", ".join(f"{n} {p[:12]}" for n, p in prints.items() if p))
        self.sources = dict(sorted(sources.items()))
        self.names = list(self.sources)
        self.seq_len = seq_lens.pop()
        self.seed = int(seed)
        self.weights = {n: float(weights[n]) / total for n in self.names}
        self._int_weights = {n: (max(1, round(self.weights[n] * _SCALE)) if self.weights[n] > 0 else 0)
                             for n in self.names}
        self._int_total = sum(self._int_weights.values())
        tie = np.random.Generator(np.random.PCG64(int(seed))).permutation(len(self.names))
        self._tie_rank = {n: int(r) for n, r in zip(self.names, tie)}
        self._active = [n for n in self.names if self._int_weights[n] > 0]
        self.credit = {n: 0 for n in self.names}
        self.sequences_by_source = {n: 0 for n in self.names}

    @classmethod
    def from_caches(cls, cache_dir, weights: dict[str, float], seq_len: int, seed: int = 0,
                    split: str = "train") -> "MixtureSampler":
        """Sources named by domain (split `split`) or `domain/split` in one token cache."""
        from cptlab.tokens.token_cache import open_tokens

        sources = {}
        for name in weights:
            domain, _, sp = name.partition("/")
            tokens = open_tokens(cache_dir, domain, sp or split)
            sources[name] = PackedSource(tokens, seq_len, source_seed(seed, name), name=name)
        return cls(sources, weights, seed)

    # ------------------------------------------------------------------------------------- drawing

    def choose(self) -> str:
        """The source of the next sequence (advances the round-robin credit)."""
        for n in self._active:
            self.credit[n] += self._int_weights[n]
        best = max(self._active, key=lambda n: (self.credit[n], -self._tie_rank[n]))
        self.credit[best] -= self._int_total
        self.sequences_by_source[best] += 1
        return best

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """The next global batch of `batch_size` sequences; this rank's contiguous slice of it is returned.

        Every rank must call this with the same arguments in the same order: all advance identically.
        """
        import torch

        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise CptlabError(f"next_batch: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise CptlabError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        per_rank = batch_size // world_size
        lo, hi = rank * per_rank, (rank + 1) * per_rank
        rows, positions, names, windows = [], [], [], []
        for j in range(batch_size):
            name = self.choose()
            epoch, k = self.sources[name].next_window()
            if lo <= j < hi:
                ids, pos = self.sources[name].window(k)
                rows.append(ids)
                positions.append(pos)
                names.append(name)
                windows.append((name, epoch, k))
        return Batch(torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(positions)), names, windows)

    # ----------------------------------------------------------------------------------- accounting

    @property
    def tokens_by_source(self) -> dict[str, int]:
        """Target tokens drawn per source, over the global batches (sequences * seq_len)."""
        return {n: c * self.seq_len for n, c in self.sequences_by_source.items()}

    @property
    def epochs_by_source(self) -> dict[str, float]:
        """Epochs seen per source, with the fraction of the current one (3.5 = three full epochs and half)."""
        return {n: s.epoch_progress for n, s in self.sources.items()}

    @property
    def epochs_completed_by_source(self) -> dict[str, int]:
        return {n: s.epochs_completed for n, s in self.sources.items()}

    @property
    def sequences(self) -> int:
        return sum(self.sequences_by_source.values())

    # ----------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "weights": dict(self.weights),
            "credit": dict(self.credit),
            "sequences_by_source": dict(self.sequences_by_source),
            "sources": {n: s.state_dict() for n, s in self.sources.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by `state_dict()`; the sources and weights must be the same."""
        if state.get("version") != STATE_VERSION:
            raise CptlabError(f"data state: version {state.get('version')!r}, expected {STATE_VERSION}")
        if sorted(state["sources"]) != self.names:
            raise CptlabError(f"data state: saved for sources {', '.join(sorted(state['sources']))}, "
                              f"now {', '.join(self.names)}; start a new run instead of resuming")
        changed = [n for n in self.names if abs(float(state["weights"][n]) - self.weights[n]) > 1e-12]
        if changed or int(state["seq_len"]) != self.seq_len or int(state["seed"]) != self.seed:
            raise CptlabError("data state: saved with other " + (
                f"weights for {', '.join(changed)}" if changed else "seq_len or seed")
                + "; start a new run instead of resuming")
        for n in self.names:
            self.sources[n].load_state_dict(state["sources"][n])
        self.credit = {n: int(state["credit"][n]) for n in self.names}
        self.sequences_by_source = {n: int(state["sequences_by_source"][n]) for n in self.names}
