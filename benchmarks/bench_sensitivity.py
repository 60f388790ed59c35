"""Benchmark: what one sensitivity measurement (θ + γ·ε) costs, and what the two revert methods cost and keep.

    python benchmarks/bench_sensitivity.py

Model: the `llama-7m` preset (random init) with a 4096-token BPE trained on stdlib text; held-out data: 16,384
tokens of stdlib modules in windows of 256. Timed (median of 3): the unperturbed held-out loss, perturbing all 2-D
tensors at the init scale and restoring them (no evaluation) with `copy` and with `subtract`, and one full
(γ, seed) point (perturb, evaluate, restore). Also reported: the extra host memory `copy` holds (the perturbed
tensors' bytes) and how many weights `subtract` leaves not bit-identical. One torch thread.
Writes benchmarks/results/sensitivity.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

REPEATS = 3


def _texts(limit_bytes: int = 3_000_000) -> list[str]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for f in sorted(root.glob("*.py")):
        try:
            t = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        t = "\n".join(line for line in t.splitlines() if line.strip())
        out.append(t)
        total += len(t)
        if total > limit_bytes:
            break
    return out


def _median(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    import torch

    from cptlab.diagnose.sensitivity import (
        SensitivitySettings,
        held_out_tokens,
        heldout_loss,
        measure_model,
        noise_plan,
        parameters_fingerprint,
        perturbed,
    )
    from cptlab.model import build_preset, count_parameters
    from cptlab.tokens.tokenizer import load_tokenizer, train_bpe

    torch.set_num_threads(1)
    texts = _texts()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_bpe(texts[: len(texts) // 2], vocab_size=4096, out_dir=tmp / "tok")
        tok = load_tokenizer(tmp / "tok")
        corpus = tmp / "corpus" / "stdlib"
        corpus.mkdir(parents=True)
        half = len(texts) // 2
        for split, part in (("train", texts[:half]), ("valid", texts[half:]), ("test", texts[half:])):
            (corpus / f"{split}.txt").write_text("\n\n".join(part) + "\n", encoding="utf-8")
        data = held_out_tokens(str(tmp / "corpus"), tok, split="valid", max_tokens=16384, seq_len=256)
        model = build_preset("llama-7m", tok, seed=0)
        n_params = count_parameters(model)
        plan = noise_plan(model, "init", "2d")
        perturbed_bytes = sum(p.numel() * p.element_size() for _, p in plan)
        base = _median(lambda: heldout_loss(model, data))

        def cycle(method):
            with perturbed(plan, 1.0, seed=1, revert=method):
                pass

        t_copy = _median(lambda: cycle("copy"))
        t_sub = _median(lambda: cycle("subtract"))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        fp = parameters_fingerprint(model)
        cycle("subtract")
        changed = sum(int((p.view(torch.int32) != before[n].view(torch.int32)).sum())
                      for n, p in model.named_parameters())
        max_err = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
        assert parameters_fingerprint(model) == fp
        cycle("copy")
        copy_exact = parameters_fingerprint(model) == fp
        settings = SensitivitySettings(gammas=[1.0], seeds=1)
        point = _median(lambda: measure_model(model, data, settings)) - base  # one (γ, seed) beyond the base loss

    tokens = sum(data.tokens.values())
    lines = [
        "## Sensitivity (θ + γ·ε)",
        "",
        f"`python benchmarks/bench_sensitivity.py` — median of {REPEATS}; {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared), one torch thread, Python {platform.python_version()}, torch "
        f"{torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"llama-7m, {n_params:,} parameters, {len(plan)} perturbed 2-D tensors ({perturbed_bytes / 1e6:.1f} MB); "
        f"held-out: {tokens:,} tokens in windows of {data.seq_len}.",
        "",
        "| what | seconds |",
        "|---|---:|",
        f"| held-out loss, unperturbed ({tokens:,} tokens) | {base:.2f} |",
        f"| perturb + restore, revert=copy | {t_copy:.3f} |",
        f"| perturb + restore, revert=subtract (noise drawn twice) | {t_sub:.3f} |",
        f"| one (γ, seed) point: perturb, evaluate, restore | {point:.2f} |",
        "",
        f"`copy` holds {perturbed_bytes / 1e6:.1f} MB of host memory while perturbed and restores bit-identical "
        f"weights: {'yes' if copy_exact else 'NO'}. `subtract` holds nothing extra and left {changed:,} of "
        f"{n_params:,} weights not bit-identical at γ = 1 (largest difference {max_err:.2e}; exactness is not "
        "guaranteed in general).",
        f"A 5-γ × 5-seed measurement of one checkpoint on these tokens: ~{base + 25 * point:.0f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "sensitivity.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
