"""Children under the stalker backend (docs/stalker.md, "Children"): every run of a
program that forks, or of a shell pipeline, must end as natively (output, status), never
hang, and record each child. 3 runs each, 50 / 20 under --soak (with two busy loops
running, the figures in docs/stalker.md: 0 hangs)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import cli

pytestmark = pytest.mark.backend("stalker")


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_forking_programs_never_hang(build, soak, mode):
    exe = build("stalker_fork_n")
    expected = subprocess.run([str(exe), "3"], capture_output=True, text=True, timeout=60)
    for _ in range(25 if soak else 2):
        run = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never",
                  "--", str(exe), "3", timeout=120)
        assert (run.returncode, run.stdout) == (0, expected.stdout), run.stderr


def test_shell_pipelines_never_hang(build, soak):
    exe = build("stalker_fork_n")
    argv = ["sh", "-c", f"{exe} 2 | cat; exit 4"]
    expected = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert expected.returncode == 4
    for i in range(20 if soak else 2):
        mode = ("ring", "stream")[i % 2]
        run = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never",
                  "--", *argv, timeout=120)
        assert (run.returncode, run.stdout) == (4, expected.stdout), run.stderr
