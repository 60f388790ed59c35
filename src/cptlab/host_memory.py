"""Host (CPU) memory: let glibc's malloc keep what it frees instead of page-faulting it back in every step.

glibc gives every large block (>= 128 KB at first) its own mmap and returns freed heap tops to the kernel, so a
training step or an evaluation batch page-faults its activations back in (measured: ~25,000 minor faults and
~40 ms of system time per step for the 7 M-parameter benchmark model on CPU; 976,000 faults for an evaluation of
~100,000 tokens). CUDA has a caching allocator; on the host we ask malloc to keep what it frees: blocks up to
32 MiB (glibc's maximum) come from the heap, and free heap below 1 GiB is not trimmed. The peak resident memory
does not grow; freed memory is reused instead of being returned and faulted in again. The setting is process-wide,
so it is made where the process is ours: a training run on CPU (`TrainConfig.keep_host_memory`, default on) and
the `cptlab eval` command; `cptlab.evaluate.perplexity` called as a library function leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_host_memory() -> bool:
    """Tune glibc's malloc to reuse freed memory (Linux/glibc only; elsewhere a no-op). True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: leave the allocator alone
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))
