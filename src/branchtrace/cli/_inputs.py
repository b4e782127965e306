"""The trace files a reader command is given: FILE... arguments, each a trace file or a
directory (every ``*.btrace`` directly inside it, sorted by name).

A test suite is many runs: ``branchtrace stats|sql|export`` (and any command that
combines runs) take them all at once. Each bad argument is a one-line error naming it:
missing or not a trace file (TraceFormatError, exit 6, as for one file), a directory
without trace files (UsageError); and ``-o`` may name none of them (nor a file found
inside a directory given).

Example, for a command that combines runs (one file read at a time: a scanned file
holds its compressed chunks in memory)::

    for run, path in named_runs(expand_inputs(args.files, args.output)):
        ...   # scan(path) in a function of its own, so that it goes before the next
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import TraceFormatError, UsageError
from ._record import same_file

#: What a trace file's name ends with, for the files taken from a directory.
SUFFIX = ".btrace"


def expand_inputs(args: Sequence[str], output: str | None = None) -> list[str]:
    """The trace files ``args`` name, in order: a file as given, a directory as the
    ``*.btrace`` files directly inside it, sorted. Raises a one-line UsageError for an
    argument that does not exist, a file that is not a trace file, a directory with no
    trace file, no argument at all, or an ``output`` (other than ``-``) that is one of
    the arguments or of the files found."""
    if not args:
        raise UsageError("give one or more trace files (or directories of them)")
    files: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = _traces_in(arg)
            if not found:
                raise UsageError(f"{arg}: a directory with no trace file (*{SUFFIX}) in it")
            files += found
        elif not os.path.lexists(arg):
            raise TraceFormatError(f"{arg}: no such file")   # as the reader says it
        else:
            _check_trace(arg)
            files.append(arg)
    if output is not None and output != "-":
        for path in [*args, *files]:
            if same_file(path, output):
                what = "trace file" if path in files else "directory of trace files"
                raise UsageError(f"-o {output} is the {what} being read: choose another name")
    return files


def named_runs(files: list[str]) -> list[tuple[str, str]]:
    """(run id, path) of each file: the ids of ``branchtrace sql``'s ``run`` column (the
    file's name without ``.btrace``; ``-2``, ``-3`` after a name already taken)."""
    from ..query.runs import run_ids

    return list(zip(run_ids(files), files))


def _traces_in(directory: str) -> list[str]:
    """The trace files directly inside ``directory``, sorted by name (a one-line error
    when it cannot be listed)."""
    try:
        names = sorted(e.name for e in os.scandir(directory)
                       if e.name.endswith(SUFFIX) and e.is_file())
    except OSError as err:
        raise UsageError(f"{directory}: cannot list: {err.strerror or err}") from None
    return [str(Path(directory) / name) for name in names]


def _check_trace(path: str) -> None:
    """A one-line UsageError unless ``path`` is a regular file that begins as a trace
    file does (the scan that reads it later checks the rest, one line too)."""
    from ..tracefile.format import MAGIC

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise TraceFormatError(f"{path}: not a regular file, not a trace file")
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read: {err.strerror or err}") from None
    if not head:
        raise TraceFormatError(f"{path}: is empty, not a trace file")
    if not MAGIC.startswith(head):
        raise TraceFormatError(f"{path}: not a branchtrace trace file")
