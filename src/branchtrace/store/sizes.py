"""Buffer sizes as the user writes them, and how much memory the store may take.

``--buffer-size`` takes either a record count (``65536``, ``64K``, ``1M``) or an
amount of memory (``4MB``, ``512KiB``, ``1GiB``) that is turned into records once the
record size of the chosen encoding is known; :func:`parse_size` keeps that distinction
in a :class:`Size`. :func:`memory_limit` finds the number of bytes the store may use:
the tightest of the machine's free memory, the cgroup's headroom, the free space of
the file system that holds the store, ``RLIMIT_AS`` and the user's ``--memory-limit``.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

#: Suffixes of a record count (binary multipliers).
RECORD_SUFFIXES: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

#: Units of an amount of memory. KB is read as KiB, MB as MiB, and so on.
BYTE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1 << 10, "kib": 1 << 10,
    "mb": 1 << 20, "mib": 1 << 20,
    "gb": 1 << 30, "gib": 1 << 30,
    "tb": 1 << 40, "tib": 1 << 40,
}

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_SIZE_FORMS = "a record count like 65536, 64K, 1M, 1G or a size like 4MB, 512KiB, 1GiB"
_BYTES_FORMS = "a byte count like 1073741824 or a size like 512M, 4GB, 1GiB, 2TiB"

#: cgroup limits at or above this are "no limit" (v1 writes 2**63 rounded down to a page).
_UNLIMITED = 1 << 60


@dataclass(frozen=True, slots=True)
class Size:
    """A buffer size: ``count`` records, or ``count`` bytes when ``in_bytes``."""

    count: int
    in_bytes: bool = False
    text: str = ""

    def records(self, record_size: int) -> int:
        """The number of records this size stands for, given the record size in bytes."""
        if not self.in_bytes:
            return self.count
        n = self.count // record_size
        if n < 1:
            shown = self.text or f"{self.count}B"
            raise UsageError(
                f"buffer size {shown!r} holds no record: a record takes {record_size} bytes"
            )
        return n

    def __str__(self) -> str:
        if self.text:
            return self.text
        return format_bytes(self.count) if self.in_bytes else f"{self.count} records"


def _parse_number(text: str, units: dict[str, int], forms: str, what: str) -> tuple[int, str]:
    """Split ``text`` into a positive integer amount and its (lower-case) unit."""
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in units:
        raise UsageError(f"invalid {what} {text!r}: expected {forms}")
    from fractions import Fraction  # here: ~2 ms of imports (decimal) before every run

    value = Fraction(match.group(1)) * units[unit]
    if value.denominator != 1 or value < 1:
        raise UsageError(f"invalid {what} {text!r}: expected a positive whole amount, {forms}")
    return int(value), unit


def parse_size(text: str) -> Size:
    """Parse a ``--buffer-size``: records (``64K``) or bytes (``4MB``), case-insensitive.

    Raises :class:`UsageError` for anything else (``abc``, ``0``, ``-5``, ``1.5.3``, "").
    """
    units = {**RECORD_SUFFIXES, **BYTE_UNITS}
    count, unit = _parse_number(text, units, _SIZE_FORMS, "buffer size")
    return Size(count, unit in BYTE_UNITS, text.strip())


def parse_byte_size(text: str) -> int:
    """Parse a ``--memory-limit``: a byte count, K/M/G/T or KB/KiB/... units, all binary."""
    units = {**BYTE_UNITS, "": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return _parse_number(text, units, _BYTES_FORMS, "memory size")[0]


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units with one decimal: ``"512 B"``, ``"24.0 TiB"``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def _read_int(path: Path) -> int | None:
    """The integer in a one-line file like memory.max, or None for "max"/absent/garbage."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "MemAvailable:" and fields[1].isdigit():
            return int(fields[1]) * 1024
    return None


def cgroup_headroom(
    root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Limit minus usage of our memory cgroup (v2 ``memory.max``, else v1), or None."""
    v2_path, v1_path = "", ""
    try:
        for line in self_cgroup.read_text().splitlines():
            _, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if line.startswith("0::"):
                v2_path = path.lstrip("/")
            elif "memory" in controllers.split(","):
                v1_path = path.lstrip("/")
    except OSError:
        pass
    candidates = [
        (root / v2_path / "memory.max", root / v2_path / "memory.current"),
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / v1_path / "memory.limit_in_bytes",
         root / "memory" / v1_path / "memory.usage_in_bytes"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ]
    for limit_file, usage_file in candidates:
        limit = _read_int(limit_file)
        if limit is not None and limit < _UNLIMITED:
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def fs_free(directory: Path) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``directory``."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def address_space_headroom(status: Path = Path("/proc/self/status")) -> int | None:
    """RLIMIT_AS minus the address space already in use, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def memory_limit(
    directory: Path,
    user_limit: int | None,
    *,
    meminfo: Path = Path("/proc/meminfo"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    self_cgroup: Path = Path("/proc/self/cgroup"),
) -> tuple[int, str]:
    """The bytes the store in ``directory`` may use, and which limit decided it.

    The answer is the smallest of: MemAvailable, the cgroup's limit minus its usage,
    the free space of the file system holding ``directory``, the RLIMIT_AS headroom and
    ``user_limit`` (``--memory-limit``). The reason names the limit that decided,
    e.g. ``"MemAvailable in /proc/meminfo"`` or ``"--memory-limit"``.
    """
    candidates: list[tuple[int | None, str]] = [
        (user_limit, "--memory-limit"),
        (mem_available(meminfo), f"MemAvailable in {meminfo}"),
        (cgroup_headroom(cgroup_root, self_cgroup), "the memory cgroup's limit minus its usage"),
        (fs_free(directory), f"free space on the file system of {directory}"),
        (address_space_headroom(), "the RLIMIT_AS headroom"),
    ]
    known = [(value, why) for value, why in candidates if value is not None]
    if not known:
        return _UNLIMITED, "no limit found"
    value, why = min(known, key=lambda item: item[0])
    return value, why
