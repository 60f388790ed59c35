"""Render a study's report: `DIR/report/index.html` (self-contained) and the plots as PNG files beside it.

The study kind's `sections` (recorded in the database when the study ran) name the sections, in order; each is
a function of the database (see cptlab.report.sections). A section that fails shows its error in the page
instead of taking the whole report down.
"""

from __future__ import annotations

import sqlite3
import time
import traceback
from pathlib import Path

from cptlab.console import log
from cptlab.errors import CptlabError
from cptlab.fsutil import atomic_write_text
from cptlab.report.sections import ReportContext, Section, get_section
from cptlab.study.kinds import DEFAULT_SECTIONS
from cptlab.study.store import DB_NAME, Store


def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("cptlab.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    return env.get_template("report.html")


def render_report(study_dir: str | Path, out_dir: str | Path | None = None,
                  sections: list[str] | None = None) -> Path:
    """Write the report; returns the path of index.html."""
    import matplotlib

    matplotlib.use("Agg")
    study_dir = Path(study_dir)
    if not (study_dir / DB_NAME).is_file():
        raise CptlabError(f"{study_dir}: not a study directory (no {DB_NAME}); run `cptlab study run` first")
    out_dir = Path(out_dir) if out_dir is not None else study_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    with Store(study_dir, create=False) as store:
        meta = store.get_meta("study", {}) or {}
        counts = store.counts()
        names = sections or meta.get("sections") or list(DEFAULT_SECTIONS)
        ctx = ReportContext(db=store.conn, study_dir=study_dir, out_dir=out_dir, study=meta)
        rendered: list[Section] = []
        for name in names:
            try:
                section = get_section(name)(ctx)
            except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
                log(f"[red]report section {name} failed:[/] {e}")
                (out_dir / f"section-{name}-error.log").write_text(traceback.format_exc(), encoding="utf-8")
                section = Section(f"{name} (failed)", f'<p class="error">This section failed: '
                                                     f'{ReportContext.escape(e)}</p>')
            if section is not None:
                section.id = section.id or name
                rendered.append(section)
    html = _template().render(
        study=meta, name=meta.get("name") or study_dir.name, kind=meta.get("kind", ""),
        description=meta.get("description", ""), counts=counts, sections=rendered,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), study_dir=str(study_dir.resolve()))
    index = out_dir / "index.html"
    atomic_write_text(index, html)
    return index


def read_only_connection(study_dir: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{Path(study_dir) / DB_NAME}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn
