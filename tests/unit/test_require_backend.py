"""``pytest --require-backend``: a backend that cannot run is a failure naming it, never a
quiet skip. Each case runs pytest in a child process on a small test file next to a copy
of tests/conftest.py, with Frida made unavailable by a ``frida`` module that cannot be
imported (first on PYTHONPATH), so the stalker backend's probe fails as it would on a
machine without Frida."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_backend

TESTS = Path(__file__).parent.parent
HELPERS = ["conftest.py", "other_user.py"]   # the conftest and what it imports

PER_BACKEND = """
import pytest
from conftest import ALL_BACKENDS

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_each(backend):
    pass
"""

MARKED_MODULE = """
import pytest

pytestmark = pytest.mark.backend("stalker")

def test_marked():
    pass
"""

NEEDS_NONE = """
def test_nothing_needed():
    pass
"""


def _pytest(tmp_path: Path, source: str, *args: str, frida: bool = False,
            **environ: str) -> tuple[int, str]:
    project = tmp_path / "project"
    project.mkdir()
    for name in HELPERS:
        shutil.copy(TESTS / name, project / name)
    (project / "test_case.py").write_text(source)
    env = {**os.environ, **environ}
    env.pop("BRANCHTRACE_BACKEND", None)
    env.pop("BRANCHTRACE_PROBE_CACHE", None)   # as in a shell: the conftest sets it
    if not frida:
        shadow = tmp_path / "no-frida"
        (shadow / "frida").mkdir(parents=True)
        (shadow / "frida" / "__init__.py").write_text(
            'raise ImportError("frida is made unavailable by the test")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsfE", "-q",
         "--rootdir", str(project), str(project), *args],
        capture_output=True, text=True, timeout=120, cwd=project, env=env)
    return result.returncode, result.stdout + result.stderr


def test_without_the_option_a_missing_backend_is_a_visible_skip(tmp_path):
    code, out = _pytest(tmp_path, PER_BACKEND)
    assert code == 0, out
    assert "1 passed, 1 skipped" in out
    assert "SKIPPED" in out and "backend stalker cannot run here" in out
    assert "frida" in out   # the reason: the probe's own words


def test_a_required_backend_that_cannot_run_fails_and_is_named(tmp_path):
    code, out = _pytest(tmp_path, PER_BACKEND, "--require-backend", "stalker,ptrace")
    assert code == 1, out
    assert "1 passed, 1 error" in out     # failed in its setup: an error, never a skip
    assert "ERROR test_case.py::test_each[stalker]" in out and "SKIPPED" not in out
    assert "backend stalker cannot run here" in out and "required by --require-backend" in out
    assert "REQUIRED BACKEND MISSING: stalker" in out
    assert "REQUIRED BACKEND MISSING: ptrace" not in out


def test_a_marked_module_fails_too(tmp_path):
    code, out = _pytest(tmp_path, MARKED_MODULE, "--require-backend", "stalker")
    assert code == 1, out
    assert "ERROR test_case.py::test_marked" in out and "backend stalker cannot run here" in out


def test_the_session_fails_even_when_no_selected_test_needs_it(tmp_path):
    code, out = _pytest(tmp_path, NEEDS_NONE, "--require-backend", "stalker")
    assert code == 1, out
    assert "1 passed" in out and "REQUIRED BACKEND MISSING: stalker" in out


def test_a_backend_that_can_run_passes_under_the_option(tmp_path):
    code, out = _pytest(tmp_path, NEEDS_NONE, "--require-backend", "ptrace")
    assert code == 0, out
    assert "1 passed" in out and "REQUIRED BACKEND MISSING" not in out


def test_with_frida_both_variants_run(tmp_path):
    need_backend("stalker")
    code, out = _pytest(tmp_path, PER_BACKEND, "--require-backend", "stalker,ptrace", frida=True)
    assert code == 0, out
    assert "2 passed" in out and "skipped" not in out


def test_a_failed_probe_kept_for_the_boot_is_not_used(tmp_path, monkeypatch):
    """The stalker backend keeps its probe's answer per Frida, kernel and boot; a test
    session ignores it, so one bad probe cannot turn the stalker tests into skips."""
    need_backend("stalker")
    from branchtrace.backends import Probe, stalker

    key = stalker._probe_key()
    assert key is not None
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("BRANCHTRACE_PROBE_CACHE")
    stalker._keep_probe(key, Probe(False, "a probe that failed once"))
    # outside a test session it would be believed for the rest of the boot
    assert stalker._cached_probe(key) == Probe(False, "a probe that failed once (cached)")
    code, out = _pytest(tmp_path, PER_BACKEND, "--require-backend", "stalker,ptrace",
                        frida=True)
    assert code == 0, out
    assert "2 passed" in out and "a probe that failed once" not in out


@pytest.mark.parametrize("names", ["stalkr", "ptrace,bogus"])
def test_an_unknown_name_is_a_usage_error(tmp_path, names):
    code, out = _pytest(tmp_path, NEEDS_NONE, "--require-backend", names)
    assert code == 4, out
    assert "--require-backend: unknown backend" in out
    assert names.split(",")[-1] in out
