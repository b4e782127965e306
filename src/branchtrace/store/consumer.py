"""The stream-mode consumer: :class:`StreamConsumer`, a thread that drains a Store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import numpy as np

from ..errors import StoreError

from .core import Store


class StreamConsumer:
    """A daemon thread that drains whole chunks of every thread into ``sink(tid, array)``.

    :meth:`stop` (or leaving the ``with`` block) makes a last ``final=True`` drain of
    everything, joins the thread, and re-raises an exception the sink may have raised.
    """

    def __init__(self, store: Store, sink: Callable[[int, np.ndarray], None],
                 interval: float = 0.001) -> None:
        self.store = store
        self.sink = sink
        self.interval = interval
        self.drained: dict[int, int] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="branchtrace-store-consumer", daemon=True
        )

    @property
    def total(self) -> int:
        return sum(self.drained.values())

    def start(self) -> StreamConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> StreamConsumer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._drain_all(final=False):
                    self._stop.wait(self.interval)
            self._drain_all(final=True)
        except BaseException as err:  # handed to stop()
            self.error = err

    def _drain_all(self, final: bool) -> int:
        taken = 0
        for tid in self.store.tids():
            try:
                records = self.store.drain(tid, final=final)
            except StoreError:  # released since tids() was read
                continue
            if len(records):
                self.sink(tid, records)
                self.drained[tid] = self.drained.get(tid, 0) + len(records)
                taken += len(records)
        return taken
