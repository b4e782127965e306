"""Record a target: choose a backend, configure the store, run, collect a :class:`Trace`.

This is the engine behind ``branchtrace run`` and ``branchtrace attach`` and the Python
API. It never prints: what the user should know travels in the trace (``notes``,
``gaps``) and through the optional ``on_choice`` callback.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends import Backend, RecordOptions, Target, select
from .decode import concat, decode
from .model import Gap
from .sizes import parse_byte_size, parse_size
from .store import RECORD_DTYPES, Store, StoreConfig, StoreMode, StreamConsumer
from .trace import Trace


@dataclass(frozen=True)
class RecordConfig:
    backend: str = "auto"
    mode: str = "ring"               # "ring" or "stream"
    buffer: str | None = None        # per-thread size: "64K" records, "16MiB" bytes
    memory_limit: str | None = None  # bytes, e.g. "1GiB"
    start: str | None = None
    duration: float | None = None


def parse_mode(mode: str) -> StoreMode:
    from .errors import UsageError

    try:
        return StoreMode[mode.upper()]
    except KeyError:
        raise UsageError(f"unknown mode {mode!r} (choose ring or stream)") from None


def store_config(config: RecordConfig, backend: Backend) -> StoreConfig:
    """Check sizes and build the store configuration (before anything runs)."""
    mode = parse_mode(config.mode)
    size = parse_size(config.buffer) if config.buffer is not None else None
    limit = parse_byte_size(config.memory_limit) if config.memory_limit is not None else None
    config_ = StoreConfig.from_size(size, mode, backend.encoding, memory_limit=limit)
    capacity = backend.store_capacity(config_.capacity_records, mode)
    if capacity != config_.capacity_records:
        config_ = dataclasses.replace(config_, capacity_records=capacity)
    return config_


def record(target: Target, config: RecordConfig = RecordConfig(),
           on_start: Callable[[Backend, tuple[str, ...]], None] | None = None) -> Trace:
    """Trace ``target`` until it ends (or we detach) and return the trace.

    ``on_start(backend, reasons)`` is called once the backend is chosen and the store
    configured, before the target runs: the caller can keep the backend to interrupt it.
    """
    choice = select(config.backend)
    backend = choice.backend
    sconfig = store_config(config, backend)
    collected: dict[int, list[np.ndarray]] = defaultdict(list)
    start = time.time()
    with Store.create(sconfig) as store:
        if on_start is not None:
            on_start(backend, choice.reasons)
        consumer = None
        if sconfig.mode == StoreMode.STREAM:
            consumer = StreamConsumer(store, lambda tid, recs: collected[tid].append(recs))
            consumer.start()
        try:
            result = backend.record(target, store, RecordOptions(config.start, config.duration))
        finally:
            if consumer is not None:
                consumer.stop()
        status = store.status()
        if consumer is None:
            for tid in store.tids():
                collected[tid].append(store.drain(tid, final=True))
    end = time.time()
    raw_dtype = RECORD_DTYPES[sconfig.encoding]
    threads = {}
    for tid in result.threads:
        threads[tid] = decode(sconfig.encoding, concat(collected.get(tid, []), raw_dtype),
                              result.blocks)
    written = {t.tid: t.written for t in status.threads}
    lost = {t.tid: t.lost for t in status.threads}
    gaps = list(result.gaps)
    for gap in result.gaps:
        lost[gap.tid] = lost.get(gap.tid, 0) + gap.count
    for tid, n in lost.items():
        if n and not any(g.tid == tid for g in result.gaps):
            gaps.append(Gap(tid, 0, n, "ring buffer overwrote the oldest records"))
    return Trace(
        backend=backend.name, mode=sconfig.mode.name.lower(),
        argv=target.argv, pid=result.pid or (target.pid or 0), exit=result.exit,
        modules=result.modules, threads=threads, gaps=gaps, written=written, lost=lost,
        notes=result.notes, start_time=start, end_time=end,
        producer_waits=sum(t.producer_waits for t in status.threads),
    )
