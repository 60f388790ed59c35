"""Lazy plug-in modules: a registry name `foo-bar` lives in `<prefix>foo_bar` and registers itself on import."""

from __future__ import annotations

import importlib


def import_plugin(prefix: str, name: str) -> None:
    """Import `prefix + name` (with "-" as "_") if such a module exists.

    A missing module means "no such plug-in" (the caller reports the unknown name); a missing dependency *inside*
    an existing module is a real error and is raised."""
    module = prefix + name.replace("-", "_")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
