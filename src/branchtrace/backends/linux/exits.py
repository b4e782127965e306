"""How processes we are not the parent of ended: the kernel's process events connector.

A process the stalker backend follows but did not start (a child of the program, or the
target of ``attach``) is reaped by its own parent: no ``waitpid`` of ours sees its wait
status. Its agent reports an ``_exit`` code and a fault, but not a death by a signal
that is no fault (SIGPIPE in a pipeline, SIGTERM, SIGKILL): those ended as "unknown".

The kernel's process events connector (netlink ``NETLINK_CONNECTOR``, ``CN_IDX_PROC``)
sends an event at every task's exit with its wait status (``PROC_EVENT_EXIT``:
``exit_code`` as ``waitpid`` gives it, e.g. 0xd for death by SIGPIPE). It needs
CAP_NET_ADMIN, in the initial network namespace; where it cannot be opened,
:class:`ExitWatcher` says why and the exits stay "unknown".
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections import OrderedDict

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_EXIT = 0x80000000

_NLMSG = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")        # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")            # what, cpu, timestamp_ns
_EXIT = struct.Struct("=IIII")            # pid, tgid, exit_code, exit_signal
_EVENT_AT = _NLMSG.size + _CN_MSG.size
_KEEP = 65536                             # wait statuses kept (the newest)


class ExitWatcher:
    """Collects the wait status of every process that exits while it runs."""

    def __init__(self, listen: bool = True) -> None:
        self.reason: str | None = None
        self._statuses: OrderedDict[int, int] = OrderedDict()
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        if not listen:   # the tests of the parsing
            self.reason = "not listening"
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            try:
                sock.bind((0, CN_IDX_PROC))
                sock.send(_listen(PROC_CN_MCAST_LISTEN))
            except OSError:
                sock.close()
                raise
        except OSError as err:
            self.reason = (f"the process events connector cannot be opened ({err.strerror or err}; "
                           "it needs CAP_NET_ADMIN in the initial network namespace)")
            return
        self._sock = sock
        # close() writes here: a recv blocked on the socket would not notice its close
        # (every watcher's thread stayed, until some process exited)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="branchtrace-exits", daemon=True)
        self._thread.start()

    @property
    def available(self) -> bool:
        return self._sock is not None

    def status(self, pid: int, wait: float = 0.0) -> int | None:
        """``pid``'s wait status if it exited while we watched (waiting up to ``wait``
        seconds for the event: it comes a moment after the process is gone)."""
        deadline = time.monotonic() + wait
        with self._cond:
            while pid not in self._statuses and self._sock is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._statuses.get(pid)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.send(_listen(PROC_CN_MCAST_IGNORE))
            except OSError:
                pass
            os.write(self._wake_w, b"x")
            self._thread.join(5.0)
            sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        sock = self._sock
        while sock is not None and self._sock is sock:
            ready, _, _ = select.select([sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = sock.recv(4096)
            except OSError:   # events dropped (ENOBUFS): go on while open
                continue
            self._take(data)

    def _take(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT_AT + _EVENT.size <= len(data):
            length = _NLMSG.unpack_from(data, offset)[0]
            what = _EVENT.unpack_from(data, offset + _EVENT_AT)[0]
            if what == PROC_EVENT_EXIT:
                pid, tgid, code, _ = _EXIT.unpack_from(data, offset + _EVENT_AT + _EVENT.size)
                if pid == tgid:   # the process's main thread: the process's status
                    with self._cond:
                        self._statuses[pid] = code
                        self._statuses.move_to_end(pid)
                        while len(self._statuses) > _KEEP:
                            self._statuses.popitem(last=False)
                        self._cond.notify_all()
            if length <= 0:
                return
            offset += (length + 3) & ~3


def _listen(op: int) -> bytes:
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn
