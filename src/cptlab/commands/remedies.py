"""`cptlab merge` (merge HF checkpoints tensor by tensor) and `cptlab probe` (nearest-class-mean probe)."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from cptlab.errors import UsageError


def _floats(value: str | None, option: str) -> list[float] | None:
    if value is None or not value.strip():
        return None
    out = []
    for part in value.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise UsageError(f"{option} {value!r}: {part.strip()!r} is not a number") from None
    return out


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge(
        model: List[str] = typer.Option(..., "--model", help="An HF model dir (safetensors) or a LoRA adapter dir; "
                                                             "repeat for each model."),
        method: str = typer.Option(..., "--method", help="linear | task-arithmetic | slerp | ties."),
        out: str = typer.Option(..., "--out", help="Output HF model dir (config, safetensors, tokenizer)."),
        base: Optional[str] = typer.Option(None, "--base", help="The model the others were fine-tuned from: "
                                                                "required by task-arithmetic and ties; also the "
                                                                "base of LoRA adapters."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated, one per --model. Used AS "
                                                                      "GIVEN, not renormalised (linear: 0.3,0.7 "
                                                                      "averages, 1,1 sums; default 1/k each; "
                                                                      "task-arithmetic/ties: default 1)."),
        density: Optional[str] = typer.Option(None, "--density", help="ties: fraction of each task vector kept "
                                                                      "by magnitude; one value or one per --model "
                                                                      "(default 0.5)."),
        t: float = typer.Option(0.5, "--t", help="slerp: interpolation parameter (0 = first model, "
                                                 "1 = second)."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists and is not empty."),
        as_json: bool = typer.Option(False, "--json", help="Print the merge recipe as JSON."),
    ) -> None:
        """Merge checkpoints of one architecture tensor by tensor, streaming from safetensors (at most two
        models' tensors in memory at once, beyond the output). LoRA adapters are merged into their base first.

        linear: Σ wᵢθᵢ (weights as given, NOT renormalised). task-arithmetic: θ_base + Σ wᵢ(θᵢ − θ_base).
        slerp: spherical interpolation of exactly two models at --t. ties: trim each task vector to --density by
        magnitude, elect the sign per entry by the weighted sum, average the agreeing entries.

        Example: cptlab merge --model runs/base/final --model runs/cpt/final --method linear --weights 0.5,0.5
        --out runs/merged
        """
        from cptlab.console import log
        from cptlab.diagnose.merge import merge_models

        dens = _floats(density, "--density")
        result = merge_models(model, method, out, base=base, weights=_floats(weights, "--weights"),
                              density=0.5 if dens is None else (dens[0] if len(dens) == 1 else dens), t=t,
                              overwrite=force)
        log(f"merge: {result.tensors} tensors, {result.bytes / 1e6:.1f} MB in {result.shards} file(s)")
        for note in result.notes:
            log(f"merge: {note}")
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            typer.echo(result.out_dir)

    @app.command("probe")
    def probe(
        model: str = typer.Option(..., "--model", help="HF model dir (or hub name)."),
        data: str = typer.Option(..., "--data", help="Labelled JSON lines: one object per line with a text and a "
                                                     "label field (and optionally a train/test split field)."),
        text_field: str = typer.Option("text", "--text-field", help="Field holding the text."),
        label_field: str = typer.Option("label", "--label-field", help="Field holding the label."),
        split_field: str = typer.Option("split", "--split-field", help="Field fixing train/test (used when "
                                                                       "present on the records)."),
        layer: int = typer.Option(-1, "--layer", help="Hidden-state index: 0 = embeddings, -1 = last layer."),
        test_fraction: float = typer.Option(0.3, "--test-fraction", help="Per-class fraction held out for "
                                                                         "testing (without a split field)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the stratified split."),
        metric: str = typer.Option("euclidean", "--metric", help="euclidean | cosine."),
        batch_size: int = typer.Option(16, "--batch-size", help="Texts per forward pass."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate texts to this many tokens "
                                                                            "(default: the model's context)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16."),
        json_out: Optional[str] = typer.Option(None, "--json", help="Also write the result as JSON to this file "
                                                                    "('-' prints it instead of the table)."),
    ) -> None:
        """Nearest-class-mean probe: frozen mean-pooled hidden states (padding masked), one mean per class on the
        train part, accuracy of the nearest mean on the test part. Run it before and after CPT: the split depends
        only on the labels and --seed, so both runs score the same test examples.

        Example: cptlab probe --model runs/cpt/final --data sentiment.jsonl --layer -1 --json probe.json
        """
        from cptlab.diagnose.probe import probe as run_probe

        result = run_probe(model, data, text_field=text_field, label_field=label_field, split_field=split_field,
                           test_fraction=test_fraction, layer=layer, seed=seed, metric=metric,
                           batch_size=batch_size, max_length=max_length, precision=precision)
        d = result.to_dict()
        if json_out == "-":
            typer.echo(json.dumps(d, indent=2))
            return
        if json_out:
            from cptlab.fsutil import atomic_write_json

            atomic_write_json(json_out, d)
        from rich.console import Console
        from rich.table import Table

        typer.echo(f"nearest-mean probe: accuracy {result.accuracy:.4f} ({result.n_train} train, "
                   f"{result.n_test} test, {result.metric}, layer {layer})")
        table = Table()
        table.add_column("class")
        table.add_column("test accuracy", justify="right")
        for c, acc in result.per_class_accuracy.items():
            table.add_row(c, "-" if acc is None else f"{acc:.4f}")
        Console().print(table)  # a result: stdout
