"""Lazy plug-in modules: a registry name `foo-bar` lives in `<prefix>foo_bar` and registers itself on import.

A registry's built-ins live in one module imported on first use (`load_builtins`); step kinds kept outside the
package come from the modules named in the environment variable `CPTLAB_PLUGINS` (comma-separated).
"""

from __future__ import annotations

import importlib
import os

from cptlab.errors import CptlabError

_LOADED: set[str] = set()


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


def load_builtins(module: str, *, user_plugins: bool = False) -> None:
    """Import a registry's built-ins `module` once (then, with user_plugins, the modules named in CPTLAB_PLUGINS)."""
    if module in _LOADED:
        return
    _LOADED.add(module)
    importlib.import_module(module)
    if user_plugins:
        # Modules named by the user's environment (never by a study file).
        for name in filter(None, (m.strip() for m in os.environ.get("CPTLAB_PLUGINS", "").split(","))):
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise CptlabError(f"CPTLAB_PLUGINS: cannot import {name!r}: {e}") from None
