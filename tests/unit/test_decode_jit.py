"""The compiled block-id decoder (numba, the ``fast`` extra) and the numpy one agree
exactly: on random id sequences over tables with every kind of flag, unknown ids, and
spans cut anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from branchtrace import decode as D
from branchtrace.decode import jit as decode_jit
from branchtrace.store.blocks import (BLOCK_DTYPE, FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED,
                                      FLAG_VALID)

pytestmark = pytest.mark.skipif(not decode_jit.available(),
                                reason="numba is not installed (pip install -e '.[fast]')")


def _table(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.zeros(n, BLOCK_DTYPE)
    t["start"] = rng.choice(np.arange(0x1000, 0x1000 + 64 * n, 16, dtype=np.uint64), n)
    t["end"] = t["start"] + rng.integers(1, 40, n).astype(np.uint64)
    # some blocks fall through into others: their end is another block's start
    falls = rng.random(n) < 0.4
    t["end"][falls] = t["start"][rng.integers(0, n, int(falls.sum()))]
    t["last"] = t["end"] - np.uint64(1)
    t["kind"] = rng.integers(0, 9, n)
    flags = np.full(n, FLAG_VALID, np.uint8)
    for flag, share in ((FLAG_FOREIGN, 0.2), (FLAG_HOOKED, 0.05), (FLAG_ASYNC, 0.05)):
        flags[rng.random(n) < share] |= flag
    flags[rng.random(n) < 0.03] = 0                      # handed out, never completed
    t["flags"] = flags
    # a hooked block resumes a few bytes on in another block
    hooked = np.flatnonzero(flags & FLAG_HOOKED)
    if len(hooked) > 1:
        t["start"][hooked[1:]] = t["start"][hooked[:-1]] + np.uint64(5)
    return t


@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_decoder_agrees_with_numpy(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    table = _table(rng, int(rng.integers(2, 300)))
    ids = rng.integers(0, len(table) + 5, int(rng.integers(2, 50_000))).astype(np.uint32)
    ids[rng.random(len(ids)) < 0.01] = np.uint32(0xFFFFFFFF)   # far past the table
    monkeypatch.setattr(D, "JIT_MIN_IDS", 1 << 40)
    expected = D.decode_blocks(ids, table)
    monkeypatch.setattr(D, "JIT_MIN_IDS", 0)
    got = D.decode_blocks(ids, table)
    assert got.dtype == expected.dtype and len(expected) > 0
    assert np.array_equal(got, expected)


def test_spans_cut_between_any_two_ids(monkeypatch):
    rng = np.random.default_rng(9)
    table = _table(rng, 50)
    ids = rng.integers(0, 50, 1001).astype(np.uint32)
    monkeypatch.setattr(D, "JIT_MIN_IDS", 1 << 40)
    expected = D.decode_blocks(ids, table)
    from concurrent.futures import ThreadPoolExecutor

    t = D._Table(table)
    with ThreadPoolExecutor(2) as pool:
        for parts in (1, 2, 3, 7, 1000):
            got = decode_jit.decode(ids, t.start, t.end, t.last, t.kind, t.flags, pool, parts)
            assert np.array_equal(got, expected), parts
