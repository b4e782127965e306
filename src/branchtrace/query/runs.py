"""Runs: the trace files a query reads, each with an id, and their small tables
(``runs``, ``processes``, ``threads``) as rows.

A run is one trace file. Its id is the file's name without ``.btrace`` (made of
``[A-Za-z0-9._-]`` so that it can name a Hive partition without escaping); when two
files of one command have the same name, the later ones get ``-2``, ``-3``, ...
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import Mapping, ModuleMap
from ..tracefile import TraceFile, scan
from ..tracefile.stream import thread_order


def thread_pids(tf: TraceFile) -> dict[int, int]:
    """The process of each thread of the file: as the PROCESS records place them (see
    ``tracefile.load.processes_of``); a file without them holds one process, the END
    record's pid (else the header's, else the first thread's)."""
    from ..tracefile.load import processes_of

    tids = thread_order(tf)
    pid = tf.end.pid if tf.end is not None else tf.header.pid or (tids[0] if tids else 0)
    out = {tid: pid for tid in tids}
    for p in processes_of(tf):
        out.update((tid, p.pid) for tid in p.threads)
    return out


def module_maps(tf: TraceFile) -> list[ModuleMap]:
    """The file's modules, as the symbolizer takes them."""
    return [ModuleMap(m.path, m.start, m.end, m.bias, m.build_id,
                      tuple(Mapping(x.start, x.end, x.perms, x.offset, x.path)
                            for x in m.mappings)) for m in tf.modules]


@dataclass
class Run:
    id: str
    path: str
    tf: TraceFile
    pids: dict[int, int] = field(default_factory=dict)

    @property
    def tids(self) -> list[int]:
        return thread_order(self.tf)

    @property
    def pid(self) -> int:
        """The first process's pid."""
        return next(iter(self.pids.values()), self.tf.header.pid)


def run_id(path: str) -> str:
    """The id of the run a trace file holds: its name without ``.btrace``, made safe."""
    name = Path(path).name
    if name.endswith(".btrace"):
        name = name[:-len(".btrace")]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "run"


def run_ids(paths: list[str]) -> list[str]:
    """The run id of each file of one command: :func:`run_id`, and ``-2``, ``-3``, ...
    after the later files of a name already taken."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for path in paths:
        base = run_id(path)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def open_runs(paths: list[str]) -> list[Run]:
    """Scan each file (a one-line TraceFormatError when one cannot be read)."""
    return [Run(rid, path, tf, thread_pids(tf))
            for rid, path in zip(run_ids(paths), paths) for tf in [scan(path)]]


def _exit(tf: TraceFile) -> tuple[str, int | None, int | None]:
    end = tf.end
    if end is None:
        return "unknown", None, None
    return end.status, end.code, end.signal


def run_rows(run: Run) -> list[dict[str, Any]]:
    tf, h = run.tf, run.tf.header
    status, code, signal = _exit(tf)
    last = max((c.head.last_ns for cs in tf.chunks.values() for c in cs), default=0)
    mode = {1: "ring", 2: "stream"}.get(h.mode, f"mode {h.mode}")
    return [{"run": run.id, "path": run.path, "command": shlex.join(h.argv),
             "backend": h.backend, "mode": mode, "start_ns": h.start_ns,
             "end_ns": tf.end.end_ns if tf.end is not None else last, "exit": status,
             "exit_code": code, "signal": signal, "truncated": int(tf.truncated)}]


def process_rows(run: Run) -> list[dict[str, Any]]:
    """One row per process: from the PROCESS records, else the one process of the file."""
    from ..tracefile.load import processes_of

    found = processes_of(run.tf)
    if found:
        return [{"run": run.id, "pid": p.pid, "ppid": p.ppid, "command": shlex.join(p.argv),
                 "exit": p.exit.status, "exit_code": p.exit.code, "signal": p.exit.signal}
                for p in found]
    status, code, signal = _exit(run.tf)
    pids = list(dict.fromkeys(run.pids.values())) or [run.pid]
    return [{"run": run.id, "pid": pid, "ppid": 0, "command": shlex.join(run.tf.header.argv),
             "exit": status, "exit_code": code, "signal": signal} for pid in pids]


def thread_rows(run: Run) -> list[dict[str, Any]]:
    info = {t.tid: t for t in run.tf.threads}
    rows = []
    for tid in run.tids:
        kept = sum(c.head.count for c in run.tf.chunks.get(tid, []))
        t = info.get(tid)
        rows.append({"run": run.id, "pid": run.pids.get(tid, run.pid), "tid": tid,
                     "records": kept, "written": t.written if t else kept,
                     "lost": t.lost if t else 0})
    return rows
