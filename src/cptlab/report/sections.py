"""Report sections: a plug-in contract. A section turns the study's database into a titled block of HTML.

    # src/cptlab/report/section_my_probe.py   (module name: "section_" + name with "-" -> "_")
    from cptlab.report.sections import Section, register_section

    def my_probe(ctx):
        rows = ctx.db.execute("SELECT run, result FROM diagnostics WHERE kind = 'my-probe'").fetchall()
        if not rows:
            return None                                   # nothing to show: the section is left out
        import json, matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.bar([r["run"] for r in rows], [json.loads(r["result"])["accuracy"] for r in rows])
        ax.set_xlabel("run"); ax.set_ylabel("accuracy (fraction correct)")   # every axis labelled, with units
        html = ctx.figure(fig, "my-probe", "Probe accuracy per run")
        html += ctx.table(["run", "accuracy"], [[r["run"], json.loads(r["result"])["accuracy"]] for r in rows])
        return Section("Nearest-mean probe", html)

    register_section("my-probe", my_probe)

A study kind lists the section names it shows in `StudyKind.sections` (cptlab.study.kinds); `get_section`
imports `cptlab.report.section_<name>` on first use. Numbers go through `ctx.fmt` / `ctx.table` so that every
table of the report rounds the same way; `ctx.figure` embeds the plot (base64 PNG, no external file needed)
and writes `<name>.png` beside index.html.
"""

from __future__ import annotations

import base64
import html as _html
import io
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cptlab.errors import CptlabError
from cptlab.plugins import import_plugin, load_builtins

DIGITS = 3  # decimals shown for floats everywhere in the report
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Section:
    title: str
    html: str  # trusted HTML fragment (build it with ctx.table/ctx.figure/ctx.escape)
    id: str = ""  # anchor; filled from the section name when empty


def fmt(x: Any, digits: int = DIGITS) -> str:
    """Consistent rounding: ints with thousands separators, floats with `digits` decimals (scientific when
    tiny or huge), None/NaN as an en dash, everything else as text."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–" if math.isnan(x) else ("∞" if x > 0 else "−∞")
        if x == 0:
            return f"{0:.{digits}f}"
        if abs(x) >= 1e7 or abs(x) < 10 ** -digits:
            return f"{x:.{digits}e}"
        return f"{x:,.{digits}f}"
    if hasattr(x, "item"):  # numpy scalar
        return fmt(x.item(), digits)
    return str(x)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or (hasattr(x, "item") and hasattr(x, "dtype"))


@dataclass
class ReportContext:
    """What a section sees: the database (rows as sqlite3.Row), the study dir and the report's output dir."""

    db: sqlite3.Connection
    study_dir: Path
    out_dir: Path
    study: dict[str, Any] = field(default_factory=dict)  # name, kind, description (from the DB's meta table)
    digits: int = DIGITS
    figures: list[str] = field(default_factory=list)  # PNG names written so far

    def fmt(self, x: Any, digits: int | None = None) -> str:
        return fmt(x, self.digits if digits is None else digits)

    @staticmethod
    def escape(text: Any) -> str:
        return _html.escape(str(text))

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | None = None,
              caption: str | None = None) -> str:
        """An HTML table; numbers are right-aligned, rounded with fmt, and keep their exact value in
        `data-value` (what tests and scripts read back)."""
        out = ['<table class="data">']
        if caption:
            out.append(f"<caption>{self.escape(caption)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{self.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>")
        for row in rows:
            cells = []
            for v in row:
                if _is_number(v):
                    v = v.item() if hasattr(v, "item") else v
                    raw = repr(float(v)) if isinstance(v, float) else str(v)
                    cells.append(f'<td class="num" data-value="{raw}">{self.escape(self.fmt(v, digits))}</td>')
                else:
                    cells.append(f"<td>{self.escape(self.fmt(v, digits))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def figure(self, fig, name: str, caption: str) -> str:
        """Embed a matplotlib figure as a base64 PNG (and write `<name>.png` beside index.html); closes it.
        Every axis must have a label on x and y (units in the label, e.g. "tokens (millions)")."""
        import matplotlib.pyplot as plt

        try:
            for ax in fig.get_axes():
                if ax.get_label() == "<colorbar>" or not ax.axison:
                    continue
                if not ax.get_xlabel().strip() or not ax.get_ylabel().strip():
                    raise CptlabError(f"figure {name!r}: every plot needs x and y axis labels (with units); "
                                      f"axes {ax.get_title() or ax} has x={ax.get_xlabel()!r} y={ax.get_ylabel()!r}")
            stem = _SAFE_NAME.sub("_", name).strip("_") or "figure"
            n, unique = 2, stem
            while unique in self.figures:
                unique, n = f"{stem}-{n}", n + 1
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            data = buf.getvalue()
        finally:
            plt.close(fig)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{unique}.png").write_bytes(data)
        self.figures.append(unique)
        b64 = base64.b64encode(data).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{b64}" alt="{self.escape(caption)}" '
                f'data-file="{unique}.png"><figcaption>{self.escape(caption)}</figcaption></figure>')


SectionFn = Callable[[ReportContext], "Section | None"]
_SECTIONS: dict[str, SectionFn] = {}


def register_section(name: str, fn: SectionFn) -> SectionFn:
    """Register (or replace) a report section under `name`."""
    _SECTIONS[name] = fn
    return fn


def get_section(name: str) -> SectionFn:
    """The registered section; imports `cptlab.report.section_<name with - as _>` on first use."""
    load_builtins("cptlab.report.builtin_sections")
    if name not in _SECTIONS:
        import_plugin("cptlab.report.section_", name)
    if name not in _SECTIONS:
        raise CptlabError(f"report: unknown section {name!r}; known sections: {', '.join(sorted(_SECTIONS))}")
    return _SECTIONS[name]
