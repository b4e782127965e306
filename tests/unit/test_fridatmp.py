"""Frida's stale helper copies are removed, and nothing that may be in use is."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from branchtrace.backends.stalker import fridatmp

HEX = "0123456789abcdef" * 2


def _copy(base: Path, name: str, age: float, files: tuple[str, ...] = ("helper",)) -> Path:
    d = base / name
    d.mkdir()
    for f in files:
        (d / f).write_bytes(b"x" * 100)
    past = time.time() - age
    os.utime(d, (past, past))
    return d


def test_an_old_copy_that_nothing_runs_is_removed_and_the_rest_stays(tmp_path: Path) -> None:
    stale = _copy(tmp_path, "frida-" + HEX, 3600)
    young = _copy(tmp_path, "frida-" + HEX[::-1], 10)
    other = _copy(tmp_path, "frida-notours", 3600)
    nested = _copy(tmp_path, "frida-" + "a" * 32, 3600)
    (nested / "sub").mkdir()
    os.utime(nested, (time.time() - 3600,) * 2)
    empty = _copy(tmp_path, "frida-" + "b" * 32, 3600, files=())

    removed = fridatmp.sweep(str(tmp_path))

    assert removed == [str(stale)]
    assert not stale.exists()
    for kept in (young, other, nested, empty):
        assert kept.exists()


def test_a_copy_whose_program_runs_is_kept_until_it_ends(tmp_path: Path) -> None:
    d = _copy(tmp_path, "frida-" + HEX, 3600, files=())
    sleeper = d / "helper"
    shutil.copy("/bin/sleep", sleeper)
    os.utime(d, (time.time() - 3600,) * 2)
    proc = subprocess.Popen([str(sleeper), "30"])
    try:
        assert fridatmp.sweep(str(tmp_path)) == []
        assert sleeper.exists()
    finally:
        proc.kill()
        proc.wait()
    assert fridatmp.sweep(str(tmp_path)) == [str(d)]
    assert not d.exists()


def test_a_missing_directory_removes_nothing(tmp_path: Path) -> None:
    assert fridatmp.sweep(str(tmp_path / "none")) == []
