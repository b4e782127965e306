"""The store file on disk: where a new one goes, reserving its memory, and checks.

Where: a fresh ``mkdtemp`` directory (mode 0700, an unguessable name) under /dev/shm
or the temporary directory; or a directory the caller names, which must be ours and
writable by no one else. The file gets a random name and is made with
``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600: never a file or link someone made first.

:func:`create_file` makes a fresh store file (header, empty thread table, the first
region); :func:`open_file` opens an existing one after checking its header. Mapping
the file and everything after that is :class:`~branchtrace.store.core.Store`'s job.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import MemoryLimitError, StoreError, UsageError
from .layout import (
    HEADER_DTYPE,
    HEADER_SIZE,
    MAGIC,
    THREAD_DTYPE,
    THREAD_ENTRY_SIZE,
    VERSION,
    Encoding,
    StoreConfig,
    StoreMode,
)
from .sizes import format_bytes, memory_limit


def _allocate(fd: int, offset: int, length: int, where: Path) -> None:
    """Back ``length`` bytes of the file with memory now, so a full tmpfs fails here."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as err:
        os.ftruncate(fd, offset)
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM):
            raise MemoryLimitError(
                f"cannot reserve {format_bytes(length)} for the store in {where.parent}: "
                f"{err.strerror}"
            ) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise StoreError(f"cannot grow the store {where}: {err.strerror}") from None
        os.ftruncate(fd, offset + length)


def _default_parent() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def check_directory(directory: Path) -> None:
    """Refuse a directory another user could plant files in: it must be a real directory
    (not a symbolic link), owned by us, and writable by no one else. Raises
    :class:`StoreError` with the reason."""
    try:
        st = os.lstat(directory)
    except OSError as err:
        raise StoreError(f"cannot use {directory} for the store: {err.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"refusing {directory} for the store: it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot use {directory} for the store: not a directory")
    if st.st_uid != os.geteuid():
        raise StoreError(f"refusing {directory} for the store: it belongs to uid "
                         f"{st.st_uid}, not to us (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise StoreError(f"refusing {directory} for the store: others may write to it "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}; use a mode like 0700)")


def _check_header(h: np.void, file_size: int) -> str | None:
    """Why the header ``h`` is not a store this code can read (None if it is)."""
    if bytes(h["magic"]).ljust(8, b"\0") != MAGIC:
        return "not a branchtrace store (bad magic)"
    if int(h["version"]) != VERSION:
        return f"store format version {int(h['version'])}, this branchtrace reads {VERSION}"
    try:
        config = StoreConfig(
            StoreMode(int(h["mode"])), Encoding(int(h["encoding"])), int(h["capacity"]),
            int(h["chunk_records"]), None, int(h["max_threads"]),
        )
    except (ValueError, UsageError) as err:
        return f"bad configuration in header: {err}"
    expected = {
        "header_size": HEADER_SIZE, "record_size": config.record_size,
        "nchunks": config.nchunks, "thread_table_offset": HEADER_SIZE,
        "region_bytes": config.region_bytes, "thread_entry_size": THREAD_ENTRY_SIZE,
        "regions_offset": config.regions_offset,
    }
    for name, value in expected.items():
        if int(h[name]) != value:
            return f"header field {name} is {int(h[name])}, expected {value}"
    if int(h["nthreads"]) > config.max_threads:
        return f"{int(h['nthreads'])} thread regions for {config.max_threads} thread slots"
    if file_size < config.regions_offset + int(h["nthreads"]) * config.region_bytes:
        return f"file is truncated ({file_size} bytes)"
    return None


def create_file(config: StoreConfig, directory: Path | None) -> tuple[Path, int, Path | None, str]:
    """Make a new store file (mode 0600) with its header and the first thread region.

    Returns the path, the open descriptor, the private directory made for it (None when
    ``directory`` was given) and where the memory limit came from. On failure nothing
    is left behind. See :meth:`Store.create <branchtrace.store.core.Store.create>`.
    """
    owned: Path | None = None
    if directory is None:
        parent = _default_parent()
        try:   # mode 0700, a name no one can guess or make first
            owned = Path(tempfile.mkdtemp(prefix="branchtrace-", dir=parent))
        except OSError as err:
            raise StoreError(f"cannot make a directory for the store in {parent}: "
                             f"{err.strerror}") from None
    else:
        check_directory(Path(directory))
    where = owned if owned is not None else Path(directory or ".")
    path = where / f"btstore-{secrets.token_hex(8)}.bts"
    fd = -1
    try:
        limit, why = memory_limit(where, config.memory_limit)
        need = config.regions_offset + config.region_bytes
        if need > limit:
            raise MemoryLimitError(
                f"a {config.mode.name.lower()} buffer of {config.capacity_records} records "
                f"per thread needs {format_bytes(need)} for one thread, but the memory limit "
                f"is {format_bytes(limit)} (from {why}): use a smaller --buffer-size"
                + (" or a larger --memory-limit" if why == "--memory-limit" else "")
            )
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        _allocate(fd, 0, need, path)
        head = np.zeros(1, HEADER_DTYPE)
        values = {
            "magic": MAGIC, "version": VERSION, "header_size": HEADER_SIZE,
            "mode": config.mode, "encoding": config.encoding,
            "record_size": config.record_size, "max_threads": config.max_threads,
            "capacity": config.capacity_records, "chunk_records": config.chunk_records,
            "nchunks": config.nchunks, "thread_table_offset": HEADER_SIZE,
            "region_bytes": config.region_bytes, "nthreads": 1,
            "thread_entry_size": THREAD_ENTRY_SIZE, "memory_limit": limit,
            "created_ns": time.time_ns(), "regions_offset": config.regions_offset,
        }
        for name, value in values.items():
            head[name] = value
        entry = np.zeros(1, THREAD_DTYPE)
        entry["region_offset"] = config.regions_offset  # slot 0: free, with a region
        os.pwrite(fd, head.tobytes(), 0)
        os.pwrite(fd, entry.tobytes(), HEADER_SIZE)
        return path, fd, owned, why
    except BaseException:
        discard_file(path, fd, owned)
        raise


def discard_file(path: Path, fd: int, owned: Path | None) -> None:
    """Undo :func:`create_file`: close ``fd`` (if open), remove the file and ``owned``."""
    if fd >= 0:
        os.close(fd)
        path.unlink(missing_ok=True)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def open_file(path: Path) -> int:
    """Open the existing store file ``path`` after checking its header; the descriptor."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise StoreError(f"cannot open store {path}: {err.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            raise StoreError(f"{path} is not a branchtrace store (only {len(raw)} bytes)")
        problem = _check_header(np.frombuffer(raw, HEADER_DTYPE)[0], size)
        if problem:
            raise StoreError(f"{path}: {problem}")
    except BaseException:
        os.close(fd)
        raise
    return fd
