"""tracefile/reader.py keeps no chunk body in memory: a chunk is read from the file when
a reader asks for it, checked against the record the scan checked.

So the memory of a reader (``branchtrace.open`` then ``iter_branches``, stats, coverage,
history) does not grow with the file; and a file changed after it was opened reads
as corrupt chunks (gaps), never as other data."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import numpy as np

import branchtrace
from branchtrace.model import Gap
from branchtrace.tracefile import CORRUPT, scan
from branchtrace.tracefile.format import CHUNK_HEAD, FRAME
from branchtrace.tracefile.stream import Piece, ThreadStream, joined

from test_tracefile_stream import _long_file


def _scan_peak(path: Path) -> int:
    tracemalloc.start()
    try:
        tf = scan(path)
        assert sum(c.size for c in tf.chunks[7]) > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_scan_keeps_no_chunk_in_memory(tmp_path: Path) -> None:
    small, big = tmp_path / "small.btrace", tmp_path / "big.btrace"
    _long_file(small, 4)
    _long_file(big, 40)
    assert big.stat().st_size > 9 * small.stat().st_size
    peak_small, peak_big = _scan_peak(small), _scan_peak(big)
    # one record read at a time (a chunk's compressed body), a few hundred bytes per
    # chunk kept: not ten times the file
    assert peak_big < peak_small + 200 * 40 + (1 << 20), (peak_small, peak_big)


def test_the_bodies_are_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "t.btrace"
    _long_file(path, 3)
    tf = scan(path)
    chunks = tf.chunks[7]
    assert [len(c.body) for c in chunks] == [c.size for c in chunks]
    data = path.read_bytes()
    for c in chunks:
        at = c.offset + FRAME.size + CHUNK_HEAD.size
        assert c.body == data[at:at + c.size]


def test_a_file_changed_after_the_scan_reads_as_corrupt_chunks(tmp_path: Path) -> None:
    path = tmp_path / "t.btrace"
    _long_file(path, 3)
    tf = scan(path)
    second = tf.chunks[7][1]
    data = bytearray(path.read_bytes())
    data[second.offset + 40] ^= 0xFF                 # inside its body: the CRC no longer holds
    with open(path, "r+b") as f:                     # the same inode, as a writer would
        f.write(data)
    assert second.body == b""
    items = list(ThreadStream(tf, 7))
    head = second.head
    assert [g for g in items if isinstance(g, Gap)] == [Gap(7, head.first_index, head.count,
                                                             CORRUPT)]
    assert len(joined(iter(items))) == (3 << 16) - head.count
    with open(path, "r+b") as f:                     # cut short: the same
        f.truncate(second.offset + 10)
    assert second.body == b"" and tf.chunks[7][2].body == b""


def test_the_file_is_closed_when_its_chunks_are_gone(tmp_path: Path) -> None:
    path = tmp_path / "t.btrace"
    _long_file(path, 2)
    before = len(os.listdir("/proc/self/fd"))
    with branchtrace.open(path) as t:
        assert len(os.listdir("/proc/self/fd")) == before + 1
        n = sum(len(p.branches) for p in t.iter_branches() if isinstance(p, Piece))
        assert n == 2 << 16
    del t
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
    assert np.all(joined(ThreadStream(scan(path), 7))["kind"] > 0)
