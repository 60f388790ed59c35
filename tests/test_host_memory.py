"""keep_host_memory: freed host memory is reused instead of being page-faulted back in (Linux/glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from cptlab.host_memory import keep_host_memory
    assert keep_host_memory()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a step: activations allocated and written in the forward pass, all freed after backward
    acts = [np.full(2 * 2**20, 1.0, dtype=np.float32) for _ in range(6)]
    del acts
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_not_refaulted():
    pages = 6 * 2 * 2**20 * 4 // 4096  # one step's 48 MB of buffers, in 4 KiB pages

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    default, kept = faults("default"), faults("keep")
    assert default >= 3 * pages  # glibc gives freed heap tops back: later steps fault them in again (~5 steps here)
    assert kept <= pages  # the first step faults its buffers in; the later steps reuse those pages


def test_off_switch_is_a_config_field():
    from cptlab.train.config import TrainConfig

    cfg = TrainConfig.model_validate({"model": {"name": "llama-micro"}, "tokenizer": "t", "max_steps": 1,
                                      "data": {"cache_dir": "c", "sources": {"a": 1.0}}, "out_dir": "o",
                                      "keep_host_memory": False})
    assert cfg.keep_host_memory is False
