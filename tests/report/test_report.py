"""The report: self-contained HTML, every section, numbers from the database, renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tests.study.toy  # noqa: F401  (registers the toy step kind)
from cptlab.errors import CptlabError
from cptlab.report.render import render_report
from cptlab.report.sections import ReportContext, Section, fmt, register_section
from cptlab.study.runner import run_study
from tests.study.helpers import toy_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Tables(HTMLParser):
    """Every <table>: header texts and rows of (text, data-value) cells; <img> sources."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th"):
            self._cell = [tag, "", a.get("data-value")]
        elif tag == "img":
            self.images.append(a)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self.tables:
            if self._row and self._row[0][0] == "th":
                self.tables[-1]["head"] = [c[1] for c in self._row]
            elif self._row:
                self.tables[-1]["rows"].append([(c[1], c[2]) for c in self._row])


def parse(html: str) -> Tables:
    p = Tables()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "study"
    run_study(toy_study(tmp / "s.yaml"), out)
    return out


def _table_with(tables, *columns):
    for t in tables:
        if all(c in t["head"] for c in columns):
            return t
    raise AssertionError(f"no table with columns {columns}: {[t['head'] for t in tables]}")


def test_report_is_self_contained_with_every_default_section(study):
    index = render_report(study)
    assert index == study / "report" / "index.html"
    html = index.read_text()
    for title in ("Runs", "Loss curves", "Perplexity per domain", "Δ perplexity heat-map"):
        assert f"<h2>{title}</h2>" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    imgs = parse(html).images
    assert len(imgs) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in imgs)
    for img in imgs:
        png = study / "report" / img["data-file"]
        import base64

        assert png.read_bytes() == base64.b64decode(img["src"].split(",", 1)[1])


def test_tables_hold_the_database_numbers(study):
    tables = parse(render_report(study).read_text()).tables
    conn = sqlite3.connect(study / "results.sqlite")
    t = _table_with(tables, "ppl before", "ppl after", "Δ ppl (%)")
    head = t["head"]
    db = {(r, s, d): (after, before) for r, s, d, after, before in conn.execute(
        "SELECT e.run, e.step_name, e.domain, e.token_perplexity, b.token_perplexity FROM evaluations e "
        "JOIN runs r ON r.name = e.run JOIN evaluations b ON b.run = r.baseline AND b.domain = e.domain "
        "WHERE r.role = 'run'")}
    assert len(t["rows"]) == len(db) == 12
    for row in t["rows"]:
        cell = dict(zip(head, row))
        after, before = db[(cell["run"][0], cell["step"][0], cell["domain"][0])]
        assert float(cell["ppl after"][1]) == after and cell["ppl after"][0] == fmt(after)
        assert float(cell["ppl before"][1]) == before and cell["ppl before"][0] == fmt(before)
        delta = (after - before) / before * 100
        assert float(cell["Δ ppl (%)"][1]) == pytest.approx(delta, rel=1e-12)
        assert cell["Δ ppl (%)"][0] == f"{delta:,.3f}"
    runs = _table_with(tables, "run", "status", "attempts")
    assert [r[0][0] for r in runs["rows"]] == [n for (n,) in conn.execute("SELECT name FROM runs ORDER BY position")]
    losses = _table_with(tables, "last loss", "min loss")
    last = dict(conn.execute("SELECT run, value FROM metrics WHERE step_name='train' AND key='loss' AND step=3"))
    for row in losses["rows"]:
        if row[0][0] in last:
            assert float(row[4][1]) == last[row[0][0]]


def test_fmt_rounds_consistently():
    assert [fmt(x) for x in (1234.56789, 0.5, 3, 1234567, None, float("nan"), 1e-5, 2.5e8, True)] == \
        ["1,234.568", "0.500", "3", "1,234,567", "–", "–", "1.000e-05", "2.500e+08", "yes"]


def test_a_plot_without_axis_labels_is_refused(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = ReportContext(db=None, study_dir=tmp_path, out_dir=tmp_path)
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    ax.set_xlabel("step")
    with pytest.raises(CptlabError, match="axis labels"):
        ctx.figure(fig, "bad", "no y label")
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    html = ctx.figure(fig, "good", "fine")
    assert (tmp_path / "good.png").is_file() and 'data-file="good.png"' in html
    assert ctx.figure.__doc__ and "good" in ctx.figures


def test_study_kind_sections_drive_the_report_and_a_broken_section_shows_its_error(study, tmp_path):
    register_section("test-custom", lambda ctx: Section("Custom <section>", ctx.table(["x"], [[1.23456]])))
    register_section("test-empty", lambda ctx: None)

    def broken(ctx):
        raise ValueError("this section is broken")

    register_section("test-broken", broken)
    index = render_report(study, tmp_path / "r", sections=["runs", "test-custom", "test-empty", "test-broken"])
    html = index.read_text()
    assert "<h2>Runs</h2>" in html and "Loss curves" not in html
    assert "<h2>Custom &lt;section&gt;</h2>" in html and 'data-value="1.23456">1.235<' in html
    assert "this section is broken" in html and (tmp_path / "r" / "section-test-broken-error.log").is_file()
    # A section nobody registered (e.g. a plug-in not installed) is named in the page, not a crash.
    html = render_report(study, tmp_path / "r2", sections=["nope"]).read_text()
    assert "unknown section &#x27;nope&#x27;" in html or "unknown section 'nope'" in html


def _chromium(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'chrome-profile'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(study, tmp_path):
    index = render_report(study)
    # A copy with a probe script: reports every image's decoded width after load (the report has no scripts).
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => { for (const i of document.images) "
                   "console.log('IMG ' + i.naturalWidth + 'x' + i.naturalHeight); });</script></body>"))
    dom, console = _chromium(probe.resolve().as_uri(), tmp_path)
    widths = [re.search(r"IMG (\d+)x(\d+)", c).groups() for c in console if "IMG " in c]
    assert len(widths) == 2 and all(int(w) > 100 and int(h) > 100 for w, h in widths), console
    dom, console = _chromium(index.resolve().as_uri(), tmp_path)
    assert console == []
    assert "Perplexity per domain" in dom and "<table" in dom
    conn = sqlite3.connect(study / "results.sqlite")
    (ppl,) = conn.execute("SELECT token_perplexity FROM evaluations WHERE run='baseline' AND domain='code'").fetchone()
    assert f'data-value="{ppl!r}">{fmt(ppl)}<' in dom
    # The console check itself catches errors (control).
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = _chromium(bad.as_uri(), tmp_path)
    assert any("undefinedFunction" in c for c in console)


def test_report_command(study, tmp_path):
    from cptlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(study), "--out", str(tmp_path / "rep")])
    assert e.value.code == 0 and (tmp_path / "rep" / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["delta-heatmap.png", "loss-curves.png"]
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nothing")])
    assert e.value.code == 1


def test_report_open_opens_the_written_index_in_a_browser(study, tmp_path, monkeypatch):
    import webbrowser

    from cptlab.cli import main

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    with pytest.raises(SystemExit) as e:
        main(["report", str(study), "--out", str(tmp_path / "rep"), "--open"])
    assert e.value.code == 0
    index = tmp_path / "rep" / "index.html"
    assert opened == [index.resolve().as_uri()] and index.is_file()
    with pytest.raises(SystemExit) as e:  # without --open nothing is opened
        main(["report", str(study), "--out", str(tmp_path / "rep2")])
    assert e.value.code == 0 and len(opened) == 1

