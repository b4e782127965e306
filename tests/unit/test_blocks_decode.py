"""Decoding block-id sequences (the BLOCKID encoding) with hand-built block tables."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from branchtrace import decode as decode_module
from branchtrace.decode import decode
from branchtrace.errors import TraceFormatError
from branchtrace.model import BRANCH_DTYPE, BranchKind
from branchtrace.store import Encoding
from branchtrace.store.blocks import (
    BLOCK_DTYPE,
    FLAG_ASYNC,
    FLAG_FOREIGN,
    FLAG_HOOKED,
    FLAG_VALID,
    TABLE_HEADER_DTYPE,
    TABLE_HEADER_SIZE,
    create_table,
    make_table,
    read_table,
)

K = BranchKind

# A little program, as blocks (start, last instruction, end, kind of the last one):
#   0: main    0x1000..0x1010, ends with `call work`         -> 0x2000
#   1: main'   0x1010..0x1020, ends with `jne main`          (the loop back)
#   2: work    0x2000..0x2008, ends with `je 0x2010`
#   3: work'   0x2008..0x2010, ends with `jmp 0x2018`        (the else branch)
#   4: work''  0x2010..0x2018, no branch: Stalker split it, falls through into 5
#   5: work''' 0x2018..0x2020, ends with `ret`
#   6: main''  0x1020..0x1030, ends with `ret`
#   7: exit    0x3000..0x3004, ends with `call *rax`
#   8: tail    0x1030..0x1034, ends with `syscall` (a split after it)
TABLE = make_table([
    (0x1000, 0x100B, 0x1010, K.CALL),
    (0x1010, 0x101E, 0x1020, K.COND),
    (0x2000, 0x2006, 0x2008, K.COND),
    (0x2008, 0x200D, 0x2010, K.JUMP),
    (0x2010, 0x2014, 0x2018, K.OTHER),
    (0x2018, 0x201F, 0x2020, K.RETURN),
    (0x1020, 0x102F, 0x1030, K.RETURN),
    (0x3000, 0x3002, 0x3004, K.INDIRECT_CALL),
    (0x1030, 0x1032, 0x1034, K.SYSCALL),
])


def branches(ids: list[int], table: np.ndarray = TABLE) -> list[tuple[int, int, BranchKind]]:
    out = decode(Encoding.BLOCKID, np.array(ids, dtype="<u4"), table)
    assert out.dtype == BRANCH_DTYPE
    return [(int(b["from_ip"]), int(b["to_ip"]), K(int(b["kind"]))) for b in out]


def test_calls_conditions_jumps_and_returns():
    # main calls work twice: once through the je (taken), once through the jmp
    ids = [0, 2, 4, 5, 1, 0, 2, 3, 5, 1, 6]
    assert branches(ids) == [
        (0x100B, 0x2000, K.CALL),     # call work
        (0x2006, 0x2010, K.COND),     # je taken
        # 4 -> 5 falls through (Stalker's split): no branch
        (0x201F, 0x1010, K.RETURN),   # ret back to main
        (0x101E, 0x1000, K.COND),     # jne main, the loop
        (0x100B, 0x2000, K.CALL),
        # 2 -> 3: the je was not taken, work falls through: no branch
        (0x200D, 0x2018, K.JUMP),     # jmp over the then-branch
        (0x201F, 0x1010, K.RETURN),
        # 1 -> 6: jne not taken, falls through: no branch
    ]


def test_fall_through_transitions_are_dropped():
    assert branches([0, 1, 6]) == []     # 0 -> 1 and 1 -> 6 are consecutive in memory
    assert branches([2, 3]) == []


def test_empty_and_single_record():
    assert branches([]) == []
    assert branches([5]) == []


def test_indirect_call_and_a_block_that_does_not_fall_through():
    # 8 ends with a syscall that did not come back to its fall-through (sigreturn, say)
    assert branches([7, 0, 8, 2]) == [
        (0x3002, 0x1000, K.INDIRECT_CALL),
        (0x100B, 0x1030, K.CALL),
        (0x1032, 0x2000, K.SYSCALL),
    ]
    # a split block (no branch instruction) that did not fall through keeps OTHER
    assert branches([4, 0]) == [(0x2014, 0x1000, K.OTHER)]


def test_unknown_ids_break_the_chain():
    table = TABLE.copy()
    table["flags"][3] = 0                # id 3 was handed out but never completed
    # 2 -> 3 and 3 -> 5 involve an unknown block; 99 is past the table (1 -> 99 -> 0)
    assert branches([0, 2, 3, 5, 1, 99, 0], table) == [
        (0x100B, 0x2000, K.CALL),
        (0x201F, 0x1010, K.RETURN),
    ]


def test_transitions_between_two_foreign_blocks_are_dropped():
    table = TABLE.copy()
    table["flags"][[2, 3, 5]] = FLAG_VALID | FLAG_FOREIGN   # work is outside --only
    assert branches([0, 2, 3, 5, 1], table) == [
        (0x100B, 0x2000, K.CALL),           # into the foreign code: kept
        (0x201F, 0x1010, K.RETURN),         # back from it: kept
    ]                                       # 3 -> 5 (the jmp inside work): dropped


def test_a_hooked_function_entry_is_no_branch():
    # exit+0: the tracer's hook (`jmp trampoline`); its code resumes the function at exit+9
    table = np.concatenate([TABLE, make_table([(0x4000, 0x4000, 0x4005, K.JUMP),
                                               (0x4009, 0x4010, 0x4015, K.CALL)])])
    table["flags"][9] |= FLAG_HOOKED
    assert branches([0, 9, 10, 2], table) == [
        (0x100B, 0x4000, K.CALL),           # the call to the hooked function
        (0x4010, 0x2000, K.CALL),           # 9 -> 10 is the hook resuming: not a branch
    ]
    table["flags"][9] = FLAG_VALID          # without the flag it would be a jump
    assert (0x4000, 0x4009, K.JUMP) in branches([0, 9, 10, 2], table)


def test_a_signal_handler_is_entered_by_an_interrupt():
    # 9 is the synthetic block of a handler at 0x5000 (kind RETURN, flag ASYNC); after the
    # handler the interrupted block 2 is recorded again, and the thread goes on in it
    table = np.concatenate([TABLE, make_table([(0x5000, 0x5000, 0x5000, K.RETURN)])])
    table["flags"][9] |= FLAG_ASYNC
    assert branches([0, 2, 9, 2, 3], table) == [
        (0x100B, 0x2000, K.CALL),
        (0x2006, 0x5000, K.INTERRUPT),      # into the handler, from where the thread was
        (0x5000, 0x2000, K.RETURN),         # out of it, back into the interrupted block
        # 2 -> 3 falls through as before
    ]


def test_decode_is_chunked_without_changing_the_result(monkeypatch):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, len(TABLE), 5000).astype("<u4")
    whole = decode(Encoding.BLOCKID, ids, TABLE)
    monkeypatch.setattr(decode_module, "_CHUNK", 17)
    assert np.array_equal(decode(Encoding.BLOCKID, ids, TABLE), whole)
    starts, ends = TABLE["start"][ids], TABLE["end"][ids]
    assert len(whole) == int(np.count_nonzero(starts[1:] != ends[:-1]))


def test_blockid_needs_a_table():
    with pytest.raises(TraceFormatError):
        decode(Encoding.BLOCKID, np.zeros(3, "<u4"))


def test_table_file_round_trip(tmp_path):
    path = create_table(tmp_path, "run", capacity=8)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_table(tmp_path, "run", capacity=8)   # never an existing file
    # what the target does: take ids from the counter, write entries
    rows = make_table([(0x10, 0x14, 0x18, K.CALL), (0x20, 0x20, 0x22, K.RETURN)])
    head = np.frombuffer(path.read_bytes()[:TABLE_HEADER_SIZE], TABLE_HEADER_DTYPE).copy()
    head["count"] = 11                  # 11 ids handed out, 8 fit: 3 blocks overflowed
    with open(path, "r+b") as f:
        f.write(head.tobytes())
        f.write(rows.tobytes())
    table, overflow = read_table(path)
    assert overflow == 3
    assert len(table) == 8 and table.dtype == BLOCK_DTYPE
    assert np.array_equal(table[:2], rows)
    assert not (table["flags"][2:] & FLAG_VALID).any()


def test_table_file_is_checked(tmp_path):
    bad = tmp_path / "bad.blocks"
    bad.write_bytes(b"NOTATABL" + bytes(56))
    with pytest.raises(TraceFormatError):
        read_table(bad)


def test_complete_rows_of_a_table_being_written(tmp_path):
    from branchtrace.store.blocks import read_complete_rows

    path = create_table(tmp_path, "live", capacity=8)
    rows = make_table([(0x10 * i, 0x10 * i + 4, 0x10 * i + 8, K.JUMP) for i in range(1, 6)])
    rows["flags"][3] = 0                # id 3 handed out, its entry not finished yet
    head = np.frombuffer(path.read_bytes()[:TABLE_HEADER_SIZE], TABLE_HEADER_DTYPE).copy()
    head["count"] = 5
    with open(path, "r+b") as f:
        f.write(head.tobytes())
        f.write(rows.tobytes())
    assert np.array_equal(read_complete_rows(path, 0), rows[:3])   # stops before id 3
    assert np.array_equal(read_complete_rows(path, 1), rows[1:3])
    assert len(read_complete_rows(path, 3)) == 0
    assert len(read_complete_rows(path, 7)) == 0 and len(read_complete_rows(path, 99)) == 0
    assert len(read_complete_rows(tmp_path / "missing.blocks", 0)) == 0


def test_a_table_written_in_pieces_reads_back_whole(tmp_path):
    """A stream file gets table rows as the run goes, then the rest at the end."""
    from branchtrace import open as open_trace
    from branchtrace.tracefile.format import FileHeader, ThreadInfo
    from branchtrace.tracefile.writer import TraceWriter, end_info
    from branchtrace.model import ExitInfo

    table = make_table([(0x100, 0x104, 0x108, K.JUMP), (0x200, 0x204, 0x208, K.RETURN),
                        (0x300, 0x304, 0x308, K.CALL)])
    header = FileHeader(int(Encoding.BLOCKID), 2, 4, 1024, 256, 1, 0, "stalker", "test", ("x",))
    w = TraceWriter.create(tmp_path / "t.btrace", header)
    w.write_blocks(table[:2], 0)
    w.write_chunk(7, np.array([0, 1, 2, 0], "<u4"), 1, 2)
    w.write_blocks(table[2:], 2)
    w.write_blocks(table[:1], 0)         # a repeated piece does no harm
    w.write_thread(ThreadInfo(7, 4, 4, 0, 0))
    w.finish(end_info(ExitInfo("exited", 0), 1, 3))
    t = open_trace(tmp_path / "t.btrace")
    assert t.notes == []
    assert t.branches(7)["to_ip"].tolist() == [0x200, 0x300, 0x100]


def test_addresses_above_2_to_the_53_come_out_exact_and_without_a_warning():
    """The kernel's vsyscall page is at 0xffffffffff600000: np.append(uint64 column, 0)
    went through float64, which rounded 0xffffffffff600007 to ...600000, made
    0xfffffffffffffff0 into 0, and warned ("invalid value encountered in cast") on the
    user's terminal."""
    table = make_table([
        (0x1000, 0x1004, 0x1008, K.CALL),
        (0xffffffffff600007, 0xffffffffff600009, 0xfffffffffffffff0, K.RETURN),
        (0x1008, 0x100C, 0x1010, K.RETURN),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode(Encoding.BLOCKID, np.array([0, 1, 2], dtype="<u4"), table)
    assert out["from_ip"].tolist() == [0x1004, 0xffffffffff600009]
    assert out["to_ip"].tolist() == [0xffffffffff600007, 0x1008]
