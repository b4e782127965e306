"""Options of the real-program corpus, and the rule for a program that is not installed.

``--realworld-full`` (or ``BRANCHTRACE_REALWORLD_FULL=1``) runs every case; by default
only the quick subset runs. pytest reads options only from the conftest files it loads at
startup, so the option works when the command names this directory
(``python -m pytest tests/realworld --realworld-full``); the variable works everywhere.
``--realworld-table FILE`` appends one JSON line of measurements per traced run
(``python tests/realworld/table.py FILE`` turns them into docs/reliability.md's table).
"""

from __future__ import annotations

import os
import shutil

import pytest

from .corpus import Case
from .harness import Workspace


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--realworld-full", action="store_true", default=False,
                     help="run every case of the real-program corpus (tests/realworld), "
                          "not only the quick subset")
    parser.addoption("--realworld-table", default="", metavar="FILE",
                     help="append the corpus's measurements to FILE (JSON lines)")


def full_corpus(config: pytest.Config) -> bool:
    return bool(config.getoption("--realworld-full", default=False)) or \
        os.environ.get("BRANCHTRACE_REALWORLD_FULL") == "1"


def table_file(config: pytest.Config) -> str:
    return str(config.getoption("--realworld-table", default="") or "")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("realworld"))


def need_case(config: pytest.Config, case: Case, *extra: str) -> None:
    """Skip ``case`` outside the quick subset unless the full corpus was asked for; skip
    it with the reason when a program it needs is not installed, and fail instead under
    CI (``.ci/run`` sets CI and installs them all)."""
    if not case.quick and not full_corpus(config):
        pytest.skip("not in the quick subset (--realworld-full runs every case)")
    for program in (*case.programs, *extra):
        if shutil.which(program, path="/usr/bin:/bin") is None:
            message = (f"{program} is not installed (case {case.name}, Debian package "
                       f"{case.package}; .ci/run installs it)")
            if os.environ.get("CI"):
                pytest.fail(f"CI: {message}", pytrace=False)
            pytest.skip(message)
