"""Process memory maps: /proc/PID/maps lines, and the modules (mapped files) they form.

A module is one load of one file: its file-backed mappings grouped by path, with the
load bias (run-time address = ELF virtual address + bias) worked out from the file's
program headers. Special executable mappings (``[vdso]``, ``[vsyscall]``) are modules
too, with bias = start (the vDSO is linked at address 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import TargetError
from ..model import Mapping, ModuleMap
from .elfhead import ElfHead, read_head

if TYPE_CHECKING:
    from .elf import ElfImage

DELETED_SUFFIX = " (deleted)"


def parse_maps(text: str) -> list[Mapping]:
    """Parse the lines of a /proc/PID/maps file.

    The path keeps its text exactly (inner spaces and a `` (deleted)`` suffix
    included); see :func:`is_deleted`. Blank lines are skipped; a malformed line raises
    ``ValueError`` naming it.
    """
    out: list[Mapping] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        # start-end perms offset dev inode [path]; the path is everything after the
        # padding that follows the inode, so it may itself contain spaces.
        fields = raw.split(None, 5)
        try:
            if len(fields) < 5:
                raise ValueError("too few fields")
            lo, hi = fields[0].split("-", 1)
            start, end, offset = int(lo, 16), int(hi, 16), int(fields[2], 16)
        except ValueError as err:
            raise ValueError(f"maps line {number} is malformed ({err}): {raw!r}") from None
        path = fields[5] if len(fields) == 6 else ""
        out.append(Mapping(start=start, end=end, perms=fields[1], offset=offset, path=path))
    return out


def read_maps(pid: int) -> list[Mapping]:
    """The current mappings of process ``pid``; raises :class:`TargetError` if unreadable."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"process {pid} does not exist (cannot read its memory maps)") from None
    except PermissionError:
        raise TargetError(f"permission denied reading the memory maps of process {pid}") from None
    except OSError as err:
        raise TargetError(f"cannot read the memory maps of process {pid}: {err.strerror}") from None
    return parse_maps(text)


def is_deleted(path: str) -> bool:
    """Whether a maps path names a file deleted (or replaced) since it was mapped."""
    return path.endswith(DELETED_SUFFIX)


def strip_deleted(path: str) -> str:
    """The path without the kernel's `` (deleted)`` suffix."""
    return path[: -len(DELETED_SUFFIX)] if is_deleted(path) else path


def is_special(path: str) -> bool:
    """Kernel-named mappings: ``[vdso]``, ``[stack]``, ``[heap]``, ``[anon:...]``, ..."""
    return path.startswith("[") and path.endswith("]")


def _loads(maps: Iterable[Mapping]) -> list[list[Mapping]]:
    """File-backed mappings grouped into loads: by path, a new load when offsets restart."""
    by_path: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.path and not is_special(m.path):
            by_path.setdefault(m.path, []).append(m)
    loads: list[list[Mapping]] = []
    for group in by_path.values():
        group.sort(key=lambda m: m.start)
        current: list[Mapping] = []
        for m in group:
            if current and m.offset <= current[-1].offset:
                loads.append(current)
                current = []
            current.append(m)
        loads.append(current)
    return loads


def _module_of_load(load: list[Mapping]) -> ModuleMap:
    path = load[0].path
    lowest = min(load, key=lambda m: (m.offset, m.start))
    bias = lowest.start - lowest.offset
    build_id = ""
    # The program headers and build id, read fast; the full parse (slow) only for files
    # that are no 64-bit little-endian ELF or keep their build id outside PT_NOTE.
    image: ElfHead | ElfImage | None = None if is_deleted(path) else read_head(path)
    if (image is None or not image.build_id) and not is_deleted(path):
        from .elf import load_elf  # the full reader (~8 ms to import), rarely needed

        image = load_elf(path) or image
    if image is not None:
        found = image.load_bias(lowest.start, lowest.offset)
        if found is not None:
            bias = found
        build_id = image.build_id
    return ModuleMap(
        path=path,
        start=min(m.start for m in load),
        end=max(m.end for m in load),
        bias=bias,
        build_id=build_id,
        mappings=tuple(load),
    )


def modules_from_maps(maps: list[Mapping]) -> list[ModuleMap]:
    """The modules of a maps snapshot, sorted by start address.

    Only loads with at least one executable mapping count (data files such as locale
    archives are left out). Files that cannot be read (deleted, no permission, not
    ELF) get bias = start - offset of their lowest mapping and no build id.
    """
    modules = [
        _module_of_load(load) for load in _loads(maps) if any(m.executable for m in load)
    ]
    for m in maps:
        if is_special(m.path) and m.executable:
            modules.append(ModuleMap(path=m.path, start=m.start, end=m.end, bias=m.start,
                                     build_id="", mappings=(m,)))
    modules.sort(key=lambda mod: (mod.start, mod.path))
    return modules


def _same_load(a: ModuleMap, b: ModuleMap) -> bool:
    overlap = a.start <= b.end and b.start <= a.end
    if is_deleted(a.path) != is_deleted(b.path):
        # the file went away between the snapshots: its deleted side knows no build id
        gone = a if is_deleted(a.path) else b
        return overlap and strip_deleted(a.path) == strip_deleted(b.path) and not gone.build_id
    return (a.path, a.bias, a.build_id) == (b.path, b.bias, b.build_id) and overlap


def merge_modules(a: Iterable[ModuleMap], b: Iterable[ModuleMap]) -> list[ModuleMap]:
    """Union of two snapshots (say at start and at exit), without duplicates.

    The same load seen in both (same path, bias and build id, overlapping ranges)
    becomes one module spanning both; anything else is kept as is. A file deleted in
    between shows as ``PATH (deleted)`` (no build id, a bias guessed from its maps)
    where it was ``PATH``: the same load too, and the snapshot that could still read
    the file gives the module its path, bias and build id. Sorted by start.
    """
    merged: list[ModuleMap] = []
    for mod in sorted([*a, *b], key=lambda m: (m.start, m.path)):
        for i, seen in enumerate(merged):
            if _same_load(seen, mod):
                known = mod if is_deleted(seen.path) and not is_deleted(mod.path) else seen
                maps = {(m.start, m.end, m.offset, m.perms): m
                        for m in (*seen.mappings, *mod.mappings)}
                merged[i] = ModuleMap(
                    path=known.path,
                    start=min(seen.start, mod.start),
                    end=max(seen.end, mod.end),
                    bias=known.bias,
                    build_id=known.build_id,
                    mappings=tuple(maps[k] for k in sorted(maps)),
                )
                break
        else:
            merged.append(mod)
    return merged
