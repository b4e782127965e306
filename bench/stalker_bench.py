"""Benchmark of the stalker backend (issue 3): slowdown against native and valgrind.

Run on purpose (it is not a test):

    python bench/stalker_bench.py                       # median of 5, valgrind too
    python bench/stalker_bench.py --runs 3 --valgrind-runs 1 --stock-runs 1
    python bench/stalker_bench.py --quick               # smaller inputs, for a smoke run
    python bench/stalker_bench.py --set issue15 --runs 3  # issue 15's programs (below)

Issue 15's set (``--set issue15``; native, follow, ring and stream only unless
--stock-runs/--valgrind-runs say otherwise): ``bzip2 -9 -c`` of 12 MB, gcc's compiler
proper (``cc1 -O2``, found with ``gcc -print-prog-name=cc1``) on a generated 300-function
C file, the real ``/usr/bin/python3`` binary (not a shim or venv link) on a pure-Python
script, ``sqlite3`` with a 500K-row table, an index, a group by and a join, and ``jq``
over 7.5 MB of JSON; a program that is not installed is left out. It prints ring, stream
``-o``, follow and native side by side as ratios, and stream / ring.

Workloads (inputs are generated, deterministic), sized so that valgrind's 5 runs of
every workload take about 30 minutes in all (lackey runs ~250-1000x native): about
0.3-0.5 s native for gzip and xz (not less: the ring <= 4x target includes branchtrace's
~0.7 s fixed cost), about 0.1-0.15 s for the others:
  gzip    ``gzip -9 -c`` of a generated text corpus (7 MB; --quick: 1.5 MB)
  xz      ``xz -6 -c`` of a smaller corpus (0.55 MB; --quick: 0.1 MB)
  python3 ``python3 -S -c "s=0; for i in range(N): s+=i*i%7; print(s)"`` with the real
          interpreter binary (``os.path.realpath(sys.executable)``, not a venv symlink)
  sqlite3 ``sqlite3 :memory:`` with a recursive CTE of N rows
  loop    tests/fixtures/loop.c built with ``gcc -O0``, N iterations

Columns, measured side by side in one run (for each workload, run i of every column
before run i+1 of any), each the median of the wall times of N runs (after one
unmeasured warm-up run of the native command):
  native   the command itself
  ring     ``branchtrace run --backend stalker --mode ring --report never -- CMD``
  stream   ``branchtrace run --backend stalker --mode stream --report never -o F -- CMD``
           (F: a fresh trace file per run, deleted afterwards)
  follow   ``ring``'s command with BRANCHTRACE_STALKER_VARIANT=follow: the same launch and
           follow, a transform that only keeps instructions (Stalker alone, no recording)
  stock    ``ring``'s command with BRANCHTRACE_STALKER_VARIANT=stock: Frida's own
           Stalker.follow with block events, parsed (Stalker.parse) and counted in onReceive
  valgrind ``valgrind --tool=lackey --trace-superblocks=yes --log-file=/dev/null CMD``
           (slow: ~250-1000x; --valgrind-runs sets how many runs it gets)
Every run's stdout is hashed (sha256) and compared with the native stdout; a mismatch
is marked in the table (and the exit status must be 0).
The fixed cost (``branchtrace run --backend stalker --report never -- /bin/true``) is
measured the same way. Wall times include everything: Python start-up, Frida attach,
agent and CModule compile, detach. branchtrace's bytecode is compiled first, as an
installed package has it (see compile_bytecode).

The markdown section is printed; with --append-doc it is also appended to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "loop.c"
DOC = ROOT / "docs" / "benchmarks.md"


def branchtrace_argv() -> list[str]:
    exe = shutil.which("branchtrace", path=str(Path(sys.executable).parent) + os.pathsep
                       + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "branchtrace"]


def make_corpus(path: Path, size: int, seed: int = 1) -> None:
    r = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(r.choice(letters) for _ in range(r.randint(2, 10))) for _ in range(5000)]
    parts, n = [], 0
    while n < size:
        line = " ".join(r.choice(words) for _ in range(r.randint(5, 15))) + "\n"
        parts.append(line)
        n += len(line)
    path.write_text("".join(parts)[:size])


def make_c_source(path: Path, functions: int = 300, seed: int = 3) -> None:
    """A C file of ``functions`` functions (a loop around a switch, calls to earlier
    functions), no #include: gcc's compiler proper ``cc1 -O2`` takes ~2-3 s on it."""
    r = random.Random(seed)
    out = ["typedef unsigned long u64;", "struct pt { long x, y; int tag; };", ""]
    for i in range(functions):
        callee = f"f{r.randrange(i)}" if i else None
        k = r.randint(2, 9)
        out += [f"long f{i}(long a, long b, struct pt *p) {{", "  long s = 0;",
                f"  for (long i0 = 0; i0 < a + {k}; i0++) {{", "    switch ((i0 ^ b) & 7) {"]
        for c in range(r.randint(2, 3)):
            out.append(f"      case {c}: s += (i0 * {r.randint(3, 99)}) ^ (b >> {c}); "
                       f"if (s > {r.randint(1000, 9000)}) s -= p->x; break;")
        out += [f"      default: s = s * {r.randint(3, 17)} + p->y; p->tag++;", "    }"]
        if callee and r.random() < 0.2:
            out.append(f"    if ((s & 15) == {r.randint(0, 15)}) s += {callee}(a / 2, s, p);")
        out += ["  }", f"  p->x = s % {r.randint(7, 97)}; return s + a * b;", "}", ""]
    out.append("int main(void) { struct pt p = {1, 2, 0}; long s = 0;")
    out.append(f"  for (long i = 0; i < 10; i++) s += f{functions - 1}(i, s, &p); "
               "return (int)(s & 1); }")
    path.write_text("\n".join(out) + "\n")


#: A pure-Python workload for the real interpreter binary: a binary tree built and
#: walked, string formatting, a dict and the re module (N: the keys inserted).
PY_SCRIPT = """
import re
class Node:
    __slots__ = ("key", "left", "right")
    def __init__(self, key): self.key, self.left, self.right = key, None, None
def insert(root, key):
    if root is None: return Node(key)
    n = root
    while True:
        if key < n.key:
            if n.left is None: n.left = Node(key); return root
            n = n.left
        else:
            if n.right is None: n.right = Node(key); return root
            n = n.right
def walk(n, acc):
    while n is not None:
        walk(n.left, acc); acc.append(n.key); n = n.right
x, root = 12345, None
for i in range(N):
    x = (x * 1103515245 + 12345) & 0x7fffffff
    root = insert(root, x % 100003)
acc = []; walk(root, acc)
words = {}
for i, k in enumerate(acc):
    w = format(k, "x") + "-" + str(i % 97)
    words[w[-3:]] = words.get(w[-3:], 0) + len(re.findall(r"[a-f]", w))
print(len(acc), sum(acc) % 1000003, len(words), sorted(words.items())[:3])
"""


def make_json(path: Path, rows: int, seed: int = 5) -> None:
    r = random.Random(seed)
    import json
    data = [{"id": i, "name": "".join(r.choice("abcdefgh") for _ in range(8)),
             "n": r.randint(0, 1000),
             "tags": [r.choice("xyzw") for _ in range(r.randint(0, 4))],
             "sub": {"a": r.random(), "b": r.randint(0, 9)}} for i in range(rows)]
    path.write_text(json.dumps(data))


JQ_FILTER = ("[.[] | select(.n % 3 == 0) | {k: .name[0:2], b: .sub.b, t: (.tags | length)}]"
             " | group_by(.k) | map({k: .[0].k, n: length, b: (map(.b) | add),"
             " t: (map(.t) | add)}) | length")


def sqlite_join(rows: int) -> str:
    """A table of ``rows`` rows, an index, a group by and a join."""
    return ("CREATE TABLE t(a INTEGER, b INTEGER, c TEXT); WITH RECURSIVE c(x) AS "
            f"(SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows}) INSERT INTO t SELECT x, "
            "(x*7919)%1000, hex(x*31) FROM c; CREATE INDEX tb ON t(b); CREATE TABLE g AS "
            "SELECT b, count(*) n, sum(a) s FROM t GROUP BY b; SELECT count(*), sum(g.n), "
            "max(length(t.c)), sum(g.s % 7) FROM t JOIN g ON t.b = g.b WHERE t.a % 5 = 0;")


def run_once(argv: list[str], cwd: Path, out: Path,
             env: dict[str, str] | None = None) -> tuple[float, str, int, str]:
    """Wall seconds, sha256 of stdout, exit status, stderr tail of one run."""
    with open(out, "wb") as fo:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, stdout=fo, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, check=False)
        elapsed = time.perf_counter() - t0
    h = hashlib.sha256(out.read_bytes()).hexdigest()
    return elapsed, h, proc.returncode, proc.stderr.decode(errors="replace")[-300:]


def compile_bytecode() -> None:
    """Write branchtrace's bytecode (__pycache__), as `pip install` does. An editable
    install under PYTHONDONTWRITEBYTECODE=1 (this machine's environment) has none, so
    every run would compile our modules again: about 0.2 s of the fixed cost here."""
    import compileall

    import branchtrace
    compileall.compile_dir(str(Path(branchtrace.__file__).parent), quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per column (median), default 5")
    ap.add_argument("--stock-runs", type=int, default=None,
                    help="runs of the stock column (default: --runs; 0 leaves it out; "
                         "Frida's block events run ~100x native)")
    ap.add_argument("--valgrind-runs", type=int, default=None,
                    help="runs of the valgrind column (default: --runs; 0 leaves it out)")
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--set", default="issue3", choices=("issue3", "issue15", "all"),
                    help="issue3: gzip, xz, python3 -c, sqlite3 CTE, loop (the default); "
                         "issue15: bzip2, cc1, the real /usr/bin/python3 on a script, sqlite3 "
                         "join, jq (stock and valgrind left out unless asked); all: both")
    ap.add_argument("--append-doc", action="store_true",
                    help="append the section to docs/benchmarks.md")
    args = ap.parse_args()
    if args.set == "issue15":   # Frida's block events and valgrind: minutes a run on cc1
        args.stock_runs = 0 if args.stock_runs is None else args.stock_runs
        args.valgrind_runs = 0 if args.valgrind_runs is None else args.valgrind_runs
    compile_bytecode()
    vruns = args.runs if args.valgrind_runs is None else args.valgrind_runs
    sruns = args.runs if args.stock_runs is None else args.stock_runs
    bt = branchtrace_argv()
    q = args.quick

    tmp = Path(tempfile.mkdtemp(prefix="stalker-bench-"))
    try:
        big, small = tmp / "corpus-big.txt", tmp / "corpus-small.txt"
        make_corpus(big, 1_500_000 if q else 7_000_000)
        make_corpus(small, 100_000 if q else 550_000, seed=2)
        loop = tmp / "loop"
        subprocess.run(["gcc", "-O0", "-o", str(loop), str(FIXTURE)], check=True)
        py = os.path.realpath(sys.executable)
        py_n = 150_000 if q else 450_000
        sq_n = 100_000 if q else 350_000
        loop_n = 10_000_000 if q else 35_000_000
        workloads = [
            ("gzip", f"`gzip -9 -c` {big.stat().st_size / 1e6:.1f} MB text",
             ["gzip", "-9", "-c", str(big)]),
            ("xz", f"`xz -6 -c` {small.stat().st_size / 1e6:.1f} MB text",
             ["xz", "-6", "-c", str(small)]),
            ("python3", f"`python3 -S -c` loop, N={py_n:,}",
             [py, "-S", "-c", f"s=0\nfor i in range({py_n}): s+=i*i%7\nprint(s)"]),
            ("sqlite3", f"`sqlite3 :memory:` recursive CTE, N={sq_n:,}",
             ["sqlite3", ":memory:",
              ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE "
               f"x<{sq_n}) SELECT sum(x*x % 7) FROM c;")]),
            ("loop", f"`loop.c` -O0, N={loop_n:,}", [str(loop), str(loop_n)]),
        ]
        workloads = (workloads if args.set == "issue3" else []) + \
            (issue15_workloads(tmp, q) if args.set != "issue3" else [])
        if args.only:
            keep = set(args.only.split(","))
            workloads = [w for w in workloads if w[0] in keep]

        trace = tmp / "x.btrace"
        columns = {
            "native": lambda c: c,
            "ring": lambda c: bt + ["run", "--backend", "stalker", "--mode", "ring",
                                    "--report", "never", "--"] + c,
            "stream": lambda c: bt + ["run", "--backend", "stalker", "--mode", "stream",
                                      "--report", "never", "-o", str(trace), "--"] + c,
            # the same launch and follow; BRANCHTRACE_STALKER_VARIANT (envs below)
            "follow": lambda c: bt + ["run", "--backend", "stalker", "--mode", "ring",
                                      "--report", "never", "--"] + c,
            "stock": lambda c: bt + ["run", "--backend", "stalker", "--mode", "ring",
                                     "--report", "never", "--"] + c,
            "valgrind": lambda c: ["valgrind", "--tool=lackey", "--trace-superblocks=yes",
                                   "--log-file=/dev/null"] + c,
        }
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("BRANCHTRACE_STALKER_VARIANT", "BRANCHTRACE_STALKER_CHECK")}
        envs = {c: clean for c in columns}
        envs.update({c: {**clean, "BRANCHTRACE_STALKER_VARIANT": c} for c in ("follow", "stock")})
        columns = {c: columns[c] for c in ("native", "follow", "stock", "ring", "stream",
                                             "valgrind")}
        out = tmp / "stdout"

        def measure(argv_by_col: dict, nruns: dict, ref: str | None):
            times = {c: [] for c in argv_by_col}
            bad = {c: [] for c in argv_by_col}
            extra = {}
            for i in range(max(nruns.values())):
                for col, argv in argv_by_col.items():
                    if i >= nruns[col]:
                        continue
                    t, h, rc, err = run_once(argv, tmp, out, envs.get(col))
                    times[col].append(t)
                    if col == "stream" and trace.exists():
                        extra.setdefault("trace_mb", []).append(trace.stat().st_size / 1e6)
                        trace.unlink()
                    if rc != 0 or (ref is not None and h != ref):
                        bad[col].append(f"run {i}: rc={rc} sha={'ok' if h == ref else h[:12]}"
                                        f" {err.strip()[-120:]!r}")
                    print(f"  {col:8s} run {i}: {t:8.3f} s rc={rc} "
                          f"{'OK' if h == ref else 'STDOUT MISMATCH'}", file=sys.stderr,
                          flush=True)
            return times, bad, extra

        # fixed cost
        print("fixed cost: /bin/true", file=sys.stderr, flush=True)
        fixed_argv = bt + ["run", "--backend", "stalker", "--report", "never", "--", "/bin/true"]
        run_once(fixed_argv, tmp, out)  # warm-up
        ft, fb, _ = measure({"fixed": fixed_argv}, {"fixed": args.runs},
                            hashlib.sha256(b"").hexdigest())
        fixed = statistics.median(ft["fixed"])

        rows = []
        for name, desc, cmd in workloads:
            print(f"{name}: {' '.join(cmd)[:100]}", file=sys.stderr, flush=True)
            _, ref, rc, err = run_once(cmd, tmp, out)  # warm-up + reference output
            if rc != 0:
                raise SystemExit(f"{name}: native run exited {rc}: {err}")
            argv_by_col = {c: f(cmd) for c, f in columns.items()}
            nruns = {c: args.runs for c in columns}
            nruns["valgrind"], nruns["stock"] = vruns, sruns
            for col in ("valgrind", "stock"):
                if nruns[col] == 0:
                    del argv_by_col[col], nruns[col]
            times, bad, extra = measure(argv_by_col, nruns, ref)
            med = {c: statistics.median(v) for c, v in times.items() if v}
            rows.append((name, desc, med, {c: len(v) for c, v in times.items()}, bad, extra))
            print("  medians: " + ", ".join(f"{c}={v:.3f}" for c, v in med.items()),
                  file=sys.stderr, flush=True)

        section = (render(rows, fixed, ft["fixed"], fb["fixed"], args, vruns)
                   if args.set == "issue3" else
                   render15(rows, fixed, ft["fixed"], fb["fixed"], args))
        print(section)
        if args.append_doc:
            with open(DOC, "a") as f:
                f.write("\n" + section)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def issue15_workloads(tmp: Path, quick: bool) -> list[tuple[str, str, list[str]]]:
    """Issue 15's programs with big code footprints (a compiler, an interpreter, a
    database, jq) and bzip2; those whose program is not installed are left out (said on
    stderr)."""
    out: list[tuple[str, str, list[str]]] = []
    corpus = tmp / "corpus-bzip2.txt"
    make_corpus(corpus, 2_000_000 if quick else 12_000_000, seed=4)
    if shutil.which("bzip2"):
        out.append(("bzip2", f"`bzip2 -9 -c` {corpus.stat().st_size / 1e6:.0f} MB text",
                    ["bzip2", "-9", "-c", str(corpus)]))
    cc1 = subprocess.run(["gcc", "-print-prog-name=cc1"], capture_output=True,
                         text=True).stdout.strip()
    if cc1 and os.path.isabs(cc1) and os.access(cc1, os.X_OK):
        src = tmp / "gen300.c"
        make_c_source(src, 60 if quick else 300)
        out.append(("cc1", f"gcc's `cc1 -O2`, generated {60 if quick else 300}-function C file",
                    [cc1, "-quiet", "-O2", str(src), "-o", "/dev/null"]))
    else:
        print("cc1: not found (gcc -print-prog-name=cc1), left out", file=sys.stderr)
    py = os.path.realpath("/usr/bin/python3")
    if os.access(py, os.X_OK):
        script = tmp / "work.py"
        script.write_text(f"N = {30_000 if quick else 150_000}\n" + PY_SCRIPT)
        out.append(("python3-real", f"`{py} -I` pure-Python script (tree, dict, re)",
                    [py, "-I", str(script)]))
    else:
        print("/usr/bin/python3: not found, left out", file=sys.stderr)
    if shutil.which("sqlite3"):
        rows = 100_000 if quick else 500_000
        out.append(("sqlite3-join", f"`sqlite3 :memory:` {rows // 1000}K rows, index, group by, join",
                    ["sqlite3", ":memory:", sqlite_join(rows)]))
    else:
        print("sqlite3: not installed, left out", file=sys.stderr)
    if shutil.which("jq"):
        js = tmp / "data.json"
        make_json(js, 15_000 if quick else 70_000)
        out.append(("jq", f"`jq` group_by over {js.stat().st_size / 1e6:.1f} MB of JSON",
                    ["jq", JQ_FILTER, str(js)]))
    else:
        print("jq: not installed, left out", file=sys.stderr)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(rows, fixed, fixed_times, fixed_bad, args, vruns) -> str:
    cmd = "python bench/stalker_bench.py"
    if args.runs != 5:
        cmd += f" --runs {args.runs}"
    if args.valgrind_runs is not None:
        cmd += f" --valgrind-runs {args.valgrind_runs}"
    if args.stock_runs is not None:
        cmd += f" --stock-runs {args.stock_runs}"
    if args.quick:
        cmd += " --quick"
    try:
        import frida
        fv = frida.__version__
    except Exception:  # noqa: BLE001
        fv = "?"
    L = []
    L.append("## Stalker backend (issue 3)\n")
    L.append(f"Rerun with `{cmd} --append-doc` (needs gcc, gzip, xz, sqlite3, valgrind; "
             "appends a new section here).\n")
    L.append(f"Machine: `nproc` = {os.cpu_count()}, {cpu_model()}, Linux "
             f"{platform.release()}, Python {platform.python_version()}, Frida {fv}; "
             f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n")
    L.append(f"Each figure is the median wall time of {args.runs} runs (after one unmeasured "
             f"warm-up run of the native command), all columns interleaved run by run in one "
             f"invocation; **valgrind: {vruns} run(s) per workload** "
             f"{'(it runs ~250-1000x native, so fewer runs to meet the time budget)' if vruns < args.runs else ''}"
             f"{f'; stock: {args.stock_runs} run(s) per workload' if args.stock_runs is not None else ''}. "
             "Ratios are to native. *ring* = `branchtrace run --backend stalker --mode ring "
             "--report never -- CMD`; *stream* = `... --mode stream --report never -o "
             "FILE.btrace -- CMD` (lossless, to a compressed trace file); *valgrind* = "
             "`valgrind --tool=lackey --trace-superblocks=yes --log-file=/dev/null CMD`. "
             "Traced wall times include the whole fixed cost of a branchtrace run (Python "
             "start-up, Frida attach, agent/CModule compile, teardown); nothing is subtracted "
             "except in the two *-fixed* columns, which subtract the fixed cost below from the "
             "traced time before dividing. Every run's stdout was compared (sha256) with the "
             "native stdout.\n")
    L.append(f"Fixed cost: `branchtrace run --backend stalker --report never -- /bin/true`, "
             f"median of {len(fixed_times)}: **{fixed:.3f} s** "
             f"(runs: {', '.join(f'{t:.3f}' for t in fixed_times)})"
             f"{'; FAILURES: ' + '; '.join(fixed_bad) if fixed_bad else ''}.\n")
    L.append("| workload | native s | follow | stock | ring | stream | valgrind | "
             "valgrind / ring | ring - fixed | stream - fixed | stream trace MB | stdout |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    targets = []
    for name, desc, med, n, bad, extra in rows:
        nat = med["native"]
        ring, stream, vg = med.get("ring"), med.get("stream"), med.get("valgrind")
        r = lambda x, nat=nat: f"{x / nat:.2f}x" if x is not None else "-"
        rf = lambda x, nat=nat: f"{(x - fixed) / nat:.2f}x" if x is not None else "-"
        vr = f"{vg / ring:.1f}x" if vg and ring else "-"
        vs = f"{vg / stream:.1f}x" if vg and stream else "-"
        mb = (f"{statistics.median(extra['trace_mb']):.1f}" if extra.get("trace_mb") else "-")
        problems = [f"{c}: {'; '.join(b)}" for c, b in bad.items() if b]
        ok = "**MISMATCH/FAIL: " + " / ".join(problems) + "**" if problems else \
            "identical (all runs)"
        L.append(f"| {desc} | {nat:.3f} | {r(med.get('follow'))} | {r(med.get('stock'))} | "
                 f"{r(ring)} | {r(stream)} | "
                 f"{r(vg)} ({n.get('valgrind', 0)} run{'s' if n.get('valgrind', 0) != 1 else ''}) "
                 f"| {vr} | {rf(ring)} | {rf(stream)} | {mb} | {ok} |")
        t = []
        if name in ("gzip", "xz"):
            t.append(f"ring <= 4x: {'met' if ring / nat <= 4 else 'not met'} ({ring / nat:.2f}x;"
                     f" net of fixed cost {(ring - fixed) / nat:.2f}x, "
                     f"{'met' if (ring - fixed) / nat <= 4 else 'not met'})")
            t.append(f"stream <= 6x: {'met' if stream / nat <= 6 else 'not met'} "
                     f"({stream / nat:.2f}x; net of fixed cost {(stream - fixed) / nat:.2f}x, "
                     f"{'met' if (stream - fixed) / nat <= 6 else 'not met'})")
        if vg:
            t.append(f">= 20x faster than valgrind: ring {'met' if vg / ring >= 20 else 'not met'}"
                     f" ({vr}), stream {'met' if vg / stream >= 20 else 'not met'} ({vs})")
        else:
            t.append(">= 20x faster than valgrind: not measured")
        if problems:
            t.append("**stdout differs from native: see table**")
        targets.append(f"- {name}: " + "; ".join(t))
    L.append("")
    L.append("Targets of issue 3 (ring <= 4x and stream <= 6x native on gzip and xz; >= 20x "
             "faster than valgrind on every workload), against the wall times above "
             "(fixed cost included):\n")
    L.extend(targets)
    L.append("")
    L.append("*follow* = the same `branchtrace run --backend stalker --mode ring` with "
             "`BRANCHTRACE_STALKER_VARIANT=follow`: the same launch and follow of every thread, "
             "with a transform that only keeps instructions (Stalker's own cost, nothing "
             "recorded); *stock* = `BRANCHTRACE_STALKER_VARIANT=stock`: Frida's own "
             "`Stalker.follow` with `events: {block: true}` and an `onReceive` that parses "
             "(`Stalker.parse`) and counts the events, the classic way of using Stalker "
             "(docs/stalker.md). Both include the same fixed cost as *ring*.\n")
    return "\n".join(L) + "\n"


#: Issue 15's ring targets (ratio to native, fixed cost included); stream: within 1.25x
#: of ring on each.
RING_TARGETS = {"bzip2": 1.8, "cc1": 4.0, "python3-real": 4.0, "sqlite3-join": 4.0, "jq": 3.0}


def render15(rows, fixed, fixed_times, fixed_bad, args) -> str:
    """Issue 15's table: native, follow, ring, stream side by side as ratios, and stream
    against ring."""
    with_valgrind = any("valgrind" in n for _, _, _, n, _, _ in rows)
    cmd = f"python bench/stalker_bench.py --set {args.set} --runs {args.runs}"
    if with_valgrind:
        cmd += f" --valgrind-runs {args.valgrind_runs}"
    if args.quick:
        cmd += " --quick"
    if args.only:
        cmd += f" --only {args.only}"
    try:
        import frida
        fv = frida.__version__
    except Exception:  # noqa: BLE001
        fv = "?"
    L = [f"### `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
         f"Machine: `nproc` = {os.cpu_count()}, {cpu_model()}, Linux {platform.release()}, "
         f"Python {platform.python_version()}, Frida {fv}. Median wall time of "
         f"{args.runs} runs per column, the columns interleaved run by run; ratios to "
         "native, the whole `branchtrace run` (fixed cost included). *stream / ring*: the "
         "two medians' ratio (target <= 1.25).\n",
         f"Fixed cost (`/bin/true`), median of {len(fixed_times)}: **{fixed:.3f} s** "
         f"(runs: {', '.join(f'{t:.3f}' for t in fixed_times)})"
         f"{'; FAILURES: ' + '; '.join(fixed_bad) if fixed_bad else ''}; target <= 0.15 s.\n",
         "| workload | native s | follow | ring | stream -o | stream / ring | ring target "
         "| stream MB | stdout |" + (" valgrind lackey | lackey / ring | lackey / stream |"
                                    if with_valgrind else ""),
         "|---|---:|---:|---:|---:|---:|---|---:|---|" + ("---:|---:|---:|" if with_valgrind
                                                          else "")]
    for name, desc, med, n, bad, extra in rows:
        nat = med["native"]
        ring, stream, follow = med.get("ring"), med.get("stream"), med.get("follow")
        r = lambda x, nat=nat: f"{x / nat:.2f}x" if x is not None else "-"
        sr = f"{stream / ring:.2f}" if stream and ring else "-"
        goal = RING_TARGETS.get(name)
        tgt = (f"<= {goal}x: {'met' if ring / nat <= goal else 'not met'}"
               if goal and ring else "-")
        mb = (f"{statistics.median(extra['trace_mb']):.1f}" if extra.get("trace_mb") else "-")
        problems = [f"{c}: {'; '.join(b)}" for c, b in bad.items() if b]
        ok = ("**MISMATCH/FAIL: " + " / ".join(problems) + "**" if problems
              else "identical (all runs)")
        vg = med.get("valgrind")
        lackey = (f" {r(vg)} | {vg / ring:.0f}x | {vg / stream:.0f}x |"
                  if vg and ring and stream else " - | - | - |") if with_valgrind else ""
        L.append(f"| {desc} | {nat:.3f} | {r(follow)} | {r(ring)} | {r(stream)} | {sr} | "
                 f"{tgt} | {mb} | {ok} |{lackey}")
    if with_valgrind:
        L.append("\n*valgrind lackey*: `valgrind --tool=lackey --trace-superblocks=yes "
                 "--log-file=/dev/null`, the nearest thing valgrind has to a branch trace "
                 "(one line per superblock, thrown away); target: ring and stream each "
                 ">= 100x faster.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
