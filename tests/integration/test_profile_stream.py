"""`branchtrace profile --format perfetto|speedscope` read a block-id file chunk by chunk:
the same events as the reporters make from the whole trace in memory (perfetto in
another order: as frames close), JSON an importer nests right, one profile per thread,
and a peak memory that does not grow with the trace."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter

from branchtrace.reporters import perfetto, speedscope
from branchtrace.tracefile import open_trace
from conftest import cli, need_backend

_MAXRSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
           "stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def _record(exe, path, *args: str) -> None:
    done = cli("run", "--backend", "stalker", "--mode", "stream", "--report", "never",
               "-o", str(path), "--", str(exe), *args, timeout=600)
    assert done.returncode == 0, done.stderr


def _complete(doc) -> Counter:
    """The complete events, depths from the shallowest of their thread."""
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    low: dict[int, int] = {}
    for e in xs:
        low[e["tid"]] = min(low.get(e["tid"], 0), e["args"]["depth"])
    return Counter((e["pid"], e["tid"], e["name"], e["ts"], e["dur"],
                    e["args"]["depth"] - low[e["tid"]]) for e in xs)


def _nests(doc) -> None:
    """Sorted by ts (stable), as importers do: each event inside the one open under it,
    its caller."""
    per: dict[int, list[dict]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            per.setdefault(e["tid"], []).append(e)
    for events in per.values():
        stack: list[dict] = []
        for e in sorted(events, key=lambda e: e["ts"]):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                top = stack[-1]
                assert e["ts"] + e["dur"] <= top["ts"] + top["dur"], (top, e)
                if e["dur"] > 0:
                    assert top["args"]["depth"] == e["args"]["depth"] - 1, (top, e)
            stack.append(e)


def _in_memory(module, path) -> dict:
    out = io.StringIO()
    module.render(open_trace(path), out)
    return json.loads(out.getvalue())


def _profile(path, fmt: str, out) -> dict:
    done = cli("profile", str(path), "--format", fmt, "-o", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_streamed_profiles_hold_the_events_of_the_whole_trace(build, tmp_path):
    need_backend("stalker")
    for name, args in (("loop", ("3000",)), ("rel_many_threads", ())):
        exe = build(name)
        path = tmp_path / f"{name}.btrace"
        _record(exe, path, *args)
        doc = _profile(path, "perfetto", tmp_path / "p.json")
        expected = _in_memory(perfetto, path)
        assert _complete(doc) == _complete(expected)
        assert sum(_complete(doc).values()) > 3000
        assert [e for e in doc["traceEvents"] if e["ph"] != "X"] == \
            [e for e in expected["traceEvents"] if e["ph"] != "X"]
        _nests(doc)
        scope = _profile(path, "speedscope", tmp_path / "s.json")
        assert scope == _in_memory(speedscope, path)
        threads = {e["tid"] for e in doc["traceEvents"] if e["ph"] == "X"}
        assert len(scope["profiles"]) == len(threads) >= 1
        if name == "loop":
            names = [f["name"] for f in scope["shared"]["frames"]]
            opens = Counter(names[e["frame"]] for e in scope["profiles"][0]["events"]
                            if e["type"] == "O")
            assert opens["work"] == 3000


def _peak_kb(path, *options: str) -> int:
    probe = subprocess.run([sys.executable, "-c", _MAXRSS, sys.executable, "-m", "branchtrace",
                            "profile", str(path), *options],
                           capture_output=True, text=True, timeout=900)
    peak, rc = map(int, probe.stdout.split())
    assert rc == 0, probe.stderr
    return peak


def test_profile_memory_does_not_grow_with_the_trace(build, tmp_path):
    """100k and 1M calls of work() (~4.5M and ~45M branches): the peak RSS of perfetto
    and speedscope differs by far less than the calls and branches (in memory, the
    1M-call trace alone would take 0.8 GB)."""
    need_backend("stalker")
    exe = build("loop")
    small, big = tmp_path / "small.btrace", tmp_path / "big.btrace"
    _record(exe, small, "100000")
    _record(exe, big, "1000000")
    for fmt in ("perfetto", "speedscope"):
        out = tmp_path / f"p.{fmt}.json"
        peak_small = _peak_kb(small, "--format", fmt, "-o", str(out))
        peak_big = _peak_kb(big, "--format", fmt, "-o", str(out))
        assert out.stat().st_size > 50_000_000              # the 1M calls were written
        assert peak_big < peak_small + 48 * 1024, (fmt, peak_small, peak_big)


def test_a_from_to_file_streams_the_same_events(build, tmp_path):
    """ptrace's from/to records, decoded chunk by chunk (tracefile.stream.ThreadStream):
    the same events as in memory; main returns below the first frame into libc."""
    need_backend("ptrace")
    exe = build("loop")
    path = tmp_path / "loop.btrace"
    done = cli("run", "--backend", "ptrace", "--mode", "stream", "--report", "never",
               "-o", str(path), "--", str(exe), "300", timeout=600)
    assert done.returncode == 0, done.stderr
    doc = _profile(path, "perfetto", tmp_path / "p.json")
    assert _complete(doc) == _complete(_in_memory(perfetto, path))
    assert sum(e["name"] == "work" for e in doc["traceEvents"]) == 300
    assert min(e["args"]["depth"] for e in doc["traceEvents"] if e["ph"] == "X") < 0
    _nests(doc)
    assert _profile(path, "speedscope", tmp_path / "s.json") == _in_memory(speedscope, path)
