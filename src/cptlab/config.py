"""Typed configs at the edge: YAML files + `--set key=value` overrides -> validated pydantic models.

Every validation error names the file and the dotted field, so that a user finds the line to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cptlab.errors import CptlabError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4`, `2.0e8` and `3E+5` as numbers (YAML 1.2), not as strings (PyYAML's YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: config file not found")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise CptlabError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError as e:
        raise CptlabError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CptlabError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML so numbers/bools/lists keep their types)."""
    if "=" not in item:
        raise CptlabError(f"--set {item!r}: expected key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise CptlabError(f"--set {item!r}: empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in place; a number selects an item of a list (`steps.0.config.lr=1e-4`)."""
    for item in overrides or []:
        keys, value = parse_override(item)
        node: Any = data
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not k.lstrip("-").isdigit() or not -len(node) <= int(k) < len(node):
                    raise CptlabError(f"--set {item!r}: {'.'.join(keys[:depth]) or 'the top level'} is a list of "
                                      f"{len(node)} items; {k!r} is not an index of it")
                k = int(k)
            elif not isinstance(node, dict):
                raise CptlabError(f"--set {item!r}: {keys[depth - 1]!r} is not a section")
            if last:
                node[k] = value
                break
            child = node[k] if isinstance(node, list) else node.get(k)
            if child is None:
                child = node[k] = {}
            node = child
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise CptlabError(format_validation_error(e, source)) from None


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read YAML (optional), apply overrides, validate; errors name the file and field."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate(model, data, str(path) if path is not None else "--set")
