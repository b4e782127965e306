"""cli/_inputs.py: FILE... arguments, trace files and directories of them."""

from __future__ import annotations

import os

import pytest

from branchtrace.cli._inputs import expand_inputs
from branchtrace.errors import TraceFormatError, UsageError
from branchtrace.tracefile.format import MAGIC


def trace(path, body: bytes = b"") -> str:
    path.write_bytes(MAGIC + body)       # enough for the check; the scan reads the rest
    return str(path)


def test_files_as_given_directories_sorted(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    for name in ("b.btrace", "a.btrace", "c.btrace"):
        trace(d / name)
    (d / "notes.txt").write_text("x")
    (d / "sub").mkdir()
    trace(d / "sub" / "d.btrace")
    one = trace(tmp_path / "z.btrace")
    assert expand_inputs([one, str(d)]) == [one] + [str(d / n) for n in
                                                   ("a.btrace", "b.btrace", "c.btrace")]
    assert expand_inputs([one, one]) == [one, one]       # as given: twice is two runs


def test_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "text").write_text("hello, not a trace\n")
    (tmp_path / "nothing").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    good = trace(tmp_path / "good.btrace")
    for arg, words in ((empty, "empty: a directory with no trace file"),
                       (tmp_path / "missing", "missing: no such file"),
                       (tmp_path / "text", "text: not a branchtrace trace file"),
                       (tmp_path / "nothing", "nothing: is empty"),
                       (tmp_path / "fifo", "fifo: not a regular file")):
        kind = UsageError if arg == empty else TraceFormatError     # exit 2 / exit 6
        with pytest.raises(kind, match=words):
            expand_inputs([good, str(arg)])
    with pytest.raises(UsageError, match="one or more"):
        expand_inputs([])
    with pytest.raises(UsageError, match="is the trace file being read"):
        expand_inputs([str(tmp_path)], good)
    with pytest.raises(UsageError, match="is the directory of trace files being read"):
        expand_inputs([str(tmp_path)], str(tmp_path))
    assert expand_inputs([good], "-") == [good]
    assert expand_inputs([good], str(tmp_path / "out.txt")) == [good]
