"""Shared test helpers: compile C fixtures, run the CLI, say which backends must run."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import other_user
import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Every run of the suite probes the backends afresh: the stalker backend keeps its probe's
# answer for the whole boot (backends/stalker), so one failed probe would otherwise turn
# its tests into skips until the next reboot. Set before any test module probes, and
# inherited by every branchtrace the tests start.
os.environ["BRANCHTRACE_PROBE_CACHE"] = "0"

#: Every backend the suite covers. Tests parametrize over this list, never over what a
#: probe found, so a backend that cannot run shows as skips with the reason, or, when
#: ``--require-backend`` names it, as failures.
ALL_BACKENDS = ["stalker", "ptrace"]

_required: set[str] = set()


@functools.cache
def backend_probe(name: str) -> tuple[bool, str]:
    """(can ``name`` run here, why), probed once per session."""
    from branchtrace.backends import load

    try:
        probe = load(name).probe()
    except ImportError as exc:
        return False, f"cannot load: {exc}"
    return probe.available, probe.reason


def need_backend(name: str) -> None:
    """Skip the calling test, with the reason, when backend ``name`` cannot run here;
    fail it instead when ``--require-backend`` names that backend."""
    available, reason = backend_probe(name)
    if available:
        return
    message = f"backend {name} cannot run here: {reason}"
    if name in _required:
        pytest.fail(f"{message} (required by --require-backend)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _backend_must_run(request: pytest.FixtureRequest) -> None:
    """A test parametrized with ``backend``, or marked ``@pytest.mark.backend(NAME)``
    (a whole module: ``pytestmark = pytest.mark.backend("stalker")``), needs that
    backend (see :func:`need_backend`)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") in ALL_BACKENDS:
        need_backend(callspec.params["backend"])
    for mark in request.node.iter_markers("backend"):
        for name in mark.args:
            need_backend(name)


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
    parser.addoption("--require-backend", default="", metavar="NAMES",
                     help="comma-separated backends that must run here (e.g. stalker,ptrace): "
                          "a test that needs one of them fails instead of skipping, and the "
                          "session fails when one cannot run (CI passes it)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backend(*names): the test needs these backends "
                                       "(skipped without them, failed under --require-backend)")
    names = [n.strip() for n in str(config.getoption("--require-backend")).split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(f"--require-backend: unknown backend {', '.join(unknown)} "
                                f"(choose from: {', '.join(ALL_BACKENDS)})")
    _required.clear()
    _required.update(names)


def _missing_required() -> list[tuple[str, str]]:
    return [(name, backend_probe(name)[1]) for name in sorted(_required)
            if not backend_probe(name)[0]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, reason in _missing_required():
        terminalreporter.write_line(
            f"REQUIRED BACKEND MISSING: {name} cannot run here: {reason}", red=True, bold=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A required backend that cannot run fails the session, even when no selected test
    needed it."""
    if _missing_required() and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """True when the long variants were asked for (``pytest --soak``): tests scale up
    their counts instead of skipping."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[other_user.OtherUserPython]:
    """An interpreter uid 65534 can run (the system's python of our version, with
    branchtrace and its dependencies on PYTHONPATH, copied world-readable when the
    checkout or the venv lies in a private directory). Checked once; when there is none
    the tests skip with the reason, but fail where CI is set (.ci/run sets it)."""
    tmp = Path(tempfile.mkdtemp(prefix="bt-nobody-"))
    try:
        got = other_user.setup(tmp)
        if isinstance(got, str):
            if os.environ.get("CI"):
                pytest.fail(f"CI: {got}", pytrace=False)
            pytest.skip(got)
        yield got
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
