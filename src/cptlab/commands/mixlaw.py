"""`cptlab mixlaw fit|predict|recommend`: the D-CPT mixture law (how much general data to replay)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

from cptlab.errors import UsageError

mixlaw_app = typer.Typer(
    help="The D-CPT mixture law: fit L(N, D, r) from ratio-grid runs, predict, recommend a domain ratio r.",
    no_args_is_help=True, rich_markup_mode="rich")


def parse_floats(values: list[str] | None, flag: str) -> list[float]:
    """`--r 0.1,0.2 --r 0.5` -> [0.1, 0.2, 0.5]; every value a finite number."""
    out: list[float] = []
    for item in values or []:
        for text in item.split(","):
            text = text.strip()
            if not text:
                continue
            try:
                v = float(text)
            except ValueError:
                raise UsageError(f"{flag} {text!r}: not a number") from None
            if not math.isfinite(v):
                raise UsageError(f"{flag} {text!r}: must be a finite number")
            out.append(v)
    return out


def _g(x) -> str:
    return "–" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def _print(renderable) -> None:
    from rich.console import Console

    Console(soft_wrap=True).print(renderable)


def _write_json(obj, dest: str) -> None:
    from cptlab.console import log
    from cptlab.fsutil import atomic_write_json

    if dest == "-":
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    else:
        atomic_write_json(Path(dest), obj)
        log(f"wrote {dest}")


def fit_table(fit):
    from rich.table import Table

    t = Table(title=f"{fit.target} loss: {fit.formula}  ({fit.form}, {fit.n_points} points)", title_justify="left")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for k, v in fit.params.items():
        t.add_row(k, _g(v))
    t.add_row("Huber (log-loss, delta %g)" % fit.delta, _g(fit.huber))
    t.add_row("R²", _g(fit.r2))
    t.add_row("held-out error (mean |pred-obs|/obs)", _g(fit.heldout_error))
    for r, e in fit.heldout_by_ratio.items():
        t.add_row(f"  held out r = {r}", _g(e))
    if fit.N:
        t.add_row("N (fixed model size)", _g(fit.N))
    return t


def recommendation_tables(rec):
    from rich.table import Table

    out = []
    if rec.budget is not None:
        b = rec.budget
        t = Table(title=f"(a) largest domain ratio within +{100 * b.budget:g}% general loss", title_justify="left")
        for c in ("N", "D", "base general loss", "limit", "ratio r", "general loss", "domain loss"):
            t.add_column(c, justify="right")
        t.add_row(_g(b.N), _g(b.D), f"{_g(b.base_loss)} ({b.base_from})", _g(b.limit),
                  "none on the grid" if b.ratio is None else _g(b.ratio), _g(b.general_loss), _g(b.domain_loss))
        out.append(t)
    if rec.fixed_data is not None:
        f = rec.fixed_data
        t = Table(title=f"(b) best ratio for {f.domain_tokens:.4g} domain tokens (D = D_d / r)", title_justify="left")
        for c in ("N", "ratio r", "training tokens D", "domain loss", "general loss"):
            t.add_column(c, justify="right")
        t.add_row(_g(f.N), _g(f.ratio), _g(f.D), _g(f.domain_loss), _g(f.general_loss))
        out.append(t)
    t = Table(title="(c) predicted curves", title_justify="left")
    for c in ("N", "D", "r", "general loss", "domain loss"):
        t.add_column(c, justify="right")
    for row in rec.curves:
        t.add_row(*(_g(row[k]) for k in ("N", "D", "r", "general_loss", "domain_loss")))
    out.append(t)
    return out


def register(app: typer.Typer) -> None:
    @mixlaw_app.command("fit")
    def fit(
        source: str = typer.Argument(..., help="A study dir (mixture-grid study's results.sqlite) or a CSV with "
                                               "columns N,D,r,loss (r: domain ratio)."),
        target: str = typer.Option(..., "--target", help="Which validation loss: general | domain."),
        json_out: str = typer.Option(None, "--json", help="Write the fit as JSON to this file ('-': stdout)."),
        form: str = typer.Option(None, "--form", help="full | fixed-N | fixed-N-simple (default: full when the "
                                                      "points have several N, else fixed-N)."),
        holdout: list[str] = typer.Option(None, "--holdout", help="Ratios held out one at a time for the "
                                                                  "leave-out error (default: every ratio but the "
                                                                  "smallest and largest)."),
        no_holdout: bool = typer.Option(False, "--no-holdout", help="Skip the leave-out refits."),
        cross_domain: bool = typer.Option(False, "--cross-domain", help="Add F/K^mu, K = 1/k1 + w2*k2 (needs "
                                                                         "columns k1, k2: see the docs)."),
        delta: float = typer.Option(1e-3, "--delta", help="Huber delta on log-loss residuals."),
        starts: int = typer.Option(8, "--starts", help="L-BFGS runs from the best grid starting points."),
        points_csv: str = typer.Option(None, "--points-csv", help="Also write the points used as a CSV."),
        quiet: bool = typer.Option(False, "--quiet", help="No table (with --json -, only the JSON)."),
    ) -> None:
        """Fit the D-CPT law L = E + A/N^alpha + B*r^eta/D^beta + C/(r+eps)^gamma to the general or domain loss.

        Example: cptlab mixlaw fit runs/mix-study --target general --json general.json
        """
        from cptlab.console import set_quiet
        from cptlab.diagnose.mixlaw_fit import fit_law
        from cptlab.diagnose.mixlaw_points import read_points, write_points_csv

        set_quiet(quiet)
        if target not in ("general", "domain"):
            raise UsageError(f"--target {target!r}: expected general or domain")
        if starts < 1:
            raise UsageError(f"--starts {starts}: must be >= 1")
        held = False if no_holdout else (parse_floats(holdout, "--holdout") or True)
        pts = read_points(source, target, need_k=cross_domain)
        result = fit_law(pts, target, form=form, delta=delta, n_starts=starts, heldout=held,
                         cross_domain=cross_domain)
        if points_csv:
            write_points_csv(pts, points_csv)
        if not quiet and json_out != "-":
            _print(fit_table(result))
        if json_out:
            _write_json(result.to_dict(), json_out)

    @mixlaw_app.command("predict")
    def predict(
        fit_path: str = typer.Argument(..., help="A fit written by `cptlab mixlaw fit --json`."),
        N: list[str] = typer.Option(None, "--N", help="Model size(s) in parameters (a fixed-N fit: its own N)."),
        D: list[str] = typer.Option(..., "--D", help="Training tokens (comma-separated or repeated)."),
        r: list[str] = typer.Option(..., "--r", help="Domain ratio(s) in [0, 1]."),
        k1: float = typer.Option(None, "--k1", help="Cross-domain fit: the domain's loss before training."),
        k2: float = typer.Option(None, "--k2", help="Cross-domain fit: its early loss decline rate."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Predicted loss at every combination of the given N, D and r.

        Example: cptlab mixlaw predict general.json --D 1e8 --r 0,0.25,0.5
        """
        from rich.table import Table

        from cptlab.diagnose.mixlaw_fit import load_fit
        from cptlab.diagnose.mixlaw_use import predict_table

        f = load_fit(fit_path)
        rows = predict_table(f, parse_floats(N, "--N") or None, parse_floats(D, "--D"), parse_floats(r, "--r"),
                             k1, k2)
        if as_json:
            sys.stdout.write(json.dumps({"target": f.target, "form": f.form, "predictions": rows}, indent=2) + "\n")
            return
        t = Table(title=f"predicted {f.target} loss ({f.form})", title_justify="left")
        for c in ("N", "D", "r", "loss"):
            t.add_column(c, justify="right")
        for row in rows:
            t.add_row(*(_g(row[c]) for c in ("N", "D", "r", "loss")))
        _print(t)

    @mixlaw_app.command("recommend")
    def recommend_cmd(
        fits: list[str] = typer.Argument(..., help="One or two fits (general and/or domain target)."),
        budget: float = typer.Option(0.03, "--budget", help="(a) allowed relative rise of the general loss."),
        base_loss: float = typer.Option(None, "--base-loss", help="(a) the base's general loss (default: the "
                                                                  "law's prediction at r = 0)."),
        domain_tokens: float = typer.Option(None, "--domain-tokens", help="(b) domain tokens D_d available."),
        N: float = typer.Option(None, "--N", help="Model size (a fixed-N fit: its own N)."),
        D: list[str] = typer.Option(None, "--D", help="Training tokens for (a) and the curves (default: the "
                                                      "largest D fitted)."),
        grid_step: float = typer.Option(0.01, "--grid-step", help="Step of the ratio grid searched."),
        json_out: str = typer.Option(None, "--json", help="Write the recommendation as JSON ('-': stdout)."),
        plot: str = typer.Option(None, "--plot", help="Write a PNG plot of the predicted curves."),
        quiet: bool = typer.Option(False, "--quiet", help="No tables."),
    ) -> None:
        """(a) the largest domain ratio within a general-loss budget, (b) the best ratio for a fixed amount of
        domain data, (c) predicted curves.

        Example: cptlab mixlaw recommend general.json domain.json --budget 0.03 --domain-tokens 5e7 --plot rec.png
        """
        from cptlab.diagnose.mixlaw_fit import load_fit
        from cptlab.diagnose.mixlaw_use import plot_recommendation, recommend

        loaded, paths = {}, {}
        for path in fits:
            f = load_fit(path)
            if f.target in loaded:
                raise UsageError(f"{path}: a second fit of the {f.target} loss; give one general and/or one domain")
            if f.cross_domain:
                raise UsageError(f"{path}: a cross-domain fit; predict with `mixlaw predict --k1 --k2` instead")
            loaded[f.target], paths[f.target] = f, path
        if "general" not in loaded and "domain" in loaded and domain_tokens is None:
            raise UsageError("with only a domain fit, give --domain-tokens (recommendation b)")
        rec = recommend(loaded, N=N, D=parse_floats(D, "--D") or None, budget=budget, base_loss=base_loss,
                        domain_tokens=domain_tokens, grid_step=grid_step)
        if not quiet and json_out != "-":
            for t in recommendation_tables(rec):
                _print(t)
        if plot:
            from cptlab.fsutil import atomic_write_bytes
            import io

            fig = plot_recommendation(rec, loaded)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            import matplotlib.pyplot as plt

            plt.close(fig)
            atomic_write_bytes(Path(plot), buf.getvalue())
        if json_out:
            _write_json({"fits": paths, **rec.to_dict()}, json_out)

    app.add_typer(mixlaw_app, name="mixlaw")
