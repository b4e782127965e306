"""Instruction classification: the kind of every x86-64 control transfer."""

from __future__ import annotations

import pytest

from branchtrace.isa import NOT_A_BRANCH, InsnCache, classify
from branchtrace.model import BranchKind


@pytest.mark.parametrize("code, kind, size", [
    ("e800000000", BranchKind.CALL, 5),
    ("ffd0", BranchKind.INDIRECT_CALL, 2),          # call rax
    ("ff1500000000", BranchKind.INDIRECT_CALL, 6),  # call [rip]
    ("c3", BranchKind.RETURN, 1),
    ("f3c3", BranchKind.RETURN, 2),                 # rep ret
    ("c20800", BranchKind.RETURN, 3),               # ret 8
    ("7405", BranchKind.COND, 2),                   # je
    ("0f8400010000", BranchKind.COND, 6),           # je rel32
    ("e302", BranchKind.COND, 2),                   # jrcxz
    ("e2fe", BranchKind.COND, 2),                   # loop
    ("eb05", BranchKind.JUMP, 2),
    ("e900010000", BranchKind.JUMP, 5),
    ("ffe0", BranchKind.INDIRECT_JUMP, 2),          # jmp rax
    ("f2ffe0", BranchKind.INDIRECT_JUMP, 3),        # bnd jmp rax
    ("3effe0", BranchKind.INDIRECT_JUMP, 3),        # notrack jmp rax
    ("ff2500000000", BranchKind.INDIRECT_JUMP, 6),  # jmp [rip] (a PLT entry)
    ("0f05", BranchKind.SYSCALL, 2),
    ("cd80", BranchKind.SYSCALL, 2),
    ("cc", BranchKind.OTHER, 1),                    # int3
    ("0f0b", BranchKind.OTHER, 2),                  # ud2
    ("4889c3", NOT_A_BRANCH, 3),                    # mov rbx, rax
    ("f3a4", NOT_A_BRANCH, 2),                      # rep movsb: repeats at the same pc
    ("f30f1efa", NOT_A_BRANCH, 4),                  # endbr64
])
def test_classify(code, kind, size):
    insn = classify(bytes.fromhex(code), 0x401000)
    assert insn is not None
    assert insn.kind == kind
    assert insn.size == size
    assert insn.fallthrough == 0x401000 + size


def test_undecodable_bytes():
    assert classify(b"\x0f", 0x1000) is None


def test_cache_reads_once_and_survives_bad_code():
    reads = []
    memory = {0x1000: bytes.fromhex("e800000000"), 0x2000: b"\x0f"}

    def read(address: int, n: int) -> bytes:
        reads.append(address)
        if address not in memory:
            raise OSError(5, "EIO")
        return memory[address]

    cache = InsnCache(read)
    assert cache.get(0x1000).kind == BranchKind.CALL
    assert cache.get(0x1000).kind == BranchKind.CALL
    assert reads == [0x1000]
    bad = cache.get(0x2000)
    assert (bad.size, bad.kind, bad.text) == (1, BranchKind.OTHER, "(bad)")
    assert cache.get(0x3000).text == "(bad)"  # unreadable
    cache.invalidate()
    cache.get(0x1000)
    assert reads.count(0x1000) == 2
