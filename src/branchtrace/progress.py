"""Progress of a long read, on a terminal: how much of the trace files' compressed chunks
has been read, as a tqdm bar on stderr.

The CLI opens :func:`shown` around a command that reads trace files; inside it the
scan of a file adds the bytes of its chunks to the total (:func:`expect`) and every
place that decompresses a chunk advances it (:func:`advance`: ``tracefile.stream``'s
``read_chunk``, ``tracefile.load``, ``decode.fused``). Outside :func:`shown` both are a
test of one global. The bar appears only once the command has run for :data:`DELAY`
seconds, only when stderr is a terminal (never on a pipe or a file), not when
:data:`NO_PROGRESS_ENV` is set or TERM is ``dumb``, and not when tqdm is missing. It
goes away, for good, as soon as the command writes anything else to the terminal (its
report, a warning): the bar and the text never share a line.

State is one module global, not a context variable: chunks are decompressed in worker
threads too (tracefile/load.py, decode/fused.py), which do not inherit a context.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, TextIO, cast

#: Set (to anything but empty) to never show progress.
NO_PROGRESS_ENV = "BRANCHTRACE_NO_PROGRESS"
#: Seconds a command runs before its progress appears (tests set it to 0 through the
#: environment variable of the same name).
DELAY = 1.0
DELAY_ENV = "BRANCHTRACE_PROGRESS_DELAY"


class Progress:
    """The bytes to read and read so far, and the bar once it is shown."""

    def __init__(self, stream: IO[str], delay: float) -> None:
        self.stream = stream
        self.delay = delay
        self.start = time.monotonic()
        self.total = 0
        self.done = 0
        self.bar: Any = None            # a tqdm bar, once shown
        self.ended = False
        self._lock = threading.Lock()

    def expect(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            if self.ended:
                return
            self.done += nbytes
            if self.bar is not None:
                self.bar.update(nbytes)
            elif time.monotonic() - self.start >= self.delay:
                self.bar = _bar(self.stream, max(self.total, self.done), self.done)
                self.ended = self.bar is None

    def end(self) -> None:
        """Take the bar off the terminal; nothing more is shown."""
        with self._lock:
            self.ended = True
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _bar(stream: IO[str], total: int, done: int) -> Any:
    """A tqdm bar of bytes on ``stream``, drawn now; None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc="branchtrace: reading", unit="B",
                unit_scale=True, unit_divisor=1024, leave=False, file=stream,
                dynamic_ncols=True, mininterval=0.25)


_active: Progress | None = None


def expect(nbytes: int) -> None:
    """Add ``nbytes`` (compressed chunk bytes about to be read) to the total."""
    p = _active
    if p is not None:
        p.expect(nbytes)


def advance(nbytes: int) -> None:
    """Count ``nbytes`` of compressed chunks as read (from any thread)."""
    p = _active
    if p is not None:
        p.advance(nbytes)


def active() -> bool:
    """Whether progress is being counted (so that a caller may skip summing sizes)."""
    return _active is not None


def wanted(stream: IO[str]) -> bool:
    """Whether progress may be shown on ``stream``: a terminal, unless the environment
    says no."""
    if os.environ.get(NO_PROGRESS_ENV) or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):        # closed, or not a real stream
        return False


class _Ending:
    """A text stream that ends the progress bar before the first thing written to it."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        if text:
            self._progress.end()
        return self._stream.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def shown() -> Iterator[None]:
    """Show the progress of the reads done inside on stderr, when :func:`wanted`."""
    global _active
    err, out = sys.stderr, sys.stdout
    if _active is not None or not wanted(err):
        yield
        return
    delay = DELAY
    try:
        delay = float(os.environ.get(DELAY_ENV, DELAY))
    except ValueError:
        pass
    p = Progress(err, delay)
    _active = p
    sys.stderr = cast(TextIO, _Ending(err, p))
    if out is not None and wanted(out):
        sys.stdout = cast(TextIO, _Ending(out, p))
    try:
        yield
    finally:
        p.end()
        _active = None
        sys.stderr, sys.stdout = err, out
