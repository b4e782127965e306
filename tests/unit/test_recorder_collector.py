"""The engine's collector, in stream mode with a trace file: the file gets the block
table rows a chunk needs before the chunk, so a file cut short (branchtrace killed)
decodes every whole chunk in it."""

from __future__ import annotations

import numpy as np

from branchtrace.recorder import Collector
from branchtrace.store import FROMTO_DTYPE
from branchtrace.store.blocks import make_table


class FakeWriter:
    def __init__(self) -> None:
        self.log: list[tuple[str, int, int]] = []
        self.records = 0
        self.size = 0

    def write_blocks(self, rows: np.ndarray, first_id: int) -> None:
        self.log.append(("blocks", first_id, len(rows)))

    def write_module(self, module: object) -> None:
        self.log.append(("module", 0, 0))

    def write_chunk(self, tid: int, records: np.ndarray, first: int, last: int) -> None:
        self.log.append(("chunk", tid, len(records)))
        self.records += len(records)


class GrowingTable:
    """A backend whose target has compiled ``compiled`` blocks so far."""

    def __init__(self) -> None:
        self.compiled = 0
        self.asked = 0
        self.table = make_table([(0x1000 + 16 * i, 0x1000 + 16 * i + 8, 0x1000 + 16 * i + 10, 1)
                                 for i in range(100)])

    def live(self, first_id: int) -> tuple[np.ndarray, list[object]]:
        self.asked += 1
        return self.table[first_id:self.compiled], []


def _collector() -> tuple[Collector, FakeWriter, GrowingTable]:
    writer, backend = FakeWriter(), GrowingTable()
    return Collector(writer, None, None, 0, backend), writer, backend  # type: ignore[arg-type]


def test_a_chunk_with_new_block_ids_gets_their_rows_first() -> None:
    sink, writer, backend = _collector()
    backend.compiled = 10
    sink.take(7, np.arange(10, dtype=np.uint32))
    # right after (well within the half second between regular asks), new blocks run
    backend.compiled = 30
    sink.take(7, np.arange(5, 30, dtype=np.uint32))
    assert writer.log == [("blocks", 0, 10), ("chunk", 7, 10),
                          ("blocks", 10, 20), ("chunk", 7, 25)]


def test_a_chunk_of_known_blocks_does_not_ask_again() -> None:
    sink, writer, backend = _collector()
    backend.compiled = 20
    sink.take(7, np.arange(20, dtype=np.uint32))
    for _ in range(5):
        sink.take(7, np.arange(20, dtype=np.uint32)[::-1].copy())
    assert backend.asked == 1
    assert [e[0] for e in writer.log] == ["blocks"] + ["chunk"] * 6


def test_from_to_records_are_not_block_ids() -> None:
    sink, _, backend = _collector()
    records = np.zeros(4, FROMTO_DTYPE)
    sink.take(7, records)
    sink.take(7, records)
    assert backend.asked == 1       # the first chunk's regular ask only
