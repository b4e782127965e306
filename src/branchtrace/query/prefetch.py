"""Run an iterator one step ahead in a thread of its own.

Decoding a chunk (zstd, numpy) and building its Arrow columns (pyarrow) both release the
GIL for most of their work, so the next chunk can be decoded while the last one is
turned into a batch and consumed. At most ``depth`` items wait, so memory stays bounded
by a few chunks. Closing the consumer's generator early (a ``LIMIT``) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items``, produced in a worker thread up to ``depth`` ahead."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Failed(err))

    worker = threading.Thread(target=work, name="branchtrace-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
