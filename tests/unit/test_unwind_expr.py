"""DWARF expressions of CFI, as the unwinder evaluates them (symbols/unwind.py)."""

from __future__ import annotations

import struct

from branchtrace.symbols.unwind import StackCopy, _evaluate

# the CFA of a lazy PLT entry, as GNU ld writes it: rsp + 8, plus 8 more once the entry
# has pushed its index (pc & 15 >= 11)
PLT_CFA = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])


def test_the_plt_cfa_expression():
    copy = StackCopy({}, 0, b"")
    for pc, extra in ((0x1030, 0), (0x103A, 0), (0x103B, 8), (0x103F, 8)):
        assert _evaluate(PLT_CFA, {7: 0x7000, 16: pc}, copy, None) == 0x7008 + extra


def test_deref_constants_and_what_it_cannot_do():
    copy = StackCopy({}, 0x100, struct.pack("<QQ", 0xAAAA, 0xBBBB))
    # breg7 +8; deref: the second word of the copy
    assert _evaluate(bytes([0x77, 0x08, 0x06]), {7: 0x100}, copy, None) == 0xBBBB
    assert _evaluate(bytes([0x10, 0x80, 0x01]), {}, copy, None) == 128          # constu
    assert _evaluate(bytes([0x23, 0x10]), {}, copy, 0x20) == 0x30             # pushed CFA
    assert _evaluate(bytes([0x77, 0x08]), {}, copy, None) is None             # no rsp
    assert _evaluate(bytes([0x96]), {}, copy, None) is None                   # DW_OP_nop+
    assert _evaluate(bytes([0x77, 0x70, 0x06]), {7: 0x100}, copy, None) is None  # outside
