"""Programs whose code cannot be named: stripped, without DWARF, with broken DWARF,
deleted while they run, and JIT code with no file behind it.

Each is recorded with every available backend (``branchtrace run --report always``),
then every report is made from the trace file: crash, history --calls, stats, coverage
(drcov, lcov, json) and the three profiles. Every one must come out with a zero exit and
no traceback (BRANCHTRACE_DEBUG=1 turns an internal error into one), showing the raw
address in hex where no name is known. The broken-DWARF copies are made by overwriting
the contents of the .debug_* sections, found with pyelftools, in a copy of the binary.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_BACKENDS, FIXTURES, cli
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import branchtrace
from branchtrace.cli import DEBUG_ENV, main
from branchtrace.model import Mapping, ModuleMap
from branchtrace.symbols import Symbolizer, clear_elf_cache
from branchtrace.tracefile import TraceWriter
from branchtrace.tracefile.format import EndInfo, FileHeader

BACKENDS = ALL_BACKENDS  # every backend; conftest skips (or, under --require-backend, fails) one that cannot run
DEBUG_SECTIONS = (".debug_info", ".debug_line", ".debug_abbrev", ".debug_str",
                  ".debug_line_str", ".debug_aranges", ".debug_rnglists", ".debug_str_offsets")
SEGV = 128 + signal.SIGSEGV
HEX = r"0x[0-9a-f]+"


def debug_sections(path: Path) -> dict[str, tuple[int, int]]:
    """(file offset, size) of each .debug_* section of the ELF file at ``path``."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {s.name: (s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()
                if s.name in DEBUG_SECTIONS and s["sh_type"] != "SHT_NOBITS"}


def break_dwarf(src: Path, dst: Path, how: str, seed: int = 0) -> Path:
    """A copy of ``src`` whose DWARF sections are overwritten: ``ff`` (all bytes 0xff),
    ``random`` (random bytes), or ``lengths`` (each unit's length field says 4 GiB, or
    DWARF64 with 2^63, with the rest of the section left as it was)."""
    data = bytearray(src.read_bytes())
    r = random.Random(seed)
    sections = debug_sections(src)
    assert ".debug_line" in sections and ".debug_info" in sections
    for name, (offset, size) in sections.items():
        if how == "ff":
            data[offset:offset + size] = b"\xff" * size
        elif how == "random":
            data[offset:offset + size] = r.randbytes(size)
        elif how == "lengths" and size >= 12:
            data[offset:offset + 12] = (b"\xf0\xff\xff\xff" + bytes(8) if name == ".debug_line"
                                        else b"\xff\xff\xff\xff" + struct.pack("<Q", 1 << 63))
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)
    return dst


def gcc(out: Path, source: str, *flags: str) -> Path:
    subprocess.run(["gcc", "-O0", *flags, "-o", str(out), str(FIXTURES / source)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    with_dwarf = gcc(d / "nosym_g", "rel_nosym.c", "-g")
    stripped = gcc(d / "nosym_stripped", "rel_nosym.c")
    subprocess.run(["strip", str(stripped)], check=True)
    return {
        "stripped": stripped,
        "nodwarf": gcc(d / "nosym_nodwarf", "rel_nosym.c"),
        "dwarf_ff": break_dwarf(with_dwarf, d / "nosym_dwarf_ff", "ff"),
        "dwarf_random": break_dwarf(with_dwarf, d / "nosym_dwarf_random", "random", 5),
        "dwarf_lengths": break_dwarf(with_dwarf, d / "nosym_dwarf_lengths", "lengths"),
        "deleted": with_dwarf,          # copied per run: the program unlinks its copy
        "jit": gcc(d / "rel_jit", "rel_jit.c"),
    }


VARIANTS = ["stripped", "nodwarf", "dwarf_ff", "dwarf_random", "dwarf_lengths", "deleted", "jit"]
REPORTS = [
    ("crash",), ("history", "--calls"), ("stats",),
    ("coverage", "--format", "drcov"), ("coverage", "--format", "lcov"),
    ("coverage", "--format", "json"),
    ("profile", "--format", "perfetto"), ("profile", "--format", "speedscope"),
    ("profile", "--format", "collapsed"),
]


def run_report(args: tuple[str, ...], trace: Path, out: Path,
               capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """One report, in this process (the CLI's own main); its exit code must be 0."""
    argv = [*args, str(trace)]
    if args[0] in ("coverage", "profile"):
        argv += ["-o", str(out)]
    code = main(argv)
    stdout, stderr = capsys.readouterr()
    assert code == 0, (argv, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return stdout, stderr


def check_drcov(data: bytes, exe: Path) -> None:
    """drcov 2 (docs: DynamoRIO's drcov format): a module table, then "BB Table: N bbs"
    and N 8-byte entries (start offset u32, size u16, module id u16), some in ``exe``."""
    head, sep, table = data.partition(b" bbs\n")
    assert sep, data[:400]
    lines = head.decode().splitlines()
    assert lines[0] == "DRCOV VERSION: 2"
    count = int(re.fullmatch(r"Module Table: version \d+, count (\d+)", lines[2]).group(1))
    modules = [ln.rsplit(", ", 1)[1] for ln in lines[4:4 + count]]
    bbs = int(re.fullmatch(r"BB Table: (\d+)", lines[4 + count]).group(1))
    assert bbs > 0 and len(table) == 8 * bbs, (bbs, len(table))
    entries = np.frombuffer(table, [("start", "<u4"), ("size", "<u2"), ("mod", "<u2")])
    assert int(entries["mod"].max()) < count and int(entries["size"].min()) >= 0
    assert str(exe) in modules
    assert np.count_nonzero(entries["mod"] == modules.index(str(exe))) > 0


def check_coverage_json(doc: dict, exe: Path, variant: str) -> None:
    """Modules with blocks, the program's among them (once: a deleted program is one
    module, not two), and counts that add up."""
    assert doc["format"] == "branchtrace-coverage"
    summary = doc["summary"]
    assert summary["branches"] > 0 and summary["blocks"] > 0
    assert summary["blocks"] == sum(len(m["blocks"]) for m in doc["modules"]) + \
        len(doc["unmapped"]["blocks"]) == sum(len(m["blocks"]) for m in doc["modules"]) + \
        summary["unmapped_blocks"]
    (program,) = [m for m in doc["modules"] if Path(m["path"]).name.startswith(exe.name)]
    assert program["path"] == str(exe) and len(program["blocks"]) > 0
    assert all(hits >= 1 and size >= 0 for _, size, hits in program["blocks"])
    if variant == "jit":                   # the generated code has no module
        assert summary["unmapped_blocks"] > 0


def check_lcov(text: str) -> None:
    """Well-formed records: each SF ... end_of_record, LF = its DA lines, LH = those
    run; the program's own source never (its DWARF is missing, broken or gone)."""
    records = text.split("end_of_record\n")
    assert records[-1] in ("", "TN:\n"), records[-1][:200]
    for record in records[:-1]:
        lines = [ln for ln in record.splitlines() if ln and ln != "TN:"]
        assert lines[0].startswith("SF:") and "rel_nosym.c" not in lines[0], lines[0]
        keys = {ln.split(":", 1)[0] for ln in lines}
        assert keys <= {"SF", "FN", "FNDA", "FNF", "FNH", "DA", "LF", "LH", "BRDA", "BRF",
                        "BRH"}, keys
        da = [int(ln.split(",")[1]) for ln in lines if ln.startswith("DA:")]
        counts = dict(ln.split(":", 1) for ln in lines if ln[:2] in ("LF", "LH"))
        assert int(counts["LF"]) == len(da) and int(counts["LH"]) == sum(h > 0 for h in da)


def check_output(args: tuple[str, ...], stdout: str, out: Path, exe: Path, variant: str,
                 branches: int) -> None:
    """The structure of each report, beyond "it came out"."""
    if args[0] == "coverage" and args[2] == "drcov":
        check_drcov(out.read_bytes(), exe)
    elif args[0] == "coverage" and args[2] == "json":
        check_coverage_json(json.loads(out.read_text()), exe, variant)
    elif args[0] == "coverage":
        check_lcov(out.read_text())
    elif args[0] == "profile" and args[2] == "perfetto":
        calls = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
        assert calls and all(e["dur"] >= 0 and e["name"] for e in calls)
    elif args[0] == "profile" and args[2] == "speedscope":
        doc = json.loads(out.read_text())
        frames, events = doc["shared"]["frames"], doc["profiles"][0]["events"]
        assert frames and events
        stack: list[int] = []
        for e in events:                   # every frame opened is closed, innermost first
            assert 0 <= e["frame"] < len(frames)
            if e["type"] == "O":
                stack.append(e["frame"])
            else:
                assert stack.pop() == e["frame"]
        assert stack == []
    elif args[0] == "profile":             # collapsed: one line per stack, every branch once
        counts = [int(m.group(1)) for m in re.finditer(r" (\d+)$", out.read_text(), re.M)]
        assert counts and sum(counts) == branches
    else:
        assert stdout.strip(), args


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_report_comes_out(binaries: dict[str, Path], tmp_path: Path, backend: str,
                                variant: str, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    exe, args = binaries[variant], ["crash"]
    if variant == "deleted":
        exe = Path(shutil.copy(exe, tmp_path / "doomed"))
        args = ["unlink", "crash"]
    trace = tmp_path / "t.btrace"
    env = dict(os.environ, **{DEBUG_ENV: "1"})
    done = cli("run", "--backend", backend, "--mode", "stream", "--report", "always",
               "-o", str(trace), "--", str(exe), *args, env=env, timeout=180)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert done.returncode == SEGV, done.stderr
    assert done.stdout == ("jit 87\n" if variant == "jit" else "sum 20\n")
    if variant == "deleted":
        assert not exe.exists()
    fault = re.search(r"faulted at:\s+(.*)", done.stderr)
    assert fault, done.stderr
    where = fault.group(1)
    if variant in ("stripped", "deleted"):      # nothing names the code: its address
        assert re.fullmatch(rf"{HEX} {HEX} \({exe.name}( \(deleted\))?\)", where), where
    elif variant == "jit":                      # no module either
        assert re.fullmatch(rf"{HEX} {HEX}", where), where
    else:                                       # the symbol table still names it
        assert re.match(rf"{HEX} boom\+0x1a \({exe.name}\)", where), where
        if variant == "nodwarf":
            assert "rel_nosym.c" not in where

    monkeypatch.setenv(DEBUG_ENV, "1")
    capsys.readouterr()
    branches = sum(len(b) for b in branchtrace.open(trace).threads.values())
    for report in REPORTS:
        out = tmp_path / f"out-{'-'.join(report)}"
        stdout, _ = run_report(report, trace, out, capsys)
        check_output(report, stdout, out, exe, variant, branches)
        if report == ("crash",):
            assert "SIGSEGV" in stdout
            assert re.search(r"faulted at:\s+" + re.escape(where), stdout), stdout
        if report == ("history", "--calls") and variant in ("stripped", "deleted", "jit"):
            # the unnamed code's segments: the address each begins at, in hex
            module = "" if variant == "jit" else rf" \({re.escape(exe.name)}( \(deleted\))?\)"
            assert re.search(rf"^\d+\t *{HEX}{module}$", stdout, re.MULTILINE), stdout[-2000:]
            assert f"?? ({exe.name}" not in stdout


# -- the symbolizer alone, on DWARF damaged at random ----------------------------------------

@pytest.fixture(scope="module")
def dwarf_binary(binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dwarf")
    return gcc(d / "nosym_g", "rel_nosym.c", "-g")


def symbolize(path: Path) -> tuple[list[str], list[str]]:
    """Resolve every 4th address of 64 KiB mapped at a PIE bias, with a new cache (the
    file changes under the same name): the function names found, and a sample of
    descriptions."""
    clear_elf_cache()
    bias = 0x5555_5555_4000
    sym = Symbolizer([ModuleMap(str(path), bias, bias + 0x10000, bias)])
    addresses = np.arange(bias, bias + 0x10000, 4, dtype=np.uint64)
    res = sym.resolve(addresses)
    assert len(res.function) == len(addresses)
    names = [res.function_names[f] for f in set(res.function.tolist()) if f >= 0]
    return names, [sym.describe(int(a)).short() for a in addresses[::256]]


def test_symbolizer_names_functions_despite_broken_dwarf(binaries: dict[str, Path]) -> None:
    for variant in ("dwarf_ff", "dwarf_random", "dwarf_lengths", "nodwarf", "stripped"):
        names, described = symbolize(binaries[variant])
        assert all(re.fullmatch(rf"({HEX}|\w+\+{HEX}) \(\S+\)", d) for d in described), described
        assert any(d.startswith("0x") for d in described)       # unnamed bytes: in hex
        if variant == "stripped":
            assert "boom" not in names
        else:
            assert {"main", "boom", "sum", "twice"} <= set(names), (variant, names)


def test_symbolizer_random_dwarf_damage(dwarf_binary: Path, tmp_path: Path, soak: bool) -> None:
    """Random runs of bytes, and hostile 4- and 8-byte values, written into the DWARF
    sections: resolving never raises and stays fast."""
    sections = sorted(debug_sections(dwarf_binary).items())
    original = dwarf_binary.read_bytes()

    @settings(max_examples=400 if soak else 25, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(edits=st.lists(st.tuples(st.integers(0, len(sections) - 1), st.floats(0, 1),
                                    st.one_of(st.binary(min_size=1, max_size=16),
                                              st.sampled_from([b"\xff" * 4, b"\xff" * 12,
                                                               b"\xf0\xff\xff\xff",
                                                               struct.pack("<Q", 1 << 40)]))),
                          min_size=1, max_size=6))
    def run(edits: list[tuple[int, float, bytes]]) -> None:
        data = bytearray(original)
        for which, where, value in edits:
            offset, size = sections[which][1]
            at = offset + int(where * max(0, size - len(value)))
            data[at:at + min(len(value), size)] = value[:size]
        path = tmp_path / "damaged"
        path.write_bytes(bytes(data))
        began = time.monotonic()
        symbolize(path)
        assert time.monotonic() - began < 10

    run()
    clear_elf_cache()


# -- module maps that make no sense ----------------------------------------------------------

EDGES = [0, 1, 0x1000, 1 << 47, 1 << 63, (1 << 64) - 1]


def test_nonsense_module_maps_reach_every_report(binaries: dict[str, Path], tmp_path: Path,
                                                 soak: bool,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A trace whose module records put real, broken, missing and special files at
    inverted, overlapping or enormous ranges: each report exits 0, or (drcov, which
    cannot hold offsets past 4 GiB) with one line and no internal error."""
    paths = [str(binaries["dwarf_random"]), str(binaries["stripped"]), str(binaries["jit"]),
             "/nonexistent/lib.so", "[vdso]", "", str(tmp_path)]
    address = st.one_of(st.sampled_from(EDGES), st.integers(0, (1 << 64) - 1),
                        st.builds(lambda base, off: (base + off) % (1 << 64),
                                  st.sampled_from(EDGES), st.integers(0, 1 << 34)))

    @settings(max_examples=500 if soak else 30, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(modules=st.lists(st.tuples(address, address, address, st.sampled_from(paths)),
                            max_size=4),
           ips=st.lists(address, min_size=2, max_size=60))
    def run(modules: list[tuple[int, int, int, str]], ips: list[int]) -> None:
        path = tmp_path / "m.btrace"
        w = TraceWriter.create(path, FileHeader(1, 1, 24, 4096, 0, 5, 1, "ptrace", "t", ("p",)))
        raw = np.zeros(len(ips) - 1, [("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"),
                                      ("pad", "V7")])
        raw["from_ip"] = np.array(ips[1:], dtype=np.uint64)
        raw["to_ip"] = np.array(ips[:-1], dtype=np.uint64)
        raw["kind"] = np.arange(len(raw)) % 9
        w.write_chunk(5, raw, 1, 2)
        for start, end, bias, name in modules:
            w.write_module(ModuleMap(name, start, end, bias, "",
                                     (Mapping(start, end, "r-xp", 0, name),)))
        w.finish(EndInfo(3, 5, "signaled", signal=11, fault_address=0, fault_pc=ips[-1], tid=5))
        for report in REPORTS:
            argv = [*report, str(path)]
            if report[0] in ("coverage", "profile"):
                argv += ["-o", os.devnull]
            code = main(argv)
            err = capsys.readouterr().err
            assert "Traceback" not in err and "internal error" not in err, (argv, err)
            assert code == 0 or (report[2:] == ("drcov",) and code != 70
                                 and "cannot write drcov" in err), (argv, code, err)

    clear_elf_cache()
    run()
    clear_elf_cache()
