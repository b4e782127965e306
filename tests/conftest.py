"""Shared test helpers: compile C fixtures, run the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def marker_line(source: str, marker: str) -> int:
    """The 1-based line of ``source`` (a fixture name) holding ``marker``."""
    for number, text in enumerate((FIXTURES / source).read_text().splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(f"no {marker} in {source}")


class Builder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[tuple[str, tuple[str, ...]], Path] = {}

    def __call__(self, name: str, *flags: str) -> Path:
        key = (name, flags)
        if key not in self.built:
            tag = re.sub(r"[^A-Za-z0-9]+", "_", "".join(flags))
            exe = self.root / f"{name}{tag}"
            cmd = ["gcc", "-g", "-O0", "-pthread", *flags, "-o", str(exe), str(FIXTURES / f"{name}.c")]
            subprocess.run(cmd, check=True, capture_output=True)
            self.built[key] = exe
        return self.built[key]


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    """build("crash") compiles tests/fixtures/crash.c (gcc -g -O0) and returns its path."""
    return Builder(tmp_path_factory.mktemp("bin"))


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m branchtrace ARGS`` and capture its output."""
    env = dict(os.environ if env is None else env)
    env.pop("BRANCHTRACE_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "branchtrace", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def run_cli():
    return cli


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long soak variants of the reliability tests (minutes)")


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """True when the long variants were asked for (``pytest --soak``): tests scale up
    their counts instead of skipping."""
    return bool(request.config.getoption("--soak"))
