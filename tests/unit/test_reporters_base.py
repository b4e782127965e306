"""The shared output helpers: '-' is stdout, a failed report leaves no file behind."""

from __future__ import annotations

import os

import pytest

from branchtrace.errors import UsageError
from branchtrace.reporters.base import Options, check_output, write_bytes_to, write_report, write_to


def test_dash_is_stdout(capsys):
    write_to("-", lambda out: out.write("hello\n"))
    assert capsys.readouterr().out == "hello\n"


def test_file_written(tmp_path):
    path = tmp_path / "r.txt"
    write_to(str(path), lambda out: out.write("x"))
    assert path.read_text() == "x"
    write_bytes_to(str(path), lambda out: out.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"


def test_half_written_file_removed(tmp_path):
    path = tmp_path / "r.txt"

    def fail(out):
        out.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_to(str(path), fail)
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt):
        write_to(str(path), lambda out: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert not path.exists()


def test_special_file_kept():
    with pytest.raises(RuntimeError):
        write_to(os.devnull, lambda out: (_ for _ in ()).throw(RuntimeError()))
    assert os.path.exists(os.devnull)


def test_bad_paths(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        check_output(str(tmp_path / "no" / "r.txt"))
    with pytest.raises(UsageError, match="is a directory"):
        write_to(str(tmp_path), lambda out: None)


class _Echo:
    """A reporter that writes its data and warns about what it was asked."""

    def __init__(self, binary: bool) -> None:
        self.name, self.binary, self.extension = "echo", binary, ".echo"

    def render(self, data, out, options):
        out.write(data)
        return [f"tid {options.tid}"]


def test_write_report_opens_the_stream_the_reporter_declares(tmp_path, capsys):
    path = tmp_path / "r.bin"
    assert write_report(_Echo(binary=True), b"\x00\xff", str(path), Options(tid=7)) == ["tid 7"]
    assert path.read_bytes() == b"\x00\xff"
    assert write_report(_Echo(binary=False), "text\n", "-") == ["tid None"]
    assert capsys.readouterr().out == "text\n"


def test_write_report_never_sends_bytes_to_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    with pytest.raises(UsageError, match="the output is binary"):
        write_report(_Echo(binary=True), b"\x00", "-")
