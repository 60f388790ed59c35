import pytest

from cptlab.errors import CptlabError
from cptlab.plugins import load_builtins


def test_load_builtins_names_a_bad_user_plugin_and_loads_once(monkeypatch):
    monkeypatch.setenv("CPTLAB_PLUGINS", " json , cptlab_no_such_plugin_module ")
    with pytest.raises(CptlabError, match="CPTLAB_PLUGINS: cannot import 'cptlab_no_such_plugin_module'"):
        load_builtins("string", user_plugins=True)
    load_builtins("string", user_plugins=True)  # the second call imports nothing


def test_load_builtins_ignores_user_plugins_unless_asked(monkeypatch):
    monkeypatch.setenv("CPTLAB_PLUGINS", "cptlab_no_such_plugin_module")
    load_builtins("textwrap")
