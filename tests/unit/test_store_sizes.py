"""Buffer-size parsing, byte formatting and the memory limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from branchtrace.errors import UsageError
from branchtrace.store.sizes import (
    Size,
    cgroup_headroom,
    format_bytes,
    mem_available,
    memory_limit,
    parse_byte_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "count", "in_bytes"),
    [
        ("1", 1, False),
        ("65536", 65536, False),
        ("64K", 65536, False),
        ("64k", 65536, False),
        (" 2M ", 2 << 20, False),
        ("1G", 1 << 30, False),
        ("1.5K", 1536, False),
        ("100B", 100, True),
        ("4KB", 4096, True),
        ("4kib", 4096, True),
        ("3MB", 3 << 20, True),
        ("3MiB", 3 << 20, True),
        ("1gb", 1 << 30, True),
        ("2GiB", 2 << 30, True),
        ("1TB", 1 << 40, True),
        ("1TiB", 1 << 40, True),
        ("0.5KiB", 512, True),
    ],
)
def test_parse_size_accepts(text: str, count: int, in_bytes: bool) -> None:
    size = parse_size(text)
    assert (size.count, size.in_bytes) == (count, in_bytes)


@pytest.mark.parametrize(
    "text",
    ["abc", "0", "-5", "1.5.3", "", "   ", "0K", "0B", "1.5", "10X", "K", "5 records", "1e3"],
)
def test_parse_size_rejects_with_one_line_naming_the_text(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    assert "64K" in message and "4MB" in message  # the accepted forms


def test_size_in_bytes_becomes_records_by_record_size() -> None:
    assert parse_size("4KB").records(24) == 4096 // 24
    assert parse_size("4KB").records(4) == 1024
    assert parse_size("64K").records(24) == 65536  # a record count ignores the record size
    with pytest.raises(UsageError, match="holds no record"):
        parse_size("10B").records(24)
    assert str(Size(3)) == "3 records"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1024", 1024), ("512M", 512 << 20), ("4GB", 4 << 30), ("1GiB", 1 << 30), ("2t", 2 << 40)],
)
def test_parse_byte_size(text: str, value: int) -> None:
    assert parse_byte_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "0", "-1G", "1.1.1G"])
def test_parse_byte_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid memory size"):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (24 << 40, "24.0 TiB"), (3 << 50, "3.0 PiB"), (5000 << 50, "5000.0 PiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def _fake_system(tmp_path: Path, available_kib: int, cg_max: str,
                 cg_current: int) -> dict[str, Path]:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kib} kB\n")
    root = tmp_path / "cgroup"
    (root / "app").mkdir(parents=True)
    (root / "app" / "memory.max").write_text(cg_max + "\n")
    (root / "app" / "memory.current").write_text(f"{cg_current}\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/app\n")
    return {"meminfo": meminfo, "cgroup_root": root, "self_cgroup": self_cgroup}


def test_memory_limit_takes_the_tightest(tmp_path: Path) -> None:
    fake = _fake_system(tmp_path, available_kib=1 << 20, cg_max=str(300 << 20),
                        cg_current=100 << 20)
    assert mem_available(fake["meminfo"]) == 1 << 30
    assert cgroup_headroom(fake["cgroup_root"], fake["self_cgroup"]) == 200 << 20
    value, why = memory_limit(tmp_path, None, **fake)
    assert value == 200 << 20
    assert "cgroup" in why
    value, why = memory_limit(tmp_path, 5 << 20, **fake)
    assert (value, why) == (5 << 20, "--memory-limit")


def test_memory_limit_without_cgroup_limit_uses_meminfo(tmp_path: Path) -> None:
    fake = _fake_system(tmp_path, available_kib=1024, cg_max="max", cg_current=0)
    assert cgroup_headroom(fake["cgroup_root"], fake["self_cgroup"]) is None
    value, why = memory_limit(tmp_path, None, **fake)
    assert value == 1 << 20
    assert why.startswith("MemAvailable")


def test_memory_limit_counts_file_system_free_space(tmp_path: Path) -> None:
    fake = _fake_system(tmp_path, available_kib=1 << 40, cg_max="max", cg_current=0)
    st = os.statvfs(tmp_path)
    value, why = memory_limit(tmp_path, None, **fake)
    assert value <= st.f_bavail * st.f_frsize
    assert "free space" in why or "RLIMIT_AS" in why
