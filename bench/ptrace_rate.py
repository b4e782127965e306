"""Benchmark: how fast the ptrace backend single-steps, and its slowdown against a native run.

Run on purpose (it is not a test; it takes about two minutes):

    python bench/ptrace_rate.py

It compiles tests/fixtures/loop.c, and for each N measures
  - the native wall time of ``./loop N`` (median of 5),
  - the exact user-space instruction count of one run (callgrind "Ir", which, like
    ``--start entry``, counts from the first instruction of ld.so),
  - the wall time of ``python -m branchtrace run --backend ptrace --report never``
    with ``--start entry`` and with the default start (main), median of 5 each,
  - the branches recorded by one ``branchtrace.record(...)`` call (start=entry),
plus the bare Python start-up (``python -c "import branchtrace"``) as a reference.
Nothing is subtracted: the traced times include Python start-up.
The results go, as a markdown table, to docs/benchmarks.md (its own section is replaced; the others are kept).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "loop.c"
OUTPUT = ROOT / "docs" / "benchmarks.md"
SIZES = (1000, 10000)
REPEATS = 5
PY = sys.executable


def wall(argv: list[str], cwd: Path) -> float:
    """Wall-clock seconds of one run of argv (output discarded; must exit 0)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace')}")
    return elapsed


def median_wall(argv: list[str], cwd: Path, n: int = REPEATS) -> float:
    wall(argv, cwd)  # warm-up run (page cache, dynamic loader), not counted
    return statistics.median(wall(argv, cwd) for _ in range(n))


def callgrind_ir(exe: Path, n: int, tmp: Path) -> int:
    """Total instructions executed in user space by one run (callgrind's Ir)."""
    out = tmp / f"callgrind.{n}.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    str(exe), str(n)], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in out.read_text().splitlines():
        m = re.match(r"(?:summary|totals):\s*(\d+)", line)
        if m:
            return int(m.group(1))
    raise SystemExit(f"no summary/totals line in {out}")


def branches_recorded(exe: Path, n: int) -> tuple[int, int, int]:
    """(branches in the trace, records written, records lost) of one API recording."""
    import branchtrace

    tr = branchtrace.record(branchtrace.Target(argv=(str(exe), str(n))),
                            branchtrace.RecordConfig(backend="ptrace", start="entry"))
    return (len(tr.branches(tr.pid)), tr.written.get(tr.pid, 0), tr.lost.get(tr.pid, 0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def replace_section(document: str, section: str) -> str:
    """Put ``section`` (starting with its "## " heading) in place of the section of the same
    heading in ``document``, or append it; the other sections are kept."""
    heading = section.splitlines()[0]
    parts = document.split("\n## ")
    head = parts[0] if parts[0].strip() else "# Benchmarks\n"
    kept = [("## " + p) for p in parts[1:] if ("## " + p).splitlines()[0] != heading]
    return "\n".join([head.rstrip("\n") + "\n", section.rstrip("\n") + "\n",
                      *[k.rstrip("\n") + "\n" for k in kept]])


def main() -> None:
    for tool in ("gcc", "valgrind"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed for this benchmark")
    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bt-bench-") as d:
        tmp = Path(d)
        exe = tmp / "loop"
        subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(FIXTURE)], check=True)

        python_startup = median_wall([PY, "-c", "import branchtrace"], tmp)
        print(f"python -c 'import branchtrace': {ms(python_startup)}", flush=True)

        # native runs first, all together: they last about a millisecond, so any load
        # left over from a traced run would show in them
        natives = {n: median_wall([str(exe), str(n)], tmp) for n in SIZES}
        trace_cmd = [PY, "-m", "branchtrace", "run", "--backend", "ptrace", "--report", "never"]
        for n in SIZES:
            native = natives[n]
            ir = callgrind_ir(exe, n, tmp)
            entry = median_wall(trace_cmd + ["--start", "entry", "--", "./loop", str(n)], tmp)
            from_main = median_wall(trace_cmd + ["--", "./loop", str(n)], tmp)
            branches, written, lost = branches_recorded(exe, n)
            row = dict(n=n, native=native, ir=ir, entry=entry, main=from_main,
                       rate=ir / entry, slow_entry=entry / native, slow_main=from_main / native,
                       branches=branches, written=written, lost=lost)
            rows.append(row)
            print(row, flush=True)
    total = time.perf_counter() - began

    lines = [
        "## ptrace backend: single-stepping rate and slowdown",
        "",
        "How fast the `ptrace` backend single-steps `tests/fixtures/loop.c` (built with "
        "`gcc -g -O0`; it runs `work(i)` N times) and how much slower a traced run is than "
        "a native one. Rerun with `python bench/ptrace_rate.py` (needs gcc and valgrind; "
        f"about {total / 60:.0f} min); it rewrites this section.",
        "",
        f"Machine: `nproc` = {len(os.sched_getaffinity(0))}, "
        f"{cpu_model()}, Linux {platform.release()}, Python {platform.python_version()}.",
        "",
        "- *native*: wall time of `./loop N`, median of 5 (after one warm-up run); at these "
        "N it is mostly process start-up, so it is noisy and so are the slowdowns.",
        "- *instructions*: user-space instructions of one run, callgrind's total `Ir` "
        "(from the first instruction of ld.so, which is what `--start entry` steps).",
        "- *traced*: wall time of `python -m branchtrace run --backend ptrace --report never "
        "[--start entry] -- ./loop N`, median of 5; it includes Python start-up "
        "(the reference row: median of 5 of `python -c \"import branchtrace\"`); "
        "nothing is subtracted.",
        "- *steps/s* = instructions / traced (entry); *slowdown* = traced / native.",
        "- *branches*: `len(tr.branches(tr.pid))` of one `branchtrace.record(..., "
        "RecordConfig(backend=\"ptrace\", start=\"entry\"))` (default ring buffer, 64K "
        "records; *lost* = records the ring overwrote).",
        "",
        "| N | native | instructions (Ir) | traced, entry | traced, main | steps/s (entry) "
        "| slowdown, entry | slowdown, main | branches (lost) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {ms(r['native'])} | {r['ir']:,} | {ms(r['entry'])} "
            f"| {ms(r['main'])} | {r['rate']:,.0f} | {r['slow_entry']:,.0f}x "
            f"| {r['slow_main']:,.0f}x | {r['branches']:,} ({r['lost']:,}) |")
    lines.append(f"| reference: `python -c \"import branchtrace\"` | | | {ms(python_startup)} "
                 f"| {ms(python_startup)} | | | | |")
    lines.append("")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(replace_section(OUTPUT.read_text() if OUTPUT.exists() else "",
                                      "\n".join(lines)))
    print(f"wrote {OUTPUT} ({total:.0f} s)")


if __name__ == "__main__":
    main()
