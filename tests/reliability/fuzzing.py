"""Shared by the fuzz tests of the readers: hostile values, CI-sized example counts
(``pytest --soak`` multiplies them) and :func:`bounded`, which fails a read that hangs
or allocates more than a small multiple of the file it reads.

atheris (coverage-guided fuzzing) is not used: it is not in this machine's package
registry, so it cannot be installed here; hypothesis drives the inputs instead.
"""

from __future__ import annotations

import signal
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

TIME_LIMIT = 10.0           # seconds one read may take
SLACK = 8 << 20             # the constant of the memory bound: scratch buffers, pools
HOSTILE = [0, 1, 2, 0x7FFF_FFFF, 1 << 31, 0xFFFF_FFFF, 1 << 32, 1 << 40, 1 << 62,
           (1 << 63) - 1, (1 << 64) - 1]
MEASURED: dict[str, tuple[int, int]] = {}   # highest peak and its file size, per reader


def examples(soak: bool, n: int) -> Any:
    return settings(max_examples=n * 20 if soak else n, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@contextmanager
def bounded(what: str, size: int, seen: dict[str, int] | None = None) -> Iterator[None]:
    """Fail a read that takes longer than TIME_LIMIT (SIGALRM interrupts a hang) or
    whose peak allocation passes 4 x the file size + SLACK; the peak goes into ``seen``."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"reading a hostile {what} took over {TIME_LIMIT} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    tracemalloc.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if seen is not None:
        seen["peak"] = peak
    worst = MEASURED.get(what, (0, 0))
    if peak > worst[0]:
        MEASURED[what] = (peak, size)
    assert peak < 4 * size + SLACK, f"{what} of {size} bytes: peak allocation {peak}"


def report_bounds(capsys: pytest.CaptureFixture[str], *readers: str) -> None:
    """Print the highest peak allocation seen for ``readers`` (``pytest -s`` shows it)."""
    with capsys.disabled():
        for what in readers:
            if what in MEASURED:
                peak, size = MEASURED[what]
                print(f"\n  {what}: highest peak {peak} bytes, for a {size}-byte file "
                      f"(bound {4 * size + SLACK})")
    assert all(peak < 4 * size + SLACK for peak, size in MEASURED.values())
