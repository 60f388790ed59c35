"""Study kinds: each turns a spec into runs and names the report sections that present its results.

The built-in kind `grid` is a plain cartesian product of the axes. A later kind registers itself from its own
module, which `get_study_kind` imports on first use:

    # src/cptlab/study/kind_adaptation_matrix.py   (module name: "kind_" + kind name with "-" -> "_")
    from cptlab.study.kinds import StudyKind, register_study_kind
    from cptlab.study.spec import expand_grid

    class Options(StrictModel):
        control_corpus: str

    def expand(spec, spec_dir):
        opts = Options.model_validate(spec.options)  # validated by the runner already
        runs = expand_grid(spec, spec_dir, prefix="adapt")
        ... add a control run (role="control"), set run.meta ...
        return runs

    register_study_kind(StudyKind("adaptation-matrix", expand, options=Options,
                                  sections=[*DEFAULT_SECTIONS, "adaptation-matrix"]))

Report sections are registered by name in `cptlab.report.sections` (see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cptlab.config import StrictModel, validate
from cptlab.errors import CptlabError
from cptlab.plugins import import_plugin
from cptlab.study.spec import RunSpec, StudySpec, expand_grid

DEFAULT_SECTIONS = ["runs", "loss-curves", "perplexity", "delta-heatmap"]


@dataclass
class StudyKind:
    name: str
    expand: Callable[[StudySpec, Path], list[RunSpec]]
    options: type[StrictModel] | None = None
    sections: list[str] = field(default_factory=lambda: list(DEFAULT_SECTIONS))
    description: str = ""


_KINDS: dict[str, StudyKind] = {}


def register_study_kind(kind: StudyKind) -> StudyKind:
    _KINDS[kind.name] = kind
    return kind


def get_study_kind(name: str) -> StudyKind:
    if name not in _KINDS:
        import_plugin("cptlab.study.kind_", name)
    if name not in _KINDS:
        raise CptlabError(f"kind: unknown study kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def expand(spec: StudySpec, spec_dir: str | Path = ".") -> list[RunSpec]:
    """Validate the kind's options and expand the spec into its runs (ordered; names unique)."""
    kind = get_study_kind(spec.kind)
    if kind.options is not None:
        validate(kind.options, dict(spec.options), "options")
    elif spec.options:
        raise CptlabError(f"options: study kind {spec.kind!r} takes no options (got {sorted(spec.options)})")
    runs = kind.expand(spec, Path(spec_dir))
    for order, run in enumerate(runs):  # every kind's list order is its run order
        run.order = order
    return runs


def _expand_plain_grid(spec: StudySpec, spec_dir: Path) -> list[RunSpec]:
    return expand_grid(spec, spec_dir)


register_study_kind(StudyKind(
    "grid", _expand_plain_grid,
    description="Cartesian product of the grid axes; the same recipe of steps for every run.",
))
