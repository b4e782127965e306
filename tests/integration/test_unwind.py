"""The unwinder (symbols/unwind.py, symbols/cfi.py) against gdb: the same physical
frames, innermost first, from the same registers and stack bytes. gdb stops the
program at its crash; its Python dumps the registers, the stack's bytes up to the end
of its mapping, /proc/PID/maps and its own frames (gdb also lists inlined and tail-call
frames, which have no stack frame of their own: those are left out of the comparison).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES

from branchtrace.symbols import Symbolizer
from branchtrace.symbols.maps import modules_from_maps, parse_maps
from branchtrace.symbols.unwind import StackCopy, Unwinder

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")

DUMP = r'''
import gdb, json, os
inf = gdb.selected_inferior()
names = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip"]
regs = {i: int(gdb.parse_and_eval(f"(unsigned long)${n}")) for i, n in enumerate(names)}
maps = open(f"/proc/{inf.pid}/maps").read()
rsp = regs[7]
end = next(int(l.split()[0].split("-")[1], 16) for l in maps.splitlines()
           if int(l.split()[0].split("-")[0], 16) <= rsp < int(l.split()[0].split("-")[1], 16))
data = bytes(inf.read_memory(rsp, min(end - rsp, 1 << 20)))
frames, f = [], gdb.newest_frame()
while f is not None:
    frames.append([f.pc(), f.name(), f.type() == gdb.NORMAL_FRAME])
    f = f.older()
json.dump({"regs": regs, "data": data.hex(), "maps": maps, "frames": frames},
          open(os.environ["DUMP_OUT"], "w"))
'''


def dump_at_crash(tmp_path: Path, argv: list[str]) -> dict:
    script = tmp_path / "dump.py"
    script.write_text(DUMP)
    out = tmp_path / "dump.json"
    subprocess.run(["gdb", "-q", "-batch", "-nx", "-ex", "run", "-x", str(script), "--args",
                    *argv], capture_output=True, text=True, timeout=120, check=True,
                   env={"DUMP_OUT": str(out), "PATH": "/usr/bin:/bin"})
    return json.loads(out.read_text())


def ours(doc: dict) -> tuple[list[int], Symbolizer, str]:
    modules = modules_from_maps(parse_maps(doc["maps"]))
    regs = {int(k): v for k, v in doc["regs"].items()}
    stack = Unwinder(modules).unwind(StackCopy(regs, regs[7], bytes.fromhex(doc["data"])))
    return [f.pc for f in stack.frames], Symbolizer(modules), stack.end


def compiled(tmp_path: Path, source: Path, *flags: str) -> Path:
    exe = tmp_path / source.stem
    compiler = "g++" if source.suffix == ".cc" else "gcc"
    subprocess.run([compiler, "-g", *flags, "-o", str(exe), str(source)], check=True)
    return exe


@pytest.mark.parametrize("flags", [("-O2", "-fomit-frame-pointer"), ("-O0",),
                                   ("-O0", "-fno-asynchronous-unwind-tables",
                                    "-fno-unwind-tables")],
                         ids=["O2-cfi", "O0", "frame-pointers-only"])
def test_frames_are_gdbs(tmp_path, flags):
    exe = compiled(tmp_path, FIXTURES / "unwind_deep.c", *flags)
    doc = dump_at_crash(tmp_path, [str(exe), "x"])
    gdbs = [pc for pc, _, normal in doc["frames"] if normal]
    pcs, symbolizer, end = ours(doc)
    names = [symbolizer.describe(pc).function for pc in pcs]
    assert pcs[:len(gdbs)] == gdbs, (names, [n for _, n, _ in doc["frames"]])
    assert "main" in names and "cmp" in names and "qsort_r" in " ".join(map(str, names))
    assert names[-1] == "_start" and end.startswith("outermost"), (names, end)


def test_cpp_frames_are_gdbs(tmp_path):
    exe = compiled(tmp_path, FIXTURES / "cpp_crash.cc", "-O0")
    doc = dump_at_crash(tmp_path, [str(exe), "crash"])
    gdbs = [pc for pc, _, normal in doc["frames"] if normal]
    pcs, symbolizer, _ = ours(doc)
    assert pcs[:len(gdbs)] == gdbs
    assert [symbolizer.describe(pc).function for pc in pcs[:3]] == [
        "shop::Inventory::take(unsigned long)", "restock(shop::Inventory&, unsigned long)",
        "main"]


def test_a_short_copy_of_the_stack_ends_the_walk(tmp_path):
    exe = compiled(tmp_path, FIXTURES / "unwind_deep.c", "-O2")
    doc = dump_at_crash(tmp_path, [str(exe), "x"])
    full, _, _ = ours(doc)
    doc["data"] = doc["data"][:2 * 40]                 # 40 bytes of stack: 2-3 frames
    pcs, _, end = ours(doc)
    assert 1 <= len(pcs) < len(full) and pcs == full[:len(pcs)]
    assert end in ("stack copy ends", "the frame's rules cannot be followed"), end


@pytest.mark.parametrize("backend", ["stalker", "ptrace"])
def test_the_backends_record_the_stack_of_a_crash(tmp_path, backend):
    """Both backends copy the faulting thread's registers and stack; the copy is in the
    returned trace and in the trace file (a STACK record), and unwinds to the crash's
    callers, through libc's qsort, to _start."""
    import branchtrace
    from branchtrace.backends import Target
    from branchtrace.symbols.unwind import unwind_snapshot

    exe = compiled(tmp_path, FIXTURES / "unwind_deep.c", "-O2")
    out = tmp_path / "crash.btrace"
    live = branchtrace.record(Target(argv=(str(exe), "x")),
                              branchtrace.RecordConfig(backend=backend), output=str(out))
    for trace in (live, branchtrace.open(out)):
        snapshot = trace.exit.stack
        assert snapshot is not None and snapshot.tid == trace.exit.tid
        stack = unwind_snapshot(trace.modules, snapshot)
        names = [trace.symbolizer.describe(f.pc).function for f in stack.frames]
        assert names[0].startswith("__strlen") and names[1:3] == ["middle", "cmp"], names
        assert "qsort_r" in names and names[-2:] == ["__libc_start_main", "_start"], names
        assert stack.end == "outermost frame"
