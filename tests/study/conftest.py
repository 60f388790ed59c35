"""The toy step kind is registered here and, for subprocesses, named in CPTLAB_PLUGINS."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ["CPTLAB_PLUGINS"] = "tests.study.toy"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))

import tests.study.toy  # noqa: E402,F401  (registers `toy` in this process)


def cli_env() -> dict:
    env = dict(os.environ)
    env["CPTLAB_PLUGINS"] = "tests.study.toy"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cptlab.cli", *args]


@pytest.fixture
def env() -> dict:
    return cli_env()
