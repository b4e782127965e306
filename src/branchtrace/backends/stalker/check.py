"""A block counter apart from the store, to check that stream mode loses nothing.

With ``BRANCHTRACE_STALKER_CHECK=1`` in the tracer's environment (for tests; off by
default, it costs three instructions per block), the code each block starts with also
adds one to a 64-bit counter of its thread that lives outside the store: a word of a
small shared file next to the store (``<store>.check``, mode 0600), one word per
thread in the order the threads got their slots. The emitted code reaches it as
``T`` + a displacement like everything else (docs/stalker.md, "Checking the stream").
The tracer reads every thread's counter at the end: in stream mode, records drained
must equal the counter exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ENV = "BRANCHTRACE_STALKER_CHECK"
_PAGE = 4096


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


class CheckCounters:
    """The check file: ``words`` counters of 8 bytes, zero at the start."""

    def __init__(self, directory: Path, stem: str, words: int) -> None:
        self.path = directory / f"{stem}.check"
        self.words = words
        size = -(-8 * words // _PAGE) * _PAGE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self.index: dict[int, int] = {}   # tid -> word

    def assign(self, tid: int) -> int | None:
        """The word of ``tid`` (a new one per thread; None once all are taken)."""
        if tid not in self.index:
            if len(self.index) >= self.words:
                return None
            self.index[tid] = len(self.index)
        return self.index[tid]

    def read(self) -> dict[int, int]:
        """Every thread's counter, by tid."""
        try:
            raw = np.fromfile(self.path, dtype="<u8")
        except OSError:
            return {}
        return {tid: int(raw[i]) for tid, i in self.index.items() if i < len(raw)}

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
