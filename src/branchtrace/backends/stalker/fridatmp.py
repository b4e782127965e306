"""Frida's helper copies left in the temporary directory, removed once nothing runs them.

Frida 17 writes its helper program (~10 MB) into a fresh ``$TMPDIR/frida-<32 hex>/``
and starts it as a daemon that serves every Frida client of the user and exits ~30 s
after the last one left. The directory is removed only by ``frida.shutdown()``, which
takes ~5.6 s here (so ``branchtrace`` leaves with ``os._exit``), and by nothing when the
helper ends later: each stretch of use left 10 MB behind for good (95 of them, 0.9 GB,
in this machine's ``/tmp`` after a day of test runs).

:func:`sweep` removes such a directory of ours when it is certainly stale: named as
Frida names them, owned by us, holding only files (the helper), older than
``MIN_AGE`` seconds (a client may have just written it and not yet started it), and
no process of ours runs a program from it. A running helper keeps its copy; it is
removed by a later run after the helper has ended. The command line calls it as it
leaves (~1 ms with nothing to remove).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time

#: A copy younger than this is left alone, whatever runs.
MIN_AGE = 300.0
_NAME = re.compile(r"frida-[0-9a-f]{32}")


def temp_dir() -> str:
    """Where Frida (GLib's ``g_get_tmp_dir``) puts its files: ``$TMPDIR``, else /tmp."""
    return os.environ.get("TMPDIR") or "/tmp"


def candidates(base: str, now: float | None = None) -> list[str]:
    """Frida's helper directories in ``base`` that are ours, old enough, and hold
    nothing but files (not yet checked against running programs)."""
    now = time.time() if now is None else now
    uid = os.getuid()
    found = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        if not _NAME.fullmatch(name):
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or now - st.st_mtime < MIN_AGE:
                continue
            inside = os.listdir(path)
            if not inside or len(inside) > 4:
                continue
            if not all(stat.S_ISREG(os.lstat(os.path.join(path, f)).st_mode) for f in inside):
                continue
        except OSError:
            continue
        found.append(path)
    return found


def running_from(dirs: list[str]) -> set[str]:
    """Those of ``dirs`` that a process we can see runs a program from."""
    busy: set[str] = set()
    prefixes = {d: d + os.sep for d in dirs}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return set(dirs)      # cannot tell: keep them all
    for pid in pids:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        for d, prefix in prefixes.items():
            if exe.startswith(prefix):
                busy.add(d)
    return busy


def sweep(base: str | None = None, now: float | None = None) -> list[str]:
    """Remove the stale helper copies in ``base`` (default: Frida's temporary
    directory); the paths removed. Never raises: what cannot be removed stays."""
    dirs = candidates(temp_dir() if base is None else base, now)
    if not dirs:
        return []
    busy = running_from(dirs)
    removed = []
    for d in dirs:
        if d in busy:
            continue
        try:
            shutil.rmtree(d)
        except OSError:
            continue
        removed.append(d)
    return removed
