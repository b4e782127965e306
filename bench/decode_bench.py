"""Decode and symbolize throughput on a trace of at least 50M branches.

The trace is synthesized as in history_bench.py (calls, returns and conditional
branches over libc's real functions), saved as a trace file, then:
  * open: ``branchtrace.open(FILE)`` and every thread's branch array, in branches/s;
  * symbolize: ``trace.symbolizer.resolve`` over all 50M target addresses, in addresses/s.
Then the same on a real recording (``--real``, on by default where the stalker backend
runs): ``gzip -9`` of a few MB recorded in stream mode to a file, whose records are
32-bit block ids that decode pairs up through the block table.
Each figure is the median of 3 runs. Run: python bench/decode_bench.py [--branches 50M]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import branchtrace  # noqa: E402
from branchtrace.store.sizes import parse_size  # noqa: E402
from branchtrace.symbols import clear_elf_cache  # noqa: E402
from branchtrace.tracefile import save  # noqa: E402
from branchtrace.tracefile.reader import scan  # noqa: E402
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
    parser.add_argument("--no-real", dest="real", action="store_false",
                        help="skip the real (stalker) recording")
    parser.add_argument("--real-mb", type=float, default=0.5)
    args = parser.parse_args()
    n = parse_size(args.branches).count
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
                if Path(p).exists())
    trace = synthesize(n, libc, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.btrace"
        save(trace, path)
        size = path.stat().st_size

        t_open = median_time(lambda: load(path))
        loaded = branchtrace.open(path)
        targets = loaded.branches(loaded.pid)["to_ip"]

        def resolve() -> None:
            clear_elf_cache()
            branchtrace.open(path).symbolizer.resolve(targets)

        t_sym = median_time(resolve)
    print("| trace | records | branches | file size | open + decode | branches/s | records/s "
          "| symbolize (cold caches) | addresses/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| synthetic, from/to records | {n:,} | {n:,} | {size / 2**20:.1f} MiB | {t_open:.2f} s "
          f"| {n / t_open / 1e6:.1f}M | {n / t_open / 1e6:.1f}M "
          f"| {t_sym:.2f} s | {n / t_sym / 1e6:.1f}M |")
    if args.real:
        real_row(args.real_mb)
    return 0


def real_row(megabytes: float) -> None:
    """gzip -9 recorded by the stalker backend (block ids), opened and decoded."""
    from branchtrace.backends import probe_all
    if not any(name == "stalker" and probe.available for name, probe in probe_all()):
        print("| gzip -9 under stalker | not run: the stalker backend cannot run here |")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "input"
        # Compressible but not trivial: text-like bytes from a fixed seed.
        words = [bytes(f"word{i:05d} ", "ascii") for i in range(4000)]
        import random
        rng = random.Random(7)
        with data.open("wb") as f:
            while f.tell() < megabytes * 2**20:
                f.write(b"".join(rng.choice(words) for _ in range(1024)))
        path = Path(tmp) / "gzip.btrace"
        subprocess.run([sys.executable, "-m", "branchtrace", "run", "--backend", "stalker",
                        "--mode", "stream", "--report", "never", "-o", str(path), "--",
                        "gzip", "-9", "-c", str(data)], check=True, stdout=subprocess.DEVNULL)
        scanned = scan(path)
        records = sum(c.head.count for cs in scanned.chunks.values() for c in cs)
        branches = sum(len(a) for a in branchtrace.open(path).threads.values())

        t_open = median_time(lambda: load(path))
        print(f"| gzip -9 of {megabytes:g} MiB under stalker, block ids | {records:,} | {branches:,} "
              f"| {path.stat().st_size / 2**20:.1f} MiB | {t_open:.2f} s "
              f"| {branches / t_open / 1e6:.1f}M | {records / t_open / 1e6:.1f}M | | |")
        # The same branches saved as from/to records (as the ptrace backend writes them).
        fromto = Path(tmp) / "gzip-fromto.btrace"
        save(branchtrace.open(path), fromto)
        path.unlink()
        t_open = median_time(lambda: load(fromto))
        print(f"| the same branches, from/to records | {branches:,} | {branches:,} "
              f"| {fromto.stat().st_size / 2**20:.1f} MiB | {t_open:.2f} s "
              f"| {branches / t_open / 1e6:.1f}M | {branches / t_open / 1e6:.1f}M | | |")


def load(path: Path) -> None:
    t = branchtrace.open(path)
    for tid in t.threads:
        t.branches(tid)


if __name__ == "__main__":
    sys.exit(main())
