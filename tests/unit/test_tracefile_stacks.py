"""The STACK record (tracefile/stacks.py): round trip, damage, matching to an exit."""

from __future__ import annotations

import pytest

from branchtrace.model import ExitInfo, StackSnapshot
from branchtrace.tracefile.format import Malformed
from branchtrace.tracefile.stacks import decode_stack, encode_stack, with_stack

SNAP = StackSnapshot(7, tuple((i, 0x1000 * i + 1) for i in range(17)), 0x7FFF0000,
                     bytes(range(256)) * 64)


def test_round_trip():
    pid, got = decode_stack(encode_stack(42, SNAP))
    assert pid == 42 and got == SNAP and got.register(7) == 0x7001 and got.register(99) is None


@pytest.mark.parametrize("cut", [0, 10, 20, 40])
def test_a_cut_payload_is_malformed(cut):
    import zstandard   # the reader skips a record that raises either (tracefile/reader.py)
    with pytest.raises((Malformed, zstandard.ZstdError)):
        decode_stack(encode_stack(42, SNAP)[:cut])


def test_matched_to_the_exit_by_pid_and_tid():
    died = ExitInfo("signaled", signal=11, tid=7)
    stacks = {(42, 7): SNAP}
    assert with_stack(died, 42, stacks).stack == SNAP
    assert with_stack(died, 43, stacks).stack is None              # another process
    assert with_stack(ExitInfo("exited", code=0), 42, stacks).stack is None
    assert with_stack(died, 42, stacks) == died                     # not part of equality
