"""The STACK record: the registers and a copy of the stack of a thread that died of a
signal, so that a report read from the file can show its call stack (symbols/unwind.py
walks it offline, with the module maps of its process).

Payload (little-endian): ``pid u32, tid u32, base u64, count u32``, then ``count`` pairs
``register u32, value u64`` (DWARF register numbers: 0 rax ... 7 rsp, 16 rip), then the
stack's bytes from ``base`` as a blob (``u32`` length, then one zstd frame of them). A
file holds at most one STACK record per (pid, tid); the last one read holds.
"""

from __future__ import annotations

import dataclasses

import zstandard

from ..model import ExitInfo, StackSnapshot
from .format import Malformed, Packer, Unpacker

#: The largest stack copy a record may hold once decompressed.
MAX_STACK_BYTES = 1 << 20


def encode_stack(pid: int, snapshot: StackSnapshot) -> bytes:
    p = Packer().pack("IIQI", pid, snapshot.tid, snapshot.base, len(snapshot.registers))
    for number, value in snapshot.registers:
        p.pack("IQ", number, value & 0xFFFF_FFFF_FFFF_FFFF)
    return p.blob(zstandard.ZstdCompressor(level=3).compress(snapshot.data)).done()


def decode_stack(payload: bytes | memoryview) -> tuple[int, StackSnapshot]:
    """(pid, the snapshot); :class:`Malformed` when the payload does not hold one."""
    u = Unpacker(payload)
    pid, tid, base, count = u.unpack("IIQI")
    if count > 64:
        raise Malformed("too many registers")
    registers = tuple((u.one("I"), u.one("Q")) for _ in range(count))
    body = u.blob()
    size = zstandard.frame_content_size(body)
    if not 0 <= size <= MAX_STACK_BYTES:
        raise Malformed("bad stack copy")
    data = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_STACK_BYTES)
    return pid, StackSnapshot(tid, registers, base, data)


def with_stack(exit: ExitInfo, pid: int, stacks: dict[tuple[int, int], StackSnapshot]
               ) -> ExitInfo:
    """``exit`` with the stack of the thread that took the fatal signal, if recorded."""
    if exit.tid is None:
        return exit
    found = stacks.get((pid, exit.tid))
    return exit if found is None else dataclasses.replace(exit, stack=found)
