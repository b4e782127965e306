"""Every reader command on one long trace: wall time, CPU time, peak memory (issue 13).

Run on purpose (it is not a test):

    python bench/analysis_bench.py                       # record bzip2 -9 of 24 MB, ~1.2G branches
    python bench/analysis_bench.py --size-mb 8           # a smaller workload
    python bench/analysis_bench.py --trace run.btrace    # an existing trace file

The workload is recorded first (``branchtrace run --mode stream -o F -- bzip2 -9 -c IN``,
IN a generated, deterministic text of --size-mb megabytes; the default size is held out:
no test uses it). Then each reader runs as a user runs it, in its own process, one after
the other, its output to a file in a temporary directory (or a pipe for ``| head``):

  stats          ``branchtrace stats F``
  history, head  ``branchtrace history F --calls | head -n 20``: the time until the first
                 lines arrive and until the command has exited after head closed the pipe
  history last   ``branchtrace history F --calls --last 20`` (and with ``--insn-ranges
                 --lines``)
  insns last     ``branchtrace history F --insns --last 40``
  crash          ``branchtrace crash F --last 16``
  coverage       ``branchtrace coverage F --format json|lcov|drcov -o OUT``
  profile        ``branchtrace profile F --format collapsed|speedscope|perfetto -o OUT``
  sql            ``branchtrace sql F "SELECT count(*) FROM branches"`` (checked equal to
                 the branches stats counts)
  export         ``branchtrace export F -o DIR``

Peak memory is the process's maximum resident set (``wait4``'s ru_maxrss). A command that
runs past --timeout seconds, or whose resident set grows past --rss-limit MiB (a reader
that holds the whole trace, such as the profile formats before they streamed), is
killed and marked so. The Markdown table is printed; with
--append-doc it is also appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


@dataclass
class Result:
    name: str
    wall: float
    cpu: float
    rss: int                 # bytes
    status: str              # "ok", "exit N", "timeout"
    first: float | None = None   # history|head: seconds to the first lines
    note: str = ""


def branchtrace() -> list[str]:
    return [sys.executable, "-m", "branchtrace"]


def make_input(path: Path, size: int, seed: int = 7) -> None:
    """A deterministic text: words of a small vocabulary, so bzip2 has work to do."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]
    with open(path, "w") as f:
        n = 0
        while n < size:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            n += len(line)


def rss(pid: int) -> int:
    """The resident set of a running process, in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(name: str, argv: list[str], out: Path | None, timeout: float,
        head: int = 0, rss_limit: int = 0) -> Result:
    """Run argv; its stdout to ``out`` (or a pipe read for ``head`` lines, then closed)."""
    start = time.perf_counter()
    first = None
    stdout = open(out, "wb") if out is not None else subprocess.PIPE
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)
    if head:
        assert p.stdout is not None
        for _ in range(head):
            if not p.stdout.readline():
                break
            if first is None:
                first = time.perf_counter() - start
        p.stdout.close()
    deadline = start + timeout
    status = "ok"
    while True:
        pid, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        over = rss_limit and rss(p.pid) > rss_limit
        if over or time.perf_counter() > deadline:
            p.send_signal(signal.SIGKILL)
            pid, st, ru = os.wait4(p.pid, 0)
            status = f"killed over {rss_limit >> 20} MiB" if over else "timeout"
            break
        time.sleep(0.01)
    wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(st)
    if out is not None:
        stdout.close()  # type: ignore[union-attr]
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    code = p.returncode
    if status == "ok" and code != 0 and not (head and code in (0, -signal.SIGPIPE, 141)):
        status = f"exit {code}"
    note = ""
    if "Traceback" in err:
        note = "traceback on stderr"
    elif status != "ok":
        note = err.strip().splitlines()[-1][:80] if err.strip() else ""
    return Result(name, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, status,
                  first, note)


def record(trace: Path, size_mb: int, work: Path) -> float:
    src = work / "input.txt"
    make_input(src, size_mb << 20)
    start = time.perf_counter()
    subprocess.run(branchtrace() + ["run", "--mode", "stream", "--report", "never",
                                     "-o", str(trace), "--", "bzip2", "-9", "-c", str(src)],
                   stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
    return time.perf_counter() - start


def stats_branches(trace: Path) -> int:
    out = subprocess.run(branchtrace() + ["stats", str(trace), "--format", "json"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    import json
    data = json.loads(out)
    return int(data["records"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", type=Path, help="an existing trace file (no recording)")
    ap.add_argument("--size-mb", type=int, default=24, help="bzip2's input (default 24)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per command, seconds")
    ap.add_argument("--rss-limit", type=int, default=12288,
                    help="kill a command whose resident set passes this many MiB")
    ap.add_argument("--only", help="comma-separated names of the commands to run")
    ap.add_argument("--append-doc", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="analysis_bench."))
    try:
        trace = args.trace or work / "bzip2.btrace"
        recorded = None if args.trace else record(trace, args.size_mb, work)
        n = stats_branches(trace)
        cmds: list[tuple[str, list[str], str | None, int]] = [
            ("stats", ["stats", str(trace)], "stats.txt", 0),
            ("history, head -20", ["history", str(trace), "--calls"], None, 20),
            ("history --last 20", ["history", str(trace), "--calls", "--last", "20"],
             "hist.txt", 0),
            ("history --last 20 --insn-ranges --lines",
             ["history", str(trace), "--calls", "--last", "20", "--insn-ranges", "--lines"],
             "histil.txt", 0),
            ("history --insns --last 40",
             ["history", str(trace), "--insns", "--last", "40"], "insns.txt", 0),
            ("crash --last 16", ["crash", str(trace), "--last", "16"], "crash.txt", 0),
            ("coverage json", ["coverage", str(trace), "--format", "json", "-o",
                               str(work / "cov.json")], None, 0),
            ("coverage lcov", ["coverage", str(trace), "--format", "lcov", "-o",
                               str(work / "cov.info")], None, 0),
            ("coverage drcov", ["coverage", str(trace), "--format", "drcov", "-o",
                                str(work / "cov.drcov")], None, 0),
            ("profile collapsed", ["profile", str(trace), "--format", "collapsed", "-o",
                                   str(work / "p.folded")], None, 0),
            ("profile speedscope", ["profile", str(trace), "--format", "speedscope", "-o",
                                    str(work / "p.speedscope.json")], None, 0),
            ("profile perfetto", ["profile", str(trace), "--format", "perfetto", "-o",
                                  str(work / "p.perfetto.json")], None, 0),
            ("sql count(*)", ["sql", str(trace), "SELECT count(*) AS n FROM branches",
                              "--format", "csv"], "sql.csv", 0),
            ("export parquet", ["export", str(trace), "-o", str(work / "parquet")], None, 0),
        ]
        only = set(args.only.split(",")) if args.only else None
        results: list[Result] = []
        for name, argv, out, head in cmds:
            if only and not any(o in name for o in only):
                continue
            r = run(name, branchtrace() + argv, work / out if out else None,
                    args.timeout, head, args.rss_limit << 20)
            if name.startswith("sql") and r.status == "ok":
                got = (work / "sql.csv").read_text().split()
                if got[-1:] != [str(n)]:
                    r.note = f"count {got[-1:]} != stats' {n}"
            for f in work.glob("p.*"):
                r.note = r.note or f"output {f.stat().st_size / 1e6:.0f} MB"
                f.unlink()
            results.append(r)
            print(f"{name}: {r.wall:.2f} s, {r.rss / 2**20:.0f} MiB, {r.status} {r.note}",
                  file=sys.stderr)
            shutil.rmtree(work / "parquet", ignore_errors=True)
        text = render(trace, n, recorded, results, args)
        print(text)
        if args.append_doc:
            with open(ROOT / "docs" / "benchmarks.md", "a") as doc:
                doc.write("\n" + text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def render(trace: Path, n: int, recorded: float | None, results: list[Result],
           args: argparse.Namespace) -> str:
    size = trace.stat().st_size if trace.exists() else 0
    lines = [f"### Readers on one trace ({time.strftime('%Y-%m-%d')})", "",
             f"{cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}. "
             f"Trace: {'bzip2 -9 of ' + str(args.size_mb) + ' MB, recorded in ' + f'{recorded:.1f} s' if recorded else trace.name}"
             f", {n:,} branches, {size / 1e6:.0f} MB. Each command in its own process, "
             f"Python start-up included.", "",
             "| command | wall s | CPU s | branches/s | peak RSS MiB | under 1 GiB | status |",
             "|---|---:|---:|---:|---:|:---:|---|"]
    for r in results:
        rate = f"{n / r.wall / 1e6:.0f}M" if r.wall and r.first is None else "-"
        wall = f"{r.wall:.2f}" if r.first is None else f"{r.first:.2f} first, {r.wall:.2f} exit"
        status = r.status + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.name} | {wall} | {r.cpu:.2f} | {rate} | {r.rss / 2**20:.0f} | "
                     f"{'yes' if r.rss < GIB else '**no**'} | {status} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
