"""Benchmark: `cptlab merge` streams tensor by tensor — time and peak memory against loading every model whole.

    python benchmarks/bench_merge.py

Three random Llama checkpoints (~26 M parameters, ~105 MB of fp32 safetensors each) are merged linearly
(weights 0.2, 0.3, 0.5) four ways, each in a fresh process: (1) `merge_models` with the default shard size
(the output is collected until 4 GB, so here it is held whole), (2) `merge_models` with 16 MB shards (the output
is written as it goes), (3) `safetensors.torch.load_file` of every model (memory-mapped), then the weighted sum,
(4) the usual script: `from_pretrained` every model, then sum the state dicts.
Peak memory is the process's anonymous resident memory (RssAnon, sampled every 2 ms) above what it held after
imports; the total RSS (which also counts the mapped pages of the input files) is shown beside it. All three outputs are
checked to be equal. Writes benchmarks/results/merge.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

CHILD = r"""
import json, sys, threading, time
import torch
from safetensors.torch import load_file, save_file

def mem_kb():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out["RssAnon"], out["VmRSS"]

mode, out, models = sys.argv[1], sys.argv[2], sys.argv[3:]
weights = [0.2, 0.3, 0.5]
from cptlab.diagnose.merge import merge_models  # imports before the baseline
base = mem_kb()
peak = list(base)
stop = threading.Event()
def sample():
    while not stop.is_set():
        a, r = mem_kb()
        peak[0], peak[1] = max(peak[0], a), max(peak[1], r)
        time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
t0 = time.perf_counter()
if mode == "stream-default":
    merge_models(models, "linear", out, weights=weights)
elif mode == "stream-16MB":
    merge_models(models, "linear", out, weights=weights, shard_bytes=16 * 1024**2)
elif mode == "naive-from-pretrained":
    from transformers import AutoModelForCausalLM
    sds = [AutoModelForCausalLM.from_pretrained(m).state_dict() for m in models]
    merged = {k: sum(w * sd[k].float() for w, sd in zip(weights, sds)) for k in sds[0]
              if k != "lm_head.weight"}
    import os
    os.makedirs(out, exist_ok=True)
    save_file(merged, out + "/model.safetensors")
else:
    sds = [load_file(m + "/model.safetensors") for m in models]
    merged = {k: sum(w * sd[k].float() for w, sd in zip(weights, sds)) for k in sds[0]}
    import os
    os.makedirs(out, exist_ok=True)
    save_file(merged, out + "/model.safetensors")
elapsed = time.perf_counter() - t0
stop.set(); t.join()
print(json.dumps({"seconds": elapsed, "peak_mb": (peak[0] - base[0]) / 1024,
                  "peak_rss_mb": (peak[1] - base[1]) / 1024}))
"""


def make_models(root: Path, n: int = 3) -> list[str]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True)
    out = []
    for i in range(n):
        torch.manual_seed(i)
        model = LlamaForCausalLM(cfg)
        path = root / f"m{i}"
        model.save_pretrained(path, safe_serialization=True)
        out.append(str(path))
    return out


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    d = {}
    for f in sorted(path.glob("*.safetensors")):
        d.update(load_file(f))
    return d


def main() -> int:
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        root = Path(tmp)
        models = make_models(root)
        size_mb = sum(f.stat().st_size for f in Path(models[0]).glob("*.safetensors")) / 1e6
        n_params = sum(t.numel() for t in tensors(Path(models[0])).values())
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        for mode in ("stream-default", "stream-16MB", "naive-load-all", "naive-from-pretrained"):
            out = root / f"out-{mode}"
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(out), *models], env=env,
                                  capture_output=True, text=True, check=True)
            rows.append((mode, json.loads(proc.stdout.strip().splitlines()[-1]), out))
        ref = tensors(rows[2][2])
        equal = all(
            all(torch.allclose(tensors(out)[k].float(), ref[k], atol=1e-6) for k in ref) for _, _, out in rows)
    described = {
        "stream-default": "`merge_models` (default 4 GB shards: output held whole)",
        "stream-16MB": "`merge_models(..., shard_bytes=16 MB)`",
        "naive-load-all": "naive: `safetensors.load_file` every model (memory-mapped), then sum",
        "naive-from-pretrained": "naive: `from_pretrained` every model, then sum its state dicts",
    }
    lines = [
        "## Model merging (streaming)",
        "",
        "`python benchmarks/bench_merge.py` — linear merge of 3 random Llama checkpoints "
        f"({n_params / 1e6:.1f} M parameters, {size_mb:.0f} MB fp32 safetensors each); each way in a fresh "
        f"process; {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Peak memory: anonymous resident memory (RssAnon, sampled every 2 ms) above the process's after imports — "
        "what merging itself allocates; the total RSS also counts the memory-mapped pages of the input files "
        "that were read (clean page cache the kernel can drop, so it grows with the inputs' size in every way).",
        "",
        "| way | time (s) | peak anonymous memory (MB) | peak anonymous / one model | peak total RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, r, _ in rows:
        lines.append(f"| {described[mode]} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r['peak_mb'] / size_mb:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Outputs equal: {'yes' if equal else 'NO'}.", ""]
    text = "\n".join(lines)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "merge.md").write_text(text)
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
