"""symbols/elfhead.py: the fast program-header and build-id reader agrees with the
full ELF parse, and refuses what is not a 64-bit little-endian ELF file."""

from __future__ import annotations

import sys
from pathlib import Path

from branchtrace.symbols.elf import load_elf
from branchtrace.symbols.elfhead import read_head
from branchtrace.symbols.maps import modules_from_maps, read_maps


def _elf_files() -> list[str]:
    return sorted({m.path for m in read_maps(__import__("os").getpid())
                   if m.path.startswith("/") and ".so" in m.path} | {sys.executable})


def test_agrees_with_the_full_parse():
    paths = _elf_files()
    assert len(paths) >= 3
    for path in paths:
        head, image = read_head(path), load_elf(path)
        assert head is not None and image is not None, path
        assert head.build_id == image.build_id, path
        assert [(s.offset, s.vaddr, s.filesz) for s in head.segments] == \
            [(s.offset, s.vaddr, s.filesz) for s in image.segments], path
        for seg in image.segments:
            assert head.load_bias(0x7F0000000000 + seg.offset, seg.offset) == \
                image.load_bias(0x7F0000000000 + seg.offset, seg.offset)


def test_a_module_snapshot_has_build_ids():
    modules = modules_from_maps(read_maps(__import__("os").getpid()))
    libc = [m for m in modules if Path(m.path).name.startswith("libc.so")]
    assert libc and len(libc[0].build_id) == 40
    assert libc[0].build_id == load_elf(libc[0].path).build_id


def test_what_is_not_an_elf_file(tmp_path):
    text = tmp_path / "text"
    text.write_text("hello")
    assert read_head(str(text)) is None
    assert read_head(str(tmp_path)) is None                  # a directory
    assert read_head(str(tmp_path / "missing")) is None
    libc = next(p for p in _elf_files() if "libc.so" in p)
    cut = tmp_path / "cut.so"
    cut.write_bytes(Path(libc).read_bytes()[:100])           # program headers cut off
    assert read_head(str(cut)) is None
    hostile = bytearray(Path(libc).read_bytes()[:4096])
    hostile[0x38:0x3A] = (0xFFFF).to_bytes(2, "little")      # e_phnum: 65535 headers
    (tmp_path / "hostile.so").write_bytes(bytes(hostile))
    assert read_head(str(tmp_path / "hostile.so")) is None
