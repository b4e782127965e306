"""One version: ``_version.py`` holds it, the package root re-exports it, and it is the
one pyproject.toml gives the distribution."""

from __future__ import annotations

import tomllib
from pathlib import Path

import branchtrace
from branchtrace import _version
from branchtrace.tracefile.writer import _writer_name

ROOT = Path(branchtrace.__file__).resolve().parents[2]


def test_the_version_is_pyproject_s_and_the_root_re_exports_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _version.__version__ == project["version"]
    assert branchtrace.__version__ is _version.__version__
    assert _writer_name() == f"branchtrace {project['version']}"
