"""Code bytes of a trace's modules, read from the files on disk, and decoded with capstone.

A branch trace records only where control went; the instructions in between are the
ones that lie, in order, between one branch's target and the next branch's source. They
are read back from the ELF files the module maps name (:meth:`ElfImage.read_vaddr`),
only when the file on disk is still the one the trace saw
(:func:`~branchtrace.symbols.images.module_image`). capstone is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..isa import NOT_A_BRANCH, classify, disassembler
from ..model import BranchKind
from ..symbols import ElfImage, Symbolizer
from ..symbols.images import module_image

#: The longest straight-line run we decode (bytes); longer ones are called unreadable.
MAX_RUN_BYTES = 1 << 17
#: The longest x86 instruction.
MAX_INSN = 15


@dataclass(frozen=True, slots=True)
class Instruction:
    address: int
    size: int           # 0 when the bytes could not be read
    text: str           # "mov rbp, rsp" (capstone's Intel syntax)


class CodeReader:
    """Reads and decodes the code of the modules of one :class:`Symbolizer`."""

    def __init__(self, symbolizer: Symbolizer) -> None:
        self.symbolizer = symbolizer
        self._images: dict[int, ElfImage | None] = {}
        starts = [(m.start, i) for i, m in enumerate(symbolizer.modules)]
        self._order = sorted(starts)

    def _image(self, m: int) -> ElfImage | None:
        if m not in self._images:
            self._images[m] = module_image(self.symbolizer.modules[m]).image
        return self._images[m]

    def modules_of(self, addresses: np.ndarray) -> list[int]:
        """Index of the module holding each address, or -1."""
        found: list[int] = self.symbolizer.module_indices(
            np.asarray(addresses, dtype=np.uint64)).tolist()
        return found

    def read(self, address: int, n: int, module: int | None = None) -> bytes:
        """Up to ``n`` code bytes at run-time ``address`` (b"" if unknown or unreadable).

        ``module``: the index of its module when the caller knows it already."""
        m = self.modules_of(np.array([address]))[0] if module is None else module
        if m < 0:
            return b""
        image = self._image(m)
        if image is None:
            return b""
        bias = self.symbolizer.modules[m].bias
        return image.read_vaddr((address - bias) % (1 << 64), n)

    def decode_run(self, start: int, end: int, module: int | None = None) -> list[Instruction] | None:
        """The instructions from ``start`` up to and including the one at ``end``.

        None when the bytes cannot be read, or decoding sequentially from ``start``
        does not land on ``end`` (the run is not straight-line code of this file).
        """
        if end < start or end - start >= MAX_RUN_BYTES:
            return None
        code = self.read(start, end - start + MAX_INSN, module)
        if len(code) < end - start + 1:
            return None
        out: list[Instruction] = []
        for address, size, mnemonic, op_str in disassembler(detail=False).disasm_lite(code, start):
            out.append(Instruction(address, size, f"{mnemonic} {op_str}".strip()))
            if address >= end:
                return out if address == end else None
        return None

    def decode_tail(self, start: int, stop: int | None, limit: int = 64) -> list[Instruction]:
        """The instructions a thread ran after its last recorded branch.

        No branch was taken after it, so the thread went straight on until it ended: up
        to ``stop`` (the faulting instruction) when known, else up to the first
        instruction that would have branched for sure (a call, an unconditional jump,
        a return, a system call). At most ``limit`` instructions; [] if unreadable.
        """
        code = self.read(start, limit * MAX_INSN)
        out: list[Instruction] = []
        offset = 0
        while offset < len(code) and len(out) < limit:
            address = start + offset
            insn = classify(code[offset:offset + MAX_INSN], address)
            if insn is None:
                break
            out.append(Instruction(address, insn.size, insn.text))
            if stop is not None:
                if address >= stop:
                    break
            elif insn.kind not in (NOT_A_BRANCH, BranchKind.COND):
                break
            offset += insn.size
        return out

    def call_lengths(self, sites: np.ndarray) -> np.ndarray:
        """The length of the call instruction at each address (0 where unknown)."""
        a = np.asarray(sites, dtype=np.uint64)
        u, inverse = np.unique(a, return_inverse=True)
        lengths = np.zeros(len(u), dtype=np.uint64)
        md = disassembler(detail=False)
        for i, (address, m) in enumerate(zip(u.tolist(), self.modules_of(u))):
            code = self.read(address, MAX_INSN, m)
            for _, size, mnemonic, _ in md.disasm_lite(code, address, 1):
                if "call" in mnemonic:
                    lengths[i] = size
        return lengths[inverse]
