"""conftest.nobody_python: an interpreter uid 65534 can run. Without one (here: no
``setpriv`` on PATH) the tests that need it skip with the reason, and fail where CI is
set. Each case runs pytest in a child process on a small test file next to a copy of
tests/conftest.py (and the helpers it imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from other_user import SETPRIV

TESTS = Path(__file__).parent.parent
HELPERS = ["conftest.py", "other_user.py"]   # the conftest and what it imports

USES_IT = """
def test_as_nobody(nobody_python):
    result = nobody_python.run([nobody_python.python, "-c", "import os; print(os.getuid())"])
    assert result.stdout.strip() == "65534", result.stderr
    result = nobody_python.run(nobody_python.argv("doctor"))
    assert "ptrace" in result.stdout, result.stderr
"""


def _pytest(tmp_path: Path, ci: bool, setpriv: bool) -> tuple[int, str]:
    project = tmp_path / "project"
    project.mkdir()
    for name in HELPERS:
        shutil.copy(TESTS / name, project / name)
    (project / "test_case.py").write_text(USES_IT)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    if not setpriv:   # a PATH without setpriv
        bare = tmp_path / "bin"
        bare.mkdir()
        env["PATH"] = str(bare)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsfE", "-q",
         "--rootdir", str(project), str(project)],
        capture_output=True, text=True, timeout=300, cwd=project, env=env)
    return result.returncode, result.stdout + result.stderr


def test_without_it_the_test_skips_with_the_reason(tmp_path):
    code, out = _pytest(tmp_path, ci=False, setpriv=False)
    assert code == 0, out
    assert "1 skipped" in out and "needs root and setpriv to run as another user" in out


def test_without_it_ci_fails(tmp_path):
    code, out = _pytest(tmp_path, ci=True, setpriv=False)
    assert code == 1, out
    assert "1 error" in out and "CI: needs root and setpriv" in out and "skipped" not in out


def test_here_it_runs_as_uid_65534(tmp_path):
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv to run as another user")
    code, out = _pytest(tmp_path, ci=True, setpriv=True)
    assert code == 0, out
    assert "1 passed" in out
