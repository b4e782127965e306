"""history and crash read trace files a window at a time (reporters/history_stream.py,
tracefile/tail.py): the same output as the whole-trace code on recorded traces cut into
many chunks (with holes too), a closed pipe stops `history` at once, and memory does not
grow with the trace."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from branchtrace.cli import main as cli_main
from branchtrace.model import BRANCH_DTYPE, Gap
from branchtrace.reporters import crash, history, history_stream
from branchtrace.tracefile import open_trace, scan, to_trace
from branchtrace.tracefile.format import FRAME, RecordType
from branchtrace.tracefile.stream import Piece, pieces
from branchtrace.tracefile.tail import last_branches

from rechunk import rechunk
from test_tracefile import records
from test_tracefile_stream import _long_file

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture(params=["fib.btrace", "fib-crash.btrace"])
def cut(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A golden trace cut into 7-record chunks, read 5 branches at a time."""
    path = tmp_path / request.param
    assert rechunk(GOLDEN / request.param, path, 7) > 10
    monkeypatch.setattr(history_stream, "WINDOW", 5)
    return path


def _holed(src: Path, dst: Path) -> None:
    """``src`` with three of its chunks damaged (skipped: holes, gaps in the history)."""
    data = bytearray(src.read_bytes())
    chunks = [(o, n) for o, t, n in records(src) if t == RecordType.CHUNK]
    for k in (1, len(chunks) // 2, len(chunks) - 1):
        o, n = chunks[k]
        data[o + FRAME.size + n - 3] ^= 0x40
    dst.write_bytes(bytes(data))


def _streamed(path: Path, insns: bool, **options: object) -> str:
    tf = scan(path)
    trace = to_trace(tf, decode=False)

    def branches_of(tid: int) -> list[np.ndarray | Gap]:
        return [p.branches if isinstance(p, Piece) else p for p in pieces(tf, tid)]

    out = io.StringIO()
    if insns:
        history_stream.stream_insns(trace, branches_of, out, **options)  # type: ignore[arg-type]
    else:
        history_stream.stream_calls(trace, branches_of, out, **options)  # type: ignore[arg-type]
    return out.getvalue()


def _whole(path: Path, insns: bool, **options: object) -> str:
    out = io.StringIO()
    if insns:
        history.render_insns(open_trace(path), out, **options)  # type: ignore[arg-type]
    else:
        history.render_calls(open_trace(path), out, **options)  # type: ignore[arg-type]
    return out.getvalue()


CASES = [(False, {}), (False, {"insn_ranges": True, "lines": True}),
         (False, {"last": 4, "lines": True, "insn_ranges": True}), (False, {"indent": False}),
         (True, {}), (True, {"source": True}), (True, {"last": 9, "source": True})]


@pytest.mark.parametrize(("insns", "options"), CASES)
def test_streamed_history_is_the_whole_trace_history(cut: Path, insns: bool,
                                                     options: dict[str, object]) -> None:
    want = _whole(cut, insns, **options)
    assert want.count("\n") > 3
    assert _streamed(cut, insns, **options) == want


@pytest.mark.parametrize(("insns", "options"), CASES)
def test_streamed_history_places_the_gaps_of_missing_chunks(cut: Path, tmp_path: Path, insns: bool,
                                                            options: dict[str, object]) -> None:
    holed = tmp_path / "holed.btrace"
    _holed(cut, holed)
    if not insns and "last" not in options:
        # a return out of the first frame after a gap: the whole trace's depths are
        # shifted, those of the lines written before it not (analysis/callstream.py)
        options = {**options, "indent": False}
    want = _whole(holed, insns, **options)
    assert "gap:" in _whole(holed, insns)
    assert _streamed(holed, insns, **options) == want


def test_last_branches_read_from_the_end_are_the_last_branches(cut: Path, tmp_path: Path) -> None:
    holed = tmp_path / "holed.btrace"
    _holed(cut, holed)
    for path in (cut, holed):
        tf, trace = scan(path), open_trace(path)
        for tid in trace.threads:
            every = trace.branches(tid)
            for n in (1, 5, 8, 40, len(every) - 1, len(every) + 3):
                assert np.array_equal(last_branches(tf, tid, n), every[-n:]), (path, n)


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(list(argv)) == 0
    return out.getvalue()


@pytest.mark.parametrize("last", ["1", "16", "1000"])
def test_crash_from_the_tail_is_the_whole_trace_report(cut: Path, last: str) -> None:
    trace = open_trace(cut)
    for fmt in ("text", "json"):
        want = io.StringIO()
        crash.render_all(crash.to_report(trace, first=False), want, last=int(last), fmt=fmt)
        assert _cli("crash", str(cut), "--last", last, "--format", fmt) == want.getvalue()
    doc = json.loads(_cli("crash", str(cut), "--format", "json"))
    assert all(t["recorded"] > 0 for t in doc["threads"].values())


def test_history_stops_when_the_pipe_closes(tmp_path: Path) -> None:
    path = tmp_path / "long.btrace"
    _long_file(path, 40)                  # 2.6M branches: seconds of output
    proc = subprocess.Popen([sys.executable, "-m", "branchtrace", "history", "--insns", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()                   # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert first.startswith(b"1\t")
    assert err == b""                     # no traceback, no 'Broken pipe'


def _peak(argv: list[str]) -> int:
    tracemalloc.start()
    try:
        _cli(*argv)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# (--insns too, but its runs here are all distinct: slow under tracemalloc)
@pytest.mark.parametrize("argv", [["history", "--last", "3"], ["crash", "--last", "16"]])
def test_memory_does_not_grow_with_the_trace(tmp_path: Path, argv: list[str]) -> None:
    small, big = tmp_path / "small.btrace", tmp_path / "big.btrace"
    _long_file(small, 2)
    _long_file(big, 20)
    peak_small = _peak([argv[0], str(small), *argv[1:]])
    peak_big = _peak([argv[0], str(big), *argv[1:]])
    # ten times the branches (1.3M, 22 MB decoded): the peak grows by no more than the
    # file does (the scan keeps the chunks' compressed bytes), never by the branches
    grown = big.stat().st_size - small.stat().st_size
    assert peak_big - peak_small < 1.2 * grown + (1 << 20), (peak_small, peak_big, grown)
    assert peak_big < 20 * (1 << 16) * BRANCH_DTYPE.itemsize     # less than the branches
