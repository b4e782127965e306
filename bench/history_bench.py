"""``history --calls`` on a 10M-branch trace: how long it takes, phase by phase.

No backend records 10M branches quickly (the ptrace backend steps ~40k instructions a
second), so the trace is synthesized with the structure of a real one: a random walk of
calls and returns over the real functions of libc (callees drawn Zipf-like, so a few
are hot; depth between 0 and 60), made from each function's real call instructions
(found by a linear sweep with capstone; a function without one only returns) and
returning right after them, with taken conditional branches inside the current
function between them (2.3 on average per call or return). Addresses are libc's own,
mapped at a fixed base with libc's build id, so symbolization and the reading of call
lengths do the work they do on a real trace.

Run: python bench/history_bench.py [--branches 10M] [--seed 1]
It prints a Markdown table: synthesize, save as a trace file, then the time of each
phase of the call history, and of the whole command (``branchtrace history FILE
--calls > /dev/null``, Python start-up and file decoding included).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

import branchtrace
from branchtrace.analysis import FunctionIndex, call_trace
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, ModuleMap
from branchtrace.reporters import history
from branchtrace.store.sizes import parse_size
from branchtrace.symbols import load_elf
from branchtrace.trace import Trace
from branchtrace.tracefile import save

LIBC_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6",
                   "/lib64/libc.so.6")
BASE = 0x7F00_0000_0000


def libc_functions(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of libc's sized function symbols of 32 bytes or more."""
    seen: dict[int, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for name in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(name)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] >= 32 \
                        and sym["st_shndx"] != "SHN_UNDEF":
                    seen[int(sym["st_value"])] = int(sym["st_size"])
    starts = np.array(sorted(seen), dtype=np.int64)
    return starts, np.array([seen[s] for s in starts.tolist()], dtype=np.int64)


def call_sites(path: str, starts: np.ndarray, sizes: np.ndarray) -> list[list[tuple[int, int]]]:
    """The (address, length) of every call instruction of each function, by linear sweep."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    image = load_elf(path)
    assert image is not None
    out: list[list[tuple[int, int]]] = []
    for start, size in zip(starts.tolist(), sizes.tolist()):
        code = image.read_vaddr(start, min(size, 1 << 16))
        out.append([(a, n) for a, n, m, _ in md.disasm_lite(code, start) if m.endswith("call")])
    return out


def synthesize(n: int, path: str, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    starts, sizes = libc_functions(path)
    sites = call_sites(path, starts, sizes)
    nf = len(starts)
    conds_per_event = 2.3
    events = int(n / (1 + conds_per_event) * 1.02) + 100
    callee = np.minimum(rng.zipf(1.3, events) - 1, nf - 1)
    callee = rng.permutation(nf)[callee]                       # hot functions anywhere
    coin = rng.random(events)
    where = rng.random(events)
    # the walk over calls and returns: a Python loop over events only. Calls are made
    # from the function's real call instructions and return right after them.
    kind = np.empty(events, dtype=np.uint8)
    src = np.empty(events, dtype=np.int64)
    dst = np.empty(events, dtype=np.int64)
    cur = np.empty(events, dtype=np.int64)                     # function index after it
    root = max(range(nf), key=lambda i: len(sites[i]))
    stack_f: list[int] = [root]
    stack_ret: list[int] = [0]
    s_l, z_l, c_l, w_l = starts.tolist(), sizes.tolist(), callee.tolist(), where.tolist()
    coin_l = coin.tolist()
    for j in range(events):
        f = stack_f[-1]
        depth = len(stack_f) - 1
        here = sites[f]
        if here and (depth == 0 or (depth < 60 and coin_l[j] < 0.5)):
            site, length = here[int(w_l[j] * len(here))]
            g = c_l[j]
            kind[j], src[j], dst[j] = BranchKind.CALL, site, s_l[g]
            stack_f.append(g)
            stack_ret.append(site + length)
            cur[j] = g
        else:
            stack_f.pop()
            kind[j], src[j], dst[j] = BranchKind.RETURN, s_l[f] + z_l[f] - 1, stack_ret.pop()
            cur[j] = stack_f[-1]
    nconds = rng.poisson(conds_per_event, events)
    total = events + int(nconds.sum())
    rows = np.zeros(total, dtype=BRANCH_DTYPE)
    pos = np.arange(events) + np.concatenate(([0], np.cumsum(nconds)[:-1]))
    rows["from_ip"][pos] = src + BASE
    rows["to_ip"][pos] = dst + BASE
    rows["kind"][pos] = kind
    is_cond = np.ones(total, dtype=bool)
    is_cond[pos] = False
    owner = np.repeat(cur, nconds)                             # function of each cond
    fs, fz = starts[owner], sizes[owner]
    rows["from_ip"][is_cond] = fs + (rng.random(len(owner)) * fz).astype(np.int64) + BASE
    rows["to_ip"][is_cond] = fs + (rng.random(len(owner)) * fz).astype(np.int64) + BASE
    rows["kind"][is_cond] = BranchKind.COND
    rows = rows[:n]
    image = load_elf(path)
    size = os.path.getsize(path)
    module = ModuleMap(path, BASE, BASE + ((size + 0xFFFF) & ~0xFFFF), BASE,
                       image.build_id if image else "")
    return Trace(backend="synthetic", mode="stream", argv=("synthetic",), pid=1,
                 exit=ExitInfo("exited", 0), modules=[module], threads={1: rows},
                 start_time=1_700_000_000.0, end_time=1_700_000_010.0)


def timed(label: str, results: list[tuple[str, float, str]], fn, extra=lambda r: ""):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    r = fn()
    results.append((label, time.perf_counter() - t0, extra(r)))
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--branches", default="10M")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    n = parse_size(args.branches).count
    libc = next((c for c in LIBC_CANDIDATES if os.path.exists(c)), None)
    if libc is None:
        print("no libc.so.6 found", file=sys.stderr)
        return 1
    results: list[tuple[str, float, str]] = []
    trace = timed("synthesize the trace (not part of the command)", results,
                  lambda: synthesize(n, libc, args.seed),
                  lambda t: f"{len(t.branches(1)):,} branches")
    b = trace.branches(1)
    calls = int(np.isin(b["kind"], (BranchKind.CALL, BranchKind.RETURN)).sum())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.btrace")
        timed("save it as a trace file (not part of the command)", results,
              lambda: save(trace, path), lambda _: f"{os.path.getsize(path) / 2**20:.1f} MiB")
        loaded = timed("load: branchtrace.open", results, lambda: branchtrace.open(path))
        functions = FunctionIndex(loaded.symbolizer)
        timed("function keys of every from and to address (symbolize)", results,
              lambda: (functions.keys(loaded.branches(1)["from_ip"]),
                       functions.keys(loaded.branches(1)["to_ip"])))
        ct = timed("call stack + segments (call_trace, keys included)", results,
                   lambda: call_trace(loaded, 1),
                   lambda c: f"{len(c):,} segments, {len(c.frame_function):,} frames; "
                             f"{calls:,} calls+returns")
        with open(os.devnull, "w") as devnull:
            timed("history.render_calls to /dev/null (everything above again + text)", results,
                  lambda: history.render_calls(loaded, devnull),
                  lambda _: f"{len(ct):,} lines")
        env = dict(os.environ)
        with open(os.devnull, "w") as devnull:
            timed("whole command: branchtrace history FILE --calls > /dev/null", results,
                  lambda: subprocess.run([sys.executable, "-m", "branchtrace", "history", path,
                                          "--calls"], stdout=devnull, check=True, env=env))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
               platform.processor())
    print(f"history --calls on {n:,} synthetic branches ({os.cpu_count()} CPUs, {cpu}, "
          f"Python {platform.python_version()}, numpy {np.__version__})\n")
    print("| phase | seconds | |\n|---|---:|---|")
    for label, seconds, extra in results:
        print(f"| {label} | {seconds:.2f} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
