"""Tests for branchtrace.symbols.images: a module's ELF image only while it is the traced file.

Build ids come from binutils' ``readelf -n`` (not from the code under test); the vDSO's
place and size from this process's own /proc/self/maps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from branchtrace.analysis.code import CodeReader
from branchtrace.isa import disassembler
from branchtrace.model import ModuleMap
from branchtrace.symbols import Symbolizer, module_image

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

OTHER_ID = "00" * 20


def build(out: Path, value: int) -> Path:
    src = out.with_suffix(".c")
    src.write_text(f"int answer(void) {{ return {value}; }}\n"
                   "int main(void) { return answer(); }\n")
    subprocess.run(["gcc", "-O0", "-o", str(out), str(src)], check=True)
    return out


def readelf_build_id(exe: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    assert match is not None
    return match.group(1)


def module(path: str, build_id: str = "", start: int = 0x400000, size: int = 0x10000) -> ModuleMap:
    return ModuleMap(path=path, start=start, end=start + size, bias=start, build_id=build_id)


def own_vdso() -> tuple[int, int] | None:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(" [vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo, hi
    return None


def test_the_traced_build_id_gives_the_image(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    build_id = readelf_build_id(exe)
    found = module_image(module(str(exe), build_id))
    assert found.image is not None and found.image.build_id == build_id
    assert found.image.symbol_address("answer") is not None
    assert (found.reason, found.file_problem, found.why()) == ("", False, "")


def test_a_trace_without_a_build_id_takes_the_file_as_it_is(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    found = module_image(module(str(exe), ""))
    assert found.image is not None and found.image.build_id == readelf_build_id(exe)


def test_another_build_id_gives_no_image_and_says_the_file_changed(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    found = module_image(module(str(exe), OTHER_ID))
    assert found.image is None and found.file_problem
    assert found.why() == f"{exe} changed since the trace (build id differs)"


def test_a_file_rebuilt_in_place_is_refused_after_the_old_one_was_loaded(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    old_id = readelf_build_id(exe)
    assert module_image(module(str(exe), old_id)).image is not None   # now cached
    exe.unlink()
    build(exe, 2)
    new_id = readelf_build_id(exe)
    assert new_id != old_id
    assert module_image(module(str(exe), old_id)).image is None
    again = module_image(module(str(exe), new_id)).image
    assert again is not None and again.build_id == new_id


def test_a_missing_or_unreadable_file_gives_a_reason(tmp_path: Path) -> None:
    missing = module_image(module(str(tmp_path / "missing.so"), OTHER_ID))
    assert missing.image is None and missing.file_problem
    assert missing.why() == f"{tmp_path / 'missing.so'} cannot be read as an ELF file"
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\0" * 60)
    assert module_image(module(str(junk))).image is None


def test_a_deleted_mapping_is_gone_even_if_a_file_has_its_name(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    found = module_image(module(f"{exe} (deleted)", readelf_build_id(exe)))
    assert found.image is None and found.file_problem
    assert found.why() == f"{exe} (deleted) is gone"


def test_the_vdso_is_this_processes_own_when_it_fits_the_traced_mapping() -> None:
    place = own_vdso()
    if place is None:
        pytest.skip("this process has no vDSO")
    lo, hi = place
    found = module_image(ModuleMap("[vdso]", lo, hi, lo))
    assert found.image is not None and found.reason == ""
    assert found.image.symbol_address("__vdso_clock_gettime") is not None
    # a traced vDSO smaller than this kernel's is another kernel's: not used, no warning
    small = module_image(ModuleMap("[vdso]", lo, lo + 0x10, lo))
    assert small.image is None and not small.file_problem
    assert small.why() == "[vdso] differs from this kernel's (larger than traced)"


def test_other_kernel_mappings_have_no_image_and_no_file_problem() -> None:
    found = module_image(ModuleMap("[vsyscall]", 0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 0))
    assert found.image is None and not found.file_problem and found.reason


def test_the_resolver_and_the_code_reader_refuse_a_changed_file(tmp_path: Path) -> None:
    exe = build(tmp_path / "prog", 1)
    good, changed = module(str(exe), readelf_build_id(exe)), module(str(exe), OTHER_ID)
    image = module_image(good).image
    vaddr = image.symbol_address("answer") if image is not None else None
    assert vaddr is not None
    address = good.bias + vaddr
    assert Symbolizer([good]).describe(address).function == "answer"
    assert CodeReader(Symbolizer([good])).read(address, 4) != b""
    sym = Symbolizer([changed])
    assert sym.describe(address).function is None
    assert sym.warnings == [f"{exe} changed since the trace (build id differs): "
                            "its addresses stay raw"]
    assert CodeReader(sym).read(address, 4) == b""
    assert CodeReader(sym).decode_run(address, address + 1) is None


def test_one_capstone_handle_per_detail_setting() -> None:
    plain, detailed = disassembler(detail=False), disassembler(detail=True)
    assert disassembler(detail=False) is plain and disassembler(detail=True) is detailed
    assert plain is not detailed and detailed.detail and not plain.detail
    code = bytes.fromhex("e8 00 00 00 00 c3".replace(" ", ""))   # call +0; ret
    assert [m for _, _, m, _ in plain.disasm_lite(code, 0x1000)] == ["call", "ret"]
    (first, _) = detailed.disasm(code, 0x1000)
    assert first.groups   # details (the call group) are there
    assert first.size == 5
