"""`cptlab train CONFIG.yaml` (continued pretraining) and `cptlab sft CONFIG.yaml` (supervised fine-tuning): one run
each, through the same loop; `[--set key=value ...] [--resume] [--quiet] [--json]`."""

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
        _run(config, set_, resume, quiet, as_json, None)

    @app.command("sft")
    def sft(
        config: str = typer.Argument(..., help="SFT config (YAML): the train config's keys, with data: {train: "
                                               "FILE.jsonl, valid: FILE.jsonl, seq_len, format, chat_template...}"),
        set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set optimizer.lr=2e-5 "
                                                           "(repeatable; values parse as YAML)."),
        resume: bool = typer.Option(False, "--resume", help="Continue this run (out_dir) from its newest complete "
                                                            "checkpoint: weights, optimizer, RNG and data position."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Supervised fine-tuning on prompt/response or chat jsonl: loss only on response tokens (the prompt is
        masked), examples packed whole into rows with document masking, full or LoRA. Same checkpoints, exact
        `--resume`, metrics.jsonl, TensorBoard and torchrun/accelerate launch as `cptlab train`.

        Each line of data.train: {"prompt": "...", "response": "..."} or {"messages": [{"role": "user", "content":
        "..."}, {"role": "assistant", "content": "..."}]} (rendered with the tokenizer's chat template; only
        assistant turns are learned). Bad lines stop with FILE:LINE (data.skip_invalid: true skips and counts them).

        Example: cptlab sft sft.yaml --set model.name=runs/cpt/final --set data.train=qa/train.jsonl
        """
        _run(config, set_, resume, quiet, as_json, "sft")


def _run(config: str, set_: list[str] | None, resume: bool, quiet: bool, as_json: bool, kind: str | None) -> None:
    from cptlab.console import set_quiet
    from cptlab.train import load_train_config, run

    overrides = list(set_ or [])
    if resume:
        overrides.append("resume=true")
    if quiet:
        overrides.append("quiet=true")
        set_quiet(True)
    cfg = load_train_config(config, overrides, kind=kind)
    result = run(cfg)
    payload = {"out_dir": str(result.out_dir), "final_dir": str(result.final_dir), "steps": result.steps,
               "tokens": result.tokens, "last_loss": result.last_loss, "metrics_path": str(result.metrics_path),
               "skipped_steps": result.skipped_steps}
    if result.main_process:  # under torchrun every rank returns here; one prints
        typer.echo(json.dumps(payload, indent=2) if as_json else str(result.final_dir))
