"""Decode and symbolize throughput on a trace of at least 50M branches.

The trace is synthesized as in history_bench.py (calls, returns and conditional
branches over libc's real functions), saved as a trace file, then:
  * open: ``branchtrace.open(FILE)`` and every thread's branch array, in branches/s;
  * symbolize: ``trace.symbolizer.resolve`` over all 50M target addresses, in addresses/s.
Each figure is the median of 3 runs. Run: python bench/decode_bench.py [--branches 50M]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import branchtrace  # noqa: E402
from branchtrace.sizes import parse_size  # noqa: E402
from branchtrace.symbols import clear_elf_cache  # noqa: E402
from branchtrace.tracefile import save  # noqa: E402
from history_bench import synthesize  # noqa: E402


def median_time(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--branches", default="50M")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = parse_size(args.branches).count
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
                if Path(p).exists())
    trace = synthesize(n, libc, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.btrace"
        save(trace, path)
        size = path.stat().st_size

        def load() -> None:
            t = branchtrace.open(path)
            for tid in t.threads:
                t.branches(tid)

        t_open = median_time(load)
        loaded = branchtrace.open(path)
        targets = loaded.branches(loaded.pid)["to_ip"]

        def resolve() -> None:
            clear_elf_cache()
            branchtrace.open(path).symbolizer.resolve(targets)

        t_sym = median_time(resolve)
    print("| branches | file size | open + decode | branches/s | symbolize (cold caches) | addresses/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {n:,} | {size / 2**20:.1f} MiB | {t_open:.2f} s | {n / t_open / 1e6:.1f}M "
          f"| {t_sym:.2f} s | {n / t_sym / 1e6:.1f}M |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
