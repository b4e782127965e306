"""Tests for branchtrace.symbols: maps, ELF symbols, DWARF lines and the resolver.

The live tests compile tests/fixtures/sym_steps.c (PIE and non-PIE), run it until it
has printed the addresses of a few functions, and check what the resolver says about
those addresses against the fixture source and against binutils' addr2line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from branchtrace.errors import TargetError
from branchtrace.model import Mapping, ModuleMap
from branchtrace.symbols import (
    FunctionTable,
    Location,
    RawSymbol,
    Symbolizer,
    clear_elf_cache,
    is_deleted,
    line_table_for,
    load_elf,
    merge_modules,
    modules_from_maps,
    parse_maps,
    read_line_table,
    read_maps,
    strip_deleted,
)
from branchtrace.symbols import elf as elf_module

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sym_steps.c"
PIE_BIAS = 0x555555554000

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def marker_line(name: str) -> int:
    """The line of the fixture source that carries ``MARK:<name>``."""
    for number, text in enumerate(FIXTURE.read_text().splitlines(), 1):
        if f"MARK:{name} " in text or text.rstrip().endswith(f"MARK:{name} */"):
            return number
    raise AssertionError(f"no marker {name} in {FIXTURE}")


def compile_fixture(out: Path, *flags: str) -> Path:
    subprocess.run(["gcc", "-g", "-O0", *flags, "-o", str(out), str(FIXTURE)], check=True)
    return out


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    root = tmp_path_factory.mktemp("sym")
    out = {
        "pie": compile_fixture(root / "steps_pie", "-fPIE", "-pie"),
        "nopie": compile_fixture(root / "steps_nopie", "-no-pie"),
        "dwarf4": compile_fixture(root / "steps_dwarf4", "-gdwarf-4"),
    }
    stripped = root / "steps_stripped"
    shutil.copy(out["pie"], stripped)
    subprocess.run(["strip", "--strip-all", str(stripped)], check=True)
    out["stripped"] = stripped
    return {k: Path(os.path.realpath(v)) for k, v in out.items()}


@contextmanager
def running(exe: Path) -> Iterator[tuple[int, dict[str, int]]]:
    """Run the fixture until it prints "ready"; yields its pid and printed values."""
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        values: dict[str, int] = {}
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.strip()
            if text == "ready":
                break
            key, value = text.split("=")
            values[key] = int(value, 0)
        else:
            raise AssertionError("fixture ended before printing ready")
        yield proc.pid, values
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def symtab_vaddr(exe: Path, name: str) -> int:
    """A function's address from the .symtab, read independently with pyelftools."""
    with open(exe, "rb") as f:
        symtab: Any = ELFFile(f).get_section_by_name(".symtab")
        (sym,) = symtab.get_symbol_by_name(name)
        return int(sym["st_value"])


def addr2line(exe: Path, vaddr: int) -> tuple[str, str, int]:
    """(function, source base name, line) according to binutils."""
    out = subprocess.run(["addr2line", "-f", "-e", str(exe), hex(vaddr)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    where = out[1].split(" (discriminator")[0]
    path, _, line = where.rpartition(":")
    return out[0], os.path.basename(path), int(line)


def readelf_build_id(exe: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    assert match is not None
    return match.group(1)


# -- /proc/PID/maps ----------------------------------------------------------------------

MAPS_TEXT = """\
55d0c4a00000-55d0c4a01000 r--p 00000000 fe:00 1234                       /opt/my app/bin/crash
55d0c4a01000-55d0c4a02000 r-xp 00001000 fe:00 1234                       /opt/my app/bin/crash
55d0c4a03000-55d0c4a04000 rw-p 00003000 fe:00 1234                       /opt/my app/bin/crash
55d0c5000000-55d0c5021000 rw-p 00000000 00:00 0                          [heap]
7f1000000000-7f1000001000 r--p 00000000 fe:00 99                         /tmp/libgone.so (deleted)
7f1000001000-7f1000003000 r-xp 00001000 fe:00 99                         /tmp/libgone.so (deleted)
7f1000010000-7f1000020000 r--p 00000000 fe:00 77                         /usr/lib/locale/locale-archive
7f1000020000-7f1000030000 rw-p 00000000 00:00 0
7f1000040000-7f1000042000 r-xp 00000000 00:00 0                          [vdso]
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_parse_maps_reads_every_field_and_keeps_odd_paths() -> None:
    maps = parse_maps(MAPS_TEXT)
    assert len(maps) == 10
    assert maps[1] == Mapping(0x55D0C4A01000, 0x55D0C4A02000, "r-xp", 0x1000,
                              "/opt/my app/bin/crash")
    assert maps[1].executable and not maps[0].executable
    assert maps[4].path == "/tmp/libgone.so (deleted)"
    assert is_deleted(maps[4].path) and not is_deleted(maps[0].path)
    assert strip_deleted(maps[4].path) == "/tmp/libgone.so"
    assert maps[7].path == "" and maps[7].perms == "rw-p"
    assert maps[8].path == "[vdso]" and maps[9].path == "[stack]"
    assert maps[3].start == 0x55D0C5000000 and maps[3].end == 0x55D0C5021000


def test_parse_maps_rejects_a_malformed_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_maps("1000-2000 r-xp 00000000 00:00 0 /bin/x\nnot a maps line\n")


def test_modules_from_unreadable_files_fall_back_to_start_minus_offset() -> None:
    modules = modules_from_maps(parse_maps(MAPS_TEXT))
    by_path = {m.path: m for m in modules}
    # Data-only files, the heap and the stack are not modules; [vdso] is.
    assert set(by_path) == {"/opt/my app/bin/crash", "/tmp/libgone.so (deleted)", "[vdso]"}
    crash = by_path["/opt/my app/bin/crash"]
    assert (crash.start, crash.end, crash.bias, crash.build_id) == (
        0x55D0C4A00000, 0x55D0C4A04000, 0x55D0C4A00000, "")
    assert len(crash.mappings) == 3
    gone = by_path["/tmp/libgone.so (deleted)"]
    assert (gone.start, gone.end, gone.bias) == (0x7F1000000000, 0x7F1000003000, 0x7F1000000000)
    vdso = by_path["[vdso]"]
    assert (vdso.bias, vdso.build_id) == (0x7F1000040000, "")
    assert [m.start for m in modules] == sorted(m.start for m in modules)


def test_two_loads_of_one_file_are_two_modules() -> None:
    text = (
        "10000-11000 r-xp 00000000 fe:00 5 /nonexistent/lib.so\n"
        "11000-12000 r--p 00001000 fe:00 5 /nonexistent/lib.so\n"
        "50000-51000 r-xp 00000000 fe:00 5 /nonexistent/lib.so\n"
    )
    modules = modules_from_maps(parse_maps(text))
    assert [(m.start, m.end) for m in modules] == [(0x10000, 0x12000), (0x50000, 0x51000)]


def test_merge_modules_unions_snapshots_without_duplicates() -> None:
    libc = ModuleMap("/lib/libc.so.6", 0x7000, 0x9000, 0x7000, "ab")
    exe = ModuleMap("/bin/prog", 0x1000, 0x2000, 0, "cd")
    plugin = ModuleMap("/lib/plugin.so", 0xA000, 0xB000, 0xA000, "ef")
    grown = ModuleMap("/lib/libc.so.6", 0x7000, 0x9800, 0x7000, "ab")
    merged = merge_modules([exe, libc], [libc, exe, plugin, grown])
    assert [(m.path, m.start, m.end) for m in merged] == [
        ("/bin/prog", 0x1000, 0x2000),
        ("/lib/libc.so.6", 0x7000, 0x9800),
        ("/lib/plugin.so", 0xA000, 0xB000),
    ]
    # Another file mapped where one used to be stays a separate module.
    other = ModuleMap("/lib/other.so", 0xA000, 0xB000, 0xA000, "12")
    assert len(merge_modules(merged, [other])) == 4


def test_merge_modules_joins_a_file_deleted_between_snapshots() -> None:
    """At start /bin/prog is read (build id, bias from its program headers); by exit it
    was deleted (or replaced) and /proc/PID/maps says "/bin/prog (deleted)": one load,
    which keeps what was read while the file was there, so its addresses can be named
    (they were split over two modules, and the deleted one never resolves)."""
    maps = (Mapping(0x5000, 0x6000, "r-xp", 0x1000, "/bin/prog"),)
    gone = (Mapping(0x5000, 0x6000, "r-xp", 0x1000, "/bin/prog (deleted)"),
            Mapping(0x6000, 0x7000, "r--p", 0x2000, "/bin/prog (deleted)"))
    start = ModuleMap("/bin/prog", 0x5000, 0x6000, 0x4000, "cd", maps)
    end = ModuleMap("/bin/prog (deleted)", 0x5000, 0x7000, 0x4000 + 0x10, "", gone)
    for a, b in (([start], [end]), ([end], [start])):
        (mod,) = merge_modules(a, b)
        assert (mod.path, mod.start, mod.end, mod.bias, mod.build_id) == \
            ("/bin/prog", 0x5000, 0x7000, 0x4000, "cd")
        assert [(m.start, m.offset) for m in mod.mappings] == [(0x5000, 0x1000), (0x6000, 0x2000)]
    # elsewhere, or another file that happens to be deleted: separate modules
    assert len(merge_modules([start], [ModuleMap("/bin/prog (deleted)", 0x9000, 0xA000,
                                                 0x9000, "")])) == 2
    assert len(merge_modules([start], [ModuleMap("/bin/other (deleted)", 0x5000, 0x6000,
                                                 0x4000, "")])) == 2


@needs_gcc
def test_a_program_deleted_while_traced_is_named_from_what_was_read(tmp_path: Path) -> None:
    """The merged module of a deleted program names its functions when a file with the
    build id read at start is there again (a reinstall, a reproducible rebuild)."""
    exe = compile_fixture(tmp_path / "prog", "-no-pie")
    image = load_elf(str(exe))
    assert image is not None
    address = image.symbol_address("main")
    text = (f"400000-401000 r--p 00000000 fe:00 7 {exe}\n"
            f"401000-402000 r-xp 00001000 fe:00 7 {exe}\n")
    start = modules_from_maps(parse_maps(text))
    end = modules_from_maps(parse_maps(text.replace("\n", " (deleted)\n")))
    assert end[0].path == f"{exe} (deleted)" and end[0].build_id == ""
    clear_elf_cache()
    described = Symbolizer(merge_modules(start, end)).describe(address).short()
    assert described.startswith("main+0x0 "), described
    clear_elf_cache()


def test_read_maps_of_a_gone_process_raises_target_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(TargetError, match=str(proc.pid)):
        read_maps(proc.pid)


def test_read_maps_of_self_finds_python() -> None:
    maps = read_maps(os.getpid())
    assert any(m.executable and "python" in os.path.basename(m.path) for m in maps)


# -- function tables (pure) ----------------------------------------------------------------

def test_function_table_nesting_aliases_and_zero_size_fallbacks() -> None:
    table = FunctionTable([
        RawSymbol("outer", 0x100, 0x100, True, 0x1000),
        RawSymbol("inner", 0x140, 0x20, True, 0x1000),
        RawSymbol("_IO_alias", 0x300, 0x10, True, 0x1000),
        RawSymbol("alias", 0x300, 0x10, True, 0x1000, binding=1),
        RawSymbol("label", 0x400, 0, False, 0x1000),
        RawSymbol("next_label", 0x408, 0, False, 0x1000),
        RawSymbol("sized_after", 0x410, 0x8, True, 0x1000),
        RawSymbol("last_label", 0x500, 0, False, 0x520),   # its section ends at 0x520
        RawSymbol("shadowed", 0x150, 0, False, 0x1000),    # inside a sized symbol
    ])
    probes = np.array([0x100, 0x13F, 0x140, 0x15F, 0x160, 0x1FF, 0x200, 0x305, 0x404,
                       0x409, 0x410, 0x418, 0x51F, 0x520, 0x50], dtype=np.uint64)
    idx, off = table.lookup(probes)
    got = [(table.names[i] if i >= 0 else None, int(o)) for i, o in zip(idx, off)]
    assert got == [
        ("outer", 0), ("outer", 0x3F), ("inner", 0), ("inner", 0x1F), ("outer", 0x60),
        ("outer", 0xFF), (None, 0), ("alias", 5), ("label", 4), ("next_label", 1),
        ("sized_after", 0), (None, 0), ("last_label", 0x1F), (None, 0), (None, 0),
    ]
    assert table.address_of("_IO_alias") == 0x300
    assert table.address_of("missing") is None


def test_function_table_partial_overlap_prefers_the_later_start() -> None:
    table = FunctionTable([RawSymbol("a", 0x10, 0x20, True, 0x100),
                           RawSymbol("b", 0x20, 0x20, True, 0x100)])
    idx, off = table.lookup(np.array([0x1F, 0x20, 0x2F, 0x30, 0x3F, 0x40], dtype=np.uint64))
    assert [table.names[i] if i >= 0 else None for i in idx] == ["a", "b", "b", "b", "b", None]
    assert off.tolist() == [0xF, 0, 0xF, 0x10, 0x1F, 0]


# -- line tables (pure) -------------------------------------------------------------------

class _FakeSection:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        assert key == "sh_type"
        return "SHT_PROGBITS"

    def data(self) -> bytes:
        return self._data


class _FakeElf:
    """Just enough of an ELFFile for read_line_table: named sections."""

    def __init__(self, sections: dict[str, bytes]) -> None:
        self.sections = sections

    def get_section_by_name(self, name: str) -> _FakeSection | None:
        data = self.sections.get(name)
        return None if data is None else _FakeSection(data)


def _line_unit_v4(program: bytes) -> bytes:
    """A DWARF 4 line-number unit with one file, /src/a.c, around ``program``."""
    header = bytes([1, 1, 1, 0xFB, 14, 13, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1])
    header += b"/src\0\0" + b"a.c\0" + bytes([1, 0, 0]) + b"\0"
    body = (4).to_bytes(2, "little") + len(header).to_bytes(4, "little") + header + program
    return len(body).to_bytes(4, "little") + body


def _set_address(address: int) -> bytes:
    return bytes([0, 9, 2]) + address.to_bytes(8, "little")


END_SEQUENCE = bytes([0, 1, 1])


def test_line_table_sequences_line_zero_and_dropped_code() -> None:
    program = (
        _set_address(0x1000) + bytes([3, 9, 1])       # line 10 at 0x1000
        + bytes([2, 4, 3, 0x76, 1])                    # line 0 at 0x1004: skipped
        + bytes([2, 4, 3, 12, 1])                      # line 12 at 0x1008
        + bytes([2, 4]) + END_SEQUENCE                 # ends at 0x100c
        + _set_address(0) + bytes([1, 2, 16]) + END_SEQUENCE   # dropped code at 0
        + _set_address(0x2000) + bytes([3, 0x7F, 1])   # line 0 first: no line there
        + bytes([2, 4, 3, 20, 1, 2, 4]) + END_SEQUENCE  # line 20 at 0x2004, ends 0x2008
    )
    bad_unit = (2).to_bytes(4, "little") + (99).to_bytes(2, "little")
    elf = _FakeElf({".debug_line": _line_unit_v4(program) + bad_unit})
    table = read_line_table(elf, [(0x1000, 0x3000)])
    assert table.files == ["/src/a.c"]
    assert "version 99" in table.warning
    probes = [0xFFF, 0x1000, 0x1005, 0x1008, 0x100B, 0x100C, 0x1FFF, 0x2000, 0x2004,
              0x2007, 0x2008, 0x10]
    file, line = table.lookup_lines(np.array(probes, dtype=np.uint64))
    assert line.tolist() == [0, 10, 10, 12, 12, 0, 0, 0, 20, 20, 0, 0]
    assert file.tolist() == [-1, 0, 0, 0, 0, -1, -1, -1, 0, 0, -1, -1]


def test_line_table_of_nothing_is_empty_with_a_reason() -> None:
    assert read_line_table(None, []).warning == "no debug information"
    assert read_line_table(_FakeElf({}), []).warning == "no .debug_line section"
    truncated = read_line_table(_FakeElf({".debug_line": b"\x30\x00\x00\x00\x04"}), [])
    assert len(truncated) == 0 and "broken" in truncated.warning


# -- ELF images ----------------------------------------------------------------------------

def test_elf_image_headers_bytes_and_symbols(binaries: dict[str, Path]) -> None:
    exe = binaries["pie"]
    image = load_elf(str(exe))
    assert image is not None
    assert load_elf(str(exe)) is image   # cached by file identity
    assert image.build_id == readelf_build_id(exe)
    assert image.elf_type == "ET_DYN"
    with open(exe, "rb") as f:
        elf = ELFFile(f)
        assert image.entry == elf.header["e_entry"]
        text: Any = elf.get_section_by_name(".text")
        start, offset = int(text["sh_addr"]), int(text["sh_offset"])
        f.seek(offset)
        expected = f.read(64)
    assert image.read_vaddr(start, 64) == expected
    assert image.read_vaddr(0xDEAD0000000, 4) == b""
    assert image.symbol_address("step2") == symtab_vaddr(exe, "step2")
    assert image.symbol_address("no_such_function") is None
    nopie = load_elf(str(binaries["nopie"]))
    assert nopie is not None and nopie.elf_type == "ET_EXEC"


def test_zero_size_symbols_cover_up_to_the_next_symbol(binaries: dict[str, Path]) -> None:
    image = load_elf(str(binaries["pie"]))
    assert image is not None
    a = image.symbol_address("sym_zero_a")
    b = image.symbol_address("sym_zero_b")
    step2 = image.symbol_address("step2")
    assert a is not None and b == a + 3 and step2 is not None and step2 >= b + 2
    idx, off = image.lookup_functions(np.arange(a, b + 2, dtype=np.uint64))
    got = [(image.names[i], int(o)) for i, o in zip(idx, off)]
    assert got == [("sym_zero_a", 0), ("sym_zero_a", 1), ("sym_zero_a", 2),
                   ("sym_zero_b", 0), ("sym_zero_b", 1)]
    idx, off = image.lookup_functions(np.array([step2], dtype=np.uint64))
    assert image.names[int(idx[0])] == "step2" and int(off[0]) == 0


def test_not_an_elf_file_gives_none(tmp_path: Path) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\x00" * 10)
    assert load_elf(str(junk)) is None
    assert load_elf(str(tmp_path / "missing.so")) is None


# -- live processes ------------------------------------------------------------------------

@needs_gcc
@pytest.mark.parametrize("kind", ["pie", "nopie", "dwarf4"])
def test_live_process_addresses_resolve(binaries: dict[str, Path], kind: str) -> None:
    exe = binaries[kind]
    with running(exe) as (pid, values):
        modules = modules_from_maps(read_maps(pid))
    (main_module,) = [m for m in modules if m.path == str(exe)]
    step2_vaddr = symtab_vaddr(exe, "step2")
    assert main_module.bias == values["step2"] - step2_vaddr
    if kind == "nopie":
        assert main_module.bias == 0
    assert main_module.build_id == readelf_build_id(exe)
    assert main_module.contains(values["main"])

    sym = Symbolizer(modules)
    loc = sym.describe(values["step2"])
    assert (loc.module, loc.function, loc.offset) == (str(exe), "step2", 0)
    assert loc.file is not None and os.path.basename(loc.file) == "sym_steps.c"
    assert os.path.isabs(loc.file)
    assert loc.line == marker_line("step2")
    assert addr2line(exe, step2_vaddr) == ("step2", "sym_steps.c", loc.line)
    assert loc.short() == f"step2+0x0 ({exe.name})"
    assert loc.source() == f"sym_steps.c:{marker_line('step2')}"

    ret = sym.describe(values["step1_return"])
    expected_offset = values["step1_return"] - values["step1"]
    assert expected_offset > 0
    assert (ret.function, ret.offset) == ("step1", expected_offset)
    assert ret.line == marker_line("step1-call")
    assert addr2line(exe, values["step1_return"] - main_module.bias) == (
        "step1", "sym_steps.c", ret.line)
    assert ret.short() == f"step1+{expected_offset:#x} ({exe.name})"

    in_libc = sym.describe(values["qsort_return"])
    assert in_libc.module_name is not None and in_libc.module_name.startswith("libc")
    assert in_libc.function is not None
    printf = sym.describe(values["printf"])
    assert printf.module_name is not None and printf.module_name.startswith("libc")
    assert printf.function is not None and "printf" in printf.function

    nowhere = sym.describe(0x10)
    assert nowhere == Location(address=0x10)
    assert nowhere.short() == "0x10" and nowhere.source() is None

    assert sym.symbol_address(None, "main") == values["main"]
    assert sym.symbol_address(exe.name, "step1") == values["step1"]
    assert sym.symbol_address("libc.so.6", "step1") is None


@needs_gcc
def test_vdso_functions_resolve(binaries: dict[str, Path]) -> None:
    with running(binaries["pie"]) as (pid, _):
        modules = modules_from_maps(read_maps(pid))
    if not any(m.path == "[vdso]" for m in modules):
        pytest.skip("no vDSO in this process")
    sym = Symbolizer(modules)
    address = sym.symbol_address("[vdso]", "__vdso_clock_gettime")
    assert address is not None
    loc = sym.describe(address + 1)
    assert loc.module == "[vdso]" and loc.offset == 1
    assert loc.function is not None and "clock_gettime" in loc.function


@needs_gcc
def test_stripped_binary_shows_raw_addresses(binaries: dict[str, Path]) -> None:
    exe = binaries["stripped"]
    with running(exe) as (pid, values):
        modules = modules_from_maps(read_maps(pid))
    sym = Symbolizer(modules)
    loc = sym.describe(values["step2"])
    assert loc.module == str(exe)
    assert loc.function is None and loc.line is None and loc.file is None
    assert loc.short() == f"{values['step2']:#x} ({exe.name})"
    assert sym.symbol_address(None, "step2") is None
    # The libraries still have their symbols.
    printf = sym.describe(values["printf"])
    assert printf.function is not None and "printf" in printf.function


def _overwrite_section(src: Path, dst: Path, name: str, pattern: bytes,
                       keep: int = 0) -> None:
    shutil.copy(src, dst)
    with open(dst, "rb") as f:
        sec: Any = ELFFile(f).get_section_by_name(name)
        offset, size = int(sec["sh_offset"]), int(sec["sh_size"])
    with open(dst, "r+b") as f:
        f.seek(offset + keep)
        f.write((pattern * size)[: size - keep])


@needs_gcc
@pytest.mark.parametrize("pattern,keep", [
    (b"\xff", 0),                 # a 64-bit unit length that runs past the section
    (b"\x00", 0),                 # zero lengths
    (b"\x07\x13\xfe\x81", 4),     # a sane unit length, garbage after it
    (b"\x05\x00", 4),             # version 5, then a header that does not add up
])
def test_broken_dwarf_gives_no_lines_and_no_exception(
    binaries: dict[str, Path], tmp_path: Path, pattern: bytes, keep: int
) -> None:
    broken = tmp_path / "steps_broken"
    _overwrite_section(binaries["pie"], broken, ".debug_line", pattern, keep)
    image = load_elf(str(broken))
    assert image is not None
    table = line_table_for(image)
    assert len(table) == 0
    assert table.warning
    vaddr = symtab_vaddr(broken, "step2")
    module = ModuleMap(str(broken), PIE_BIAS, PIE_BIAS + 0x5000, PIE_BIAS)
    sym = Symbolizer([module])
    loc = sym.describe(PIE_BIAS + vaddr + 4)
    assert (loc.function, loc.offset, loc.line, loc.file) == ("step2", 4, None, None)
    assert loc.source() is None
    arrays = sym.resolve(np.array([PIE_BIAS + vaddr], dtype=np.uint64))
    assert arrays.file.tolist() == [-1] and arrays.line.tolist() == [0]
    assert sym.warnings and "broken" in sym.warnings[0]


@needs_gcc
def test_separate_debug_file_found_by_build_id(
    binaries: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = binaries["pie"]
    build_id = readelf_build_id(full)
    debug_dir = tmp_path / "debug" / ".build-id" / build_id[:2]
    debug_dir.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(full),
                    str(debug_dir / f"{build_id[2:]}.debug")], check=True)
    stripped = tmp_path / "steps_nodebug"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(full)], check=True)
    monkeypatch.setattr(elf_module, "DEBUG_DIRS", (str(tmp_path / "debug"),))
    clear_elf_cache()
    image = load_elf(str(stripped))
    assert image is not None
    vaddr = symtab_vaddr(full, "step2")
    assert image.symbol_address("step2") == vaddr
    assert image.debug_path is not None and image.debug_path.endswith(".debug")
    file, line = line_table_for(image).lookup_lines(np.array([vaddr], dtype=np.uint64))
    assert int(file[0]) >= 0 and int(line[0]) == marker_line("step2")
    clear_elf_cache()


@needs_gcc
def test_vectorized_resolve_equals_describe(binaries: dict[str, Path]) -> None:
    exe = binaries["pie"]
    with running(exe) as (pid, values):
        modules = modules_from_maps(read_maps(pid))
    vdso = [m.start for m in modules if m.path == "[vdso]"]
    probes = [values["step2"], values["step1_return"], values["qsort_return"], 0x10,
              values["printf"], values["main"] + 7, 0, (1 << 64) - 1, *vdso,
              values["step2"], values["step1"] + 3, values["qsort_return"], 0x10]
    addresses = np.array(probes, dtype=np.uint64)
    sym = Symbolizer(modules)
    arrays = sym.resolve(addresses)
    assert len(arrays) == len(probes)
    assert arrays.module.dtype == np.int32 and arrays.offset.dtype == np.uint64
    for i, address in enumerate(probes):
        assert arrays.location(i) == sym.describe(address)
    assert arrays.location(0) == arrays.location(len(probes) - 4)
    assert int(arrays.module[3]) == -1 and int(arrays.function[3]) == -1
    (exe_index,) = [i for i, m in enumerate(modules) if m.path == str(exe)]
    assert int(arrays.module[0]) == exe_index
    assert int(arrays.vaddr[0]) == symtab_vaddr(exe, "step2")
    # A fresh Symbolizer gives the same answer (and shares the loaded images).
    again = Symbolizer(modules).resolve(addresses[::-1])
    assert [again.location(i) for i in range(len(probes))][::-1] == [
        arrays.location(i) for i in range(len(probes))]
