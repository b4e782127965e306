"""The shared output helper: '-' is stdout, a failed report leaves no file behind."""

from __future__ import annotations

import os

import pytest

from branchtrace.errors import UsageError
from branchtrace.reporters.base import check_output, render, render_bytes


def test_dash_is_stdout(capsys):
    render("-", lambda out: out.write("hello\n"))
    assert capsys.readouterr().out == "hello\n"


def test_file_written(tmp_path):
    path = tmp_path / "r.txt"
    render(str(path), lambda out: out.write("x"))
    assert path.read_text() == "x"
    render_bytes(str(path), lambda out: out.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"


def test_half_written_file_removed(tmp_path):
    path = tmp_path / "r.txt"

    def fail(out):
        out.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        render(str(path), fail)
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt):
        render(str(path), lambda out: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert not path.exists()


def test_special_file_kept():
    with pytest.raises(RuntimeError):
        render(os.devnull, lambda out: (_ for _ in ()).throw(RuntimeError()))
    assert os.path.exists(os.devnull)


def test_bad_paths(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        check_output(str(tmp_path / "no" / "r.txt"))
    with pytest.raises(UsageError, match="is a directory"):
        render(str(tmp_path), lambda out: None)
