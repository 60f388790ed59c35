"""`cptlab sensitivity`: how much held-out loss rises when each checkpoint's weights are nudged (θ + γ·ε)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("sensitivity")
    def sensitivity(
        model: list[str] = typer.Option(..., "--model", help="A model or checkpoint dir (repeat), or a training "
                                        "run dir: all its complete checkpoints/step-*/."),
        corpus: str = typer.Option(..., "--corpus", help="Corpus root (M2D2 layout) with the held-out split."),
        gammas: str = typer.Option("1e-3,3e-3,1e-2,3e-2,1e-1", "--gammas", help="Comma-separated noise sizes γ."),
        seeds: int = typer.Option(5, "--seeds", help="Noise draws per γ (mean, std and standard error over them)."),
        noise_scale: str = typer.Option("init", "--noise-scale", help="ε's std per tensor: init (the model's "
                                        "initializer std) | rms (the tensor's RMS) | absolute (1)."),
        params: str = typer.Option("2d", "--params", help="Which tensors: 2d (matrices) | all."),
        split: str = typer.Option("valid", "--split", help="Held-out split to measure the loss on."),
        domains: Optional[list[str]] = typer.Option(None, "--domains", help="Domains (repeat or comma-separate); "
                                                    "default: every domain with the split."),
        max_tokens: int = typer.Option(16384, "--max-tokens", help="Scored tokens per domain (a fixed budget)."),
        seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Window length (default min(context, 256))."),
        tokens: Optional[str] = typer.Option(None, "--tokens", help="Tokens seen by each --model, comma-separated "
                                             "(default: read from each checkpoint's training state)."),
        revert: str = typer.Option("copy", "--revert", help="copy (bit-exact) | subtract (no extra memory)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default cpu)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 weights."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: the first "
                                                "model's)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result JSON here."),
        quiet: bool = typer.Option(False, "--quiet", help="No logs or progress."),
    ) -> None:
        """Perplexity change after θ + γ·ε per checkpoint (arXiv 2503.19206), ordered by tokens seen.

        Example: cptlab sensitivity --model runs/pre --corpus corpus --gammas 1e-2,3e-2,1e-1 --seeds 5 --json s.json
        """
        from cptlab.console import set_quiet
        from cptlab.diagnose.checkpoint_series import resolve_series
        from cptlab.diagnose.sensitivity import SensitivitySettings, parse_gammas, run_sensitivity
        from cptlab.errors import UsageError
        from cptlab.fsutil import atomic_write_json

        if quiet:
            set_quiet(True)
        token_list = None
        if tokens:
            try:
                token_list = [int(float(t)) for t in tokens.split(",") if t.strip()]
            except ValueError:
                raise UsageError(f"--tokens {tokens!r}: expected comma-separated integers") from None
        doms = [d for item in (domains or []) for d in item.split(",") if d.strip()] or None
        settings = SensitivitySettings(gammas=parse_gammas(gammas), seeds=seeds, noise_scale=noise_scale,
                                       params=params, revert=revert, split=split, domains=doms,
                                       max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size)
        settings.check()
        series = resolve_series(model, tokens=token_list)
        result = run_sensitivity(series, corpus, settings, tokenizer_dir=tokenizer, device=device, dtype=precision)
        if json_out is not None:
            atomic_write_json(json_out, result)
        print_table(result)


def print_table(result: dict) -> None:
    """Δ log-perplexity (mean ± standard error over seeds) per checkpoint and γ, on stdout."""
    import sys

    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    t = Table(title=f"Sensitivity: Δ log-perplexity after θ + γ·ε ({s['noise_scale']} scale, {s['params']} "
                    f"tensors, {s['seeds']} seeds, {s['split']} split)")
    t.add_column("checkpoint")
    t.add_column("tokens", justify="right")
    t.add_column("tokens/param", justify="right")
    t.add_column("PPL", justify="right")
    for g in s["gammas"]:
        t.add_column(f"γ={g:g}", justify="right")
    for m in result["models"]:
        cells = []
        for row in m["gammas"]:
            d = row["delta_loss"]
            cells.append(f"{d['mean']:+.4f}" + (f" ± {d['sem']:.4f}" if d["sem"] is not None else ""))
        tpp = m.get("tokens_per_parameter")
        t.add_row(m["label"], "?" if m.get("tokens") is None else f"{m['tokens']:,}",
                  "?" if tpp is None else f"{tpp:.3g}", f"{m['base']['ppl']:.2f}", *cells)
    Console(width=None if sys.stdout.isatty() else 60 + 22 * len(s["gammas"])).print(t)
