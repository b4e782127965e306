"""The reports' disassembly (capstone) against binutils' ``objdump -d -M intel``.

The crash report's "instruction:" line and every line of the instruction history are
compared, instruction by instruction, with what objdump says is at the same place
(function + offset) of the same binary: the golden recording of tests/fixtures/fib.c
(tests/golden, no backend needed), and a new ptrace recording of tests/fixtures/crash.c.
The two tools spell Intel syntax a little differently (spaces, case, ``0x8`` or ``8``,
branch targets as file offsets or run-time addresses); :func:`same` says what is
forgiven and nothing more.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, cli

import branchtrace
from branchtrace.backends import load
from branchtrace.reporters import crash, history
from branchtrace.trace import Trace

GOLDEN = Path(__file__).parent.parent / "golden"
pytestmark = pytest.mark.skipif(shutil.which("objdump") is None,
                                reason="objdump (binutils) is not installed")
HAVE_PTRACE = load("ptrace").probe().available


@dataclasses.dataclass
class Objdump:
    text: dict[int, str]         # file address -> "mnemonic operands"
    symbols: dict[str, int]      # function -> file address


def objdump(binary: Path) -> Objdump:
    out = subprocess.run(["objdump", "-d", "-M", "intel", "--no-show-raw-insn", str(binary)],
                         check=True, capture_output=True, text=True).stdout
    text, symbols = {}, {}
    for line in out.splitlines():
        if m := re.fullmatch(r"([0-9a-f]+) <([^>]+)>:", line):
            symbols[m.group(2)] = int(m.group(1), 16)
        elif m := re.fullmatch(r"\s*([0-9a-f]+):\s+(\S.*)", line):
            text[int(m.group(1), 16)] = m.group(2)
    assert symbols and text, out[:500]
    return Objdump(text, symbols)


def _numbers(s: str) -> str:
    """Hex numbers as decimal ("0x8" and "8" are the same operand)."""
    return re.sub(r"\b0x[0-9a-f]+\b", lambda m: str(int(m.group(0), 16)), s)


def same(capstone: str, objdump_text: str, runtime: int, file_address: int) -> bool:
    """Whether capstone's ``capstone`` (at run-time address ``runtime``) is objdump's
    ``objdump_text`` (at ``file_address``)."""
    ours = capstone.lower().split(None, 1)
    theirs = objdump_text.split("#")[0].lower().split(None, 1)   # objdump's "# 4010 <x>"
    if ours[0] != theirs[0]:
        return False
    if len(ours) == 1 or len(theirs) == 1:
        return len(ours) == len(theirs)
    target = re.fullmatch(r"([0-9a-f]+) <[^>]+>", theirs[1].strip())
    if target:          # a direct branch: objdump gives the file address of its target
        return int(ours[1], 16) == int(target.group(1), 16) + runtime - file_address
    return _numbers(ours[1].replace(" ", "")) == _numbers(theirs[1].replace(" ", "").strip())


def test_same_forgives_spelling_and_nothing_else() -> None:
    assert same("mov dword ptr [rbp - 8], 1", "mov    DWORD PTR [rbp-0x8],0x1", 0x5000, 0x1000)
    assert same("jle 0x5198", "jle    1198 <main+0x2f>", 0x51ad, 0x11ad)
    assert same("lea rax, [rip + 0x2e9c]", "lea    rax,[rip+0x2e9c]        # 4010 <t>", 0, 0)
    assert not same("mov dword ptr [rbp - 8], 2", "mov    DWORD PTR [rbp-0x8],0x1", 0, 0)
    assert not same("mov dword ptr [rbp - 8], 1", "mov    DWORD PTR [rbp-0x4],0x1", 0, 0)
    assert not same("jle 0x5199", "jle    1198 <main+0x2f>", 0x51ad, 0x11ad)
    assert not same("jl 0x5198", "jle    1198 <main+0x2f>", 0x51ad, 0x11ad)
    assert not same("mov eax, edx", "mov    edx,eax", 0, 0)


def golden(name: str) -> Trace:
    trace = branchtrace.open(GOLDEN / name)
    trace.modules = [dataclasses.replace(m, path=str(GOLDEN / "fib")) if m.name == "fib" else m
                     for m in trace.modules]
    trace._symbolizer = None
    return trace


INSN_LINE = re.compile(r"\d+\t0x([0-9a-f]+) <(\w+)\+(\d+)>:\t(.*)")


def check_history(text: str, dump: Objdump) -> int:
    """Every instruction of ``history --insns`` output at function+offset is what objdump
    has there; how many were compared."""
    compared = 0
    for line in text.splitlines():
        m = INSN_LINE.fullmatch(line)
        assert m, line
        runtime, function, offset, insn = int(m.group(1), 16), m.group(2), int(m.group(3)), \
            m.group(4)
        at = dump.symbols[function] + offset
        assert at in dump.text, f"{function}+{offset}: objdump has no instruction there"
        assert same(insn, dump.text[at], runtime, at), (line, dump.text[at])
        compared += 1
    return compared


def test_golden_instruction_history_matches_objdump() -> None:
    """All 453 instructions of the fib recording (main, fib, square: calls, conditional
    jumps, stack arithmetic, the final syscall)."""
    dump = objdump(GOLDEN / "fib")
    out = io.StringIO()
    history.render_insns(golden("fib.btrace"), out)
    assert check_history(out.getvalue(), dump) == 453
    out = io.StringIO()
    history.render_insns(golden("fib-crash.btrace"), out)
    assert check_history(out.getvalue(), dump) == 449


def fault(report: str) -> tuple[int, str, int, str]:
    """(address, function, offset, instruction) of a crash report's fault."""
    where = re.search(r"faulted at:\s+0x([0-9a-f]+) (\w+)\+0x([0-9a-f]+) ", report)
    insn = re.search(r"instruction:\s+(.+)", report)
    assert where and insn, report
    return int(where.group(1), 16), where.group(2), int(where.group(3), 16), insn.group(1).strip()


def test_golden_crash_instruction_matches_objdump() -> None:
    dump = objdump(GOLDEN / "fib")
    out = io.StringIO()
    crash.render(golden("fib-crash.btrace"), out)
    runtime, function, offset, insn = fault(out.getvalue())
    at = dump.symbols[function] + offset
    assert (function, offset) == ("main", 0x51)      # fib.c's CRASH_LINE (golden README)
    assert same(insn, dump.text[at], runtime, at), (insn, dump.text[at])
    assert dump.text[at].split()[0] == "mov"


@pytest.mark.skipif(not HAVE_PTRACE, reason="the ptrace backend cannot run here")
def test_crash_report_of_a_new_recording_matches_objdump(build, tmp_path: Path) -> None:
    """tests/fixtures/crash.c, built here: the faulting store in step2, and the last
    instructions before it, as objdump reads them from the same binary."""
    exe = build("crash")
    dump = objdump(exe)
    trace = tmp_path / "crash.btrace"
    r = cli("run", "--backend", "ptrace", "--mode", "stream", "-o", str(trace), "--", str(exe))
    assert r.returncode == 128 + 11, r.stderr
    runtime, function, offset, insn = fault(r.stderr)
    assert function == "step2"
    at = dump.symbols[function] + offset
    assert same(insn, dump.text[at], runtime, at), (insn, dump.text[at])
    # the faulting instruction writes through a pointer: a store to memory
    assert re.fullmatch(r"mov dword ptr \[\w+\], \w+", insn), insn
    r = cli("history", str(trace), "--insns", "--last", "40")
    assert r.returncode == 0, r.stderr
    ours = [ln for ln in r.stdout.splitlines() if re.search(r" <(main|step1|step2)\+", ln)]
    assert len(ours) >= 10 and check_history("\n".join(ours), dump) == len(ours)
    assert ours[-1].endswith(insn)
