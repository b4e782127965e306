"""Reading the code of a traced process through /proc/PID/mem, for the instruction
decoder: a page we may not read ends the read there, without an error."""

from __future__ import annotations

import os

from ...errors import TargetError

_PAGE = 4096


class TargetMemory:
    """/proc/PID/mem of one process, opened again after an exec (a new image)."""

    def __init__(self) -> None:
        self._fd = -1

    def open(self, pid: int) -> None:
        """(Re)open the memory of ``pid``; a one-line TargetError if we may not."""
        self.close()
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TargetError(f"cannot read the memory of pid {pid}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, address: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``address``: fewer where a page cannot be read."""
        data = b""
        while len(data) < n:   # never across a page we may not have: page by page
            page_left = _PAGE - ((address + len(data)) & (_PAGE - 1))
            try:
                chunk = os.pread(self._fd, min(n - len(data), page_left), address + len(data))
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        return data
