"""Where Frida's byte-at-a-time memset is in its agent (agent/fill.js), kept between runs.

The agent finds the loop by its bytes (~10-40 ms over the agent's 22 MB of code) and
says at which offset of the agent's file it was; the next run of the same Frida build
passes that offset, and the agent only checks the bytes there. Kept in
``~/.cache/branchtrace/stalker-fill.json``, keyed by the installed Frida binary (path,
size, time); no cache, or a stale one, only costs the search again.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading

_lock = threading.Lock()
_known: dict[tuple[str, str], int | None] = {}
#: What is kept: "offset" (the memset, fill.js) and "capstone" (capcache.js).
PATCHES = ("offset", "capstone")


def _key() -> str | None:
    from . import _probe_key

    key = _probe_key()
    return key["frida"] if key is not None else None


def _path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "branchtrace", "stalker-fill.json")


def known_offset(what: str = "offset") -> int | None:
    """The offset of a patched function (``PATCHES``) in this Frida's agent, as a run
    found it (None: not known)."""
    key = _key()
    if key is None:
        return None
    with _lock:
        if (key, what) not in _known:
            kept: object = {}
            try:
                with open(_path(), encoding="utf-8") as f:
                    kept = json.load(f)
            except (OSError, ValueError):
                pass
            for name in PATCHES:
                offset = kept.get(name) if isinstance(kept, dict) \
                    and kept.get("frida") == key else None
                _known[key, name] = offset if isinstance(offset, int) else None
        return _known[key, what]


def keep_offset(offset: object, what: str = "offset") -> None:
    """Remember what the agent found (an int), unless it is already known."""
    key = _key()
    if key is None or not isinstance(offset, int) or isinstance(offset, bool) \
            or offset < 0 or known_offset(what) == offset:
        return
    with _lock:
        _known[key, what] = offset
        kept = {name: _known.get((key, name)) for name in PATCHES}
        path = _path()
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".fill-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"frida": key, **kept}, f)
            os.replace(tmp, path)
        except OSError:
            pass   # the next run searches again
