"""`cptlab train CONFIG.yaml [--set key=value ...] [--resume] [--quiet]`: one continued-pretraining run."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: str = typer.Argument(..., help="Training config (YAML): model, tokenizer, data, optimizer, "
                                               "schedule, precision, batch, steps, eval, checkpoint, out_dir..."),
        set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set optimizer.lr=1e-4 "
                                                           "(repeatable; values parse as YAML)."),
        resume: bool = typer.Option(False, "--resume", help="Continue this run (out_dir) from its newest complete "
                                                            "checkpoint: weights, optimizer, RNG and data position."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Train or continue pretraining a causal LM on a mixture of token caches. Writes OUT/metrics.jsonl (one
        record per optimizer step, plus eval records), OUT/checkpoints/step-XXXXXXXX/ (HF model dir + training
        state), OUT/final/ (HF dir, LoRA merged) and TensorBoard logs.

        `--resume` continues the SAME run exactly where its newest complete checkpoint left it. To start a NEW
        run from another run's weights, set `model.init_from` (and `model.reset_optimizer`) instead.

        Example: cptlab train configs/cpt.yaml --set optimizer.lr=1e-4 --set data.sources.law=0.8 --resume
        """
        from cptlab.console import set_quiet
        from cptlab.train import load_train_config, run

        overrides = list(set_ or [])
        if resume:
            overrides.append("resume=true")
        if quiet:
            overrides.append("quiet=true")
            set_quiet(True)
        cfg = load_train_config(config, overrides)
        result = run(cfg)
        payload = {"out_dir": str(result.out_dir), "final_dir": str(result.final_dir), "steps": result.steps,
                   "tokens": result.tokens, "last_loss": result.last_loss, "metrics_path": str(result.metrics_path),
                   "skipped_steps": result.skipped_steps}
        if result.main_process:  # under torchrun every rank returns here; one prints
            typer.echo(json.dumps(payload, indent=2) if as_json else str(result.final_dir))
