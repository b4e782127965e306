"""The task methods of :class:`~branchtrace.TraceReader`, over the file's streaming readers.

Each answer is made the way the command that gives it makes it, in one pass over the
trace file and in memory that grows with what is distinct (edges, blocks, calling
contexts), never with the branches: calls and hot edges from the thread's edge table
(``tracefile.counts.count_thread``, as ``branchtrace stats``), the call tree from
``analysis.contexts`` (as ``branchtrace profile --format collapsed``), coverage from
counted runs (``tracefile.counts.count_runs``, as ``branchtrace coverage``) and the
history from ``reporters.history_stream`` (as ``branchtrace history``, which calls
:func:`write_history`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np

from .api_types import CallNode, CoverageFormat, HistoryKind, HotEdge, Place, ProfileFormat
from .errors import NotInTraceError, UnknownFunctionError, UsageError
from .model import BranchKind, Gap

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .analysis.functions import FunctionInfo
    from .analysis.coverage import Coverage
    from .reader import TraceReader
    from .reporters.lines import SourceFile
    from .symbols import ResolvedArrays, Symbolizer
    from .trace import Trace
    from .tracefile import TraceFile

_CALLS = (int(BranchKind.CALL), int(BranchKind.INDIRECT_CALL))


def _matches(name: str, function: str) -> bool:
    """Whether the symbol ``name`` is ``function`` (C++: with or without parameters), or
    its PLT stub (``function@plt``: a call to another module lands there, then jumps)."""
    if name.endswith("@plt"):
        name = name[:-4]
    return name == function or (name.endswith(")") and name.split("(", 1)[0] == function)


def count_calls(tables: list[tuple[np.ndarray, Trace]], function: str) -> list[int]:
    """Calls into ``function`` in each edge table (of a thread of process ``view``).
    An :class:`UnknownFunctionError` when it is called in none of them and no module of
    their processes defines it."""
    from .analysis import FunctionIndex

    out: list[int] = []
    found = False
    called: set[str] = set()
    for edges, view in tables:
        functions = FunctionIndex(view.symbolizer)
        call = np.isin(edges["kind"], _CALLS)
        keys = functions.keys(edges["to_ip"][call]).key
        counts = edges["count"][call].astype(np.int64)
        total = 0
        for key in np.unique(keys).tolist():
            name = functions.name(key)
            called.add(name)
            if _matches(name, function):
                found = True
                total += int(counts[keys == key].sum())
        out.append(total)
    views = {id(view): view for _, view in tables}.values()
    if not found and not any(defined(view.symbolizer, function) for view in views):
        near = difflib.get_close_matches(function, sorted(called), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        pids = ", ".join(str(view.pid) for view in views)
        raise UnknownFunctionError(f"no function {function!r} in the modules of process "
                                   f"{pids}{hint}")
    return out


def defined(symbolizer: Symbolizer, function: str) -> bool:
    """Whether a module of ``symbolizer`` defines ``function`` (a symbol name, C++ also
    demangled, with or without its parameters)."""
    if symbolizer.symbol_address(None, function) is not None:
        return True
    from .symbols.demangle import demangle
    from .symbols.images import module_image

    for module in symbolizer.modules:
        image = module_image(module).image
        if image is not None and any(n.startswith("_Z") and _matches(demangle(n), function)
                                     for n in image.names):
            return True
    return False


def _place(res: ResolvedArrays, i: int) -> Place:
    loc = res.location(i)
    return Place(loc.address, loc.function, loc.module_name, loc.file, loc.line)


def hottest(tables: list[tuple[np.ndarray, Trace]], n: int) -> list[HotEdge]:
    """The ``n`` most taken edges of the threads' edge tables, each thread's addresses
    symbolized with its process's modules (``view``)."""
    from .analysis.hot import hot_edges_of
    from .decode.pairs import merge_edges

    by_process: dict[int, tuple[list[np.ndarray], Trace]] = {}
    for edges, view in tables:
        by_process.setdefault(id(view), ([], view))[0].append(edges)
    out: list[HotEdge] = []
    for parts, view in by_process.values():
        top = hot_edges_of(merge_edges(parts) if len(parts) > 1 else parts[0], n)
        if not top:
            continue
        res = view.symbolizer.resolve(np.array([a for e in top for a in (e.from_ip, e.to_ip)],
                                               np.uint64))
        out += [HotEdge(_place(res, 2 * k), _place(res, 2 * k + 1), e.kind.name.lower(),
                        e.count) for k, e in enumerate(top)]
    out.sort(key=lambda e: -e.count)
    return out[:n]


def call_tree(reader: TraceReader, tid: int) -> CallNode:
    """:meth:`TraceReader.call_tree`."""
    from .analysis import CodeReader, FunctionIndex, call_trace
    from .analysis.contexts import BlockFunctions, context_tree
    from .reporters.collapsed import stack_tree
    from .tracefile.stream import id_source

    view = reader.view_of(tid)
    functions = FunctionIndex(view.symbolizer)
    code = CodeReader(view.symbolizer)
    tf = reader._file()
    source = id_source(tf)
    if source is not None and tf.blocks is not None:
        pieces, gaps = source(tid)
        tree = context_tree(BlockFunctions(tf.blocks, functions, code), pieces, gaps)
        parent, func, weight = tree.parent.tolist(), tree.function.tolist(), tree.weight.tolist()
    else:
        whole = reader.for_pid(reader.process_of(tid).pid)
        parent, func, weight = stack_tree(call_trace(whole, tid, functions=functions,
                                                     reader=code))
    functions.locate()
    top = tree_nodes(parent, func, weight, functions.info)
    return CallNode(f"thread {tid}", None, None, None, 0, sum(weight), top)


def tree_nodes(parent: list[int], func: list[int], weight: list[int],
               info: Callable[[int], FunctionInfo]) -> tuple[CallNode, ...]:
    """The :class:`CallNode` trees of a calling-context tree given as parallel lists
    (parent node or -1, function key, own branches); a node may come before its parent."""
    kids: list[list[int]] = [[] for _ in parent]
    roots: list[int] = []
    for i, up in enumerate(parent):
        (kids[up] if up >= 0 else roots).append(i)
    built: dict[int, CallNode] = {}
    stack = [(i, False) for i in reversed(roots)]     # post-order, without recursion
    while stack:
        i, ready = stack.pop()
        if not ready:
            stack.append((i, True))
            stack.extend((k, False) for k in reversed(kids[i]))
            continue
        children = tuple(built.pop(k) for k in kids[i])
        f = info(func[i])
        built[i] = CallNode(f.name, f.module, f.file, f.line, weight[i],
                            weight[i] + sum(c.total for c in children), children)
    return tuple(built[i] for i in roots)


class CoverageData:
    """What code a trace ran, per source file, as coverage.py's ``CoverageData``: plain
    paths and sets of line numbers. Lines come from the DWARF line tables of the
    modules that ran (a module without debug information has no source lines: see
    :attr:`modules_without_lines`)."""

    def __init__(self, raw: Coverage) -> None:
        from .reporters.lines import line_coverage

        #: the blocks and edges with hit counts (``analysis.coverage.Coverage``)
        self.raw = raw
        found = line_coverage(raw, all_sources=True, branches=False)
        self._files: dict[str, SourceFile] = {f.path: f for f in found.files}
        #: modules that ran whose code is in no source file (no line table)
        self.modules_without_lines: list[str] = list(found.modules_without_lines)

    def files(self) -> list[str]:
        """The source files (full paths, as DWARF names them) of which a line ran."""
        return sorted(p for p, f in self._files.items() if f.lines_hit)

    def _file(self, path: str) -> SourceFile:
        found = self._files.get(path)
        if found is not None:
            return found
        tail = "/" + path.lstrip("./")
        near = [p for p in self._files if p.endswith(tail)]
        if len(near) > 1:                   # libc's build tree has a loop.c too
            near = [p for p in near if os.path.isfile(p)] or near
        if len(near) == 1:
            return self._files[near[0]]
        hint = (f"; it could be {', '.join(near[:5])}" if near else
                f"; its files: {', '.join(self.files()[:5]) or 'none'}")
        raise NotInTraceError(f"no source file {path!r} in the coverage{hint}")

    def lines(self, path: str) -> set[int]:
        """The lines of ``path`` that ran. ``path`` is a full path, or the end of one
        that names one file (``"loop.c"``; of several, the one on disk); an unknown file is a
        :class:`~branchtrace.NotInTraceError`."""
        return {line for line, hits in self._file(path).lines.items() if hits > 0}

    def missing(self, path: str) -> set[int]:
        """The lines of ``path`` that have code and never ran."""
        return {line for line, hits in self._file(path).lines.items() if hits == 0}

    def hits(self, path: str) -> dict[int, int]:
        """Every line of ``path`` with code, and how often it ran (0: never)."""
        return dict(sorted(self._file(path).lines.items()))

    def write(self, output: str, format: CoverageFormat = "lcov") -> list[str]:
        """Write the report ``branchtrace coverage --format FORMAT -o OUTPUT`` writes
        (``-``: stdout); returns its warnings."""
        from .reporters.base import Options, write_report
        from .reporters.table import COVERAGE_REPORTERS

        if format not in COVERAGE_REPORTERS:
            raise UsageError(f"unknown coverage format {format!r} "
                             f"(choose {', '.join(COVERAGE_REPORTERS)})")
        return write_report(COVERAGE_REPORTERS[format], self.raw, output, Options())


def coverage(reader: TraceReader, tf: TraceFile, pid: int | None) -> CoverageData:
    """:meth:`TraceReader.coverage`."""
    from .analysis.coverage_union import compute_all
    from .tracefile.counts import count_runs

    base = reader.without_branches()
    trace = base.for_pid(pid) if pid is not None else base
    return CoverageData(compute_all(trace, counts=lambda tid: count_runs(tf, tid)))


@dataclass(frozen=True)
class HistoryOptions:
    """The options of ``branchtrace history``, by their command-line names."""

    kind: HistoryKind = "calls"
    tid: int | None = None
    pid: int | None = None
    last: int | None = None
    range: tuple[int, int | None] | None = None
    function: str | None = None
    lines: bool = False
    insn_ranges: bool = False
    indent: bool = True
    source: bool = False


def write_history(meta: Trace, tf: TraceFile, out: IO[str], o: HistoryOptions) -> None:
    """The call or instruction history of a trace file (``meta``: its trace without
    branches) to ``out``, decoded a chunk at a time and each line written when known."""
    from .reporters import history_stream as history
    from .reporters.base import pick_threads
    from .reporters.history_filter import LineFilter, RangeDone
    from .tracefile.stream import Piece, pieces

    if o.kind not in ("calls", "insns"):
        raise UsageError(f"unknown history {o.kind!r} (choose calls or insns)")
    insns = o.kind == "insns"
    if insns and (o.lines or o.insn_ranges or not o.indent or o.function is not None):
        raise UsageError("lines, insn_ranges, indent and function go with the calls history")
    if not insns and o.source:
        raise UsageError("source goes with the instruction history")
    if o.range is not None and o.last is not None:
        raise UsageError("range and last each choose the lines: give one")
    trace = meta
    if o.pid is not None:
        trace = trace.for_pid(o.pid)
    elif o.tid is not None and len(trace.processes) > 1 and o.tid in trace.threads:
        trace = trace.for_pid(trace.process_of(o.tid).pid)
    pick_threads(trace, o.tid)

    def branches_of(tid: int) -> Iterator[np.ndarray | Gap]:
        for part in pieces(tf, tid):
            yield part.branches if isinstance(part, Piece) else part

    # last: each thread read from its last chunks when it can be (numbers counted)
    from .history_tail import call_resumer, insn_resumer

    resume = call_resumer(tf, o.last) if o.last is not None and not insns else None
    resume_insns = insn_resumer(tf, o.last) if o.last is not None and insns else None
    sink: IO[str] = out
    if o.range is not None or o.function is not None:
        first, last = o.range if o.range is not None else (1, None)
        sink = LineFilter(out, first, last, o.function, insns=insns)  # type: ignore[assignment]
    try:
        for one in trace.per_process():
            if len(trace.processes) > 1:
                p = one.processes[0]
                sink.write(f"process {p.pid} (parent {p.ppid or '-'}): "
                           f"{' '.join(p.argv) or '?'}\n")
            if insns:
                history.stream_insns(one, branches_of, sink, tid=o.tid, last=o.last,
                                     source=o.source, resume=resume_insns)
            else:
                history.stream_calls(one, branches_of, sink, tid=o.tid, last=o.last,
                                     indent=o.indent, insn_ranges=o.insn_ranges,
                                     lines=o.lines, resume=resume)
    except RangeDone:
        pass


def write_profile(reader: TraceReader, output: str, format: ProfileFormat) -> list[str]:
    """:meth:`TraceReader.profile`: as ``branchtrace profile`` writes it (collapsed
    stacks of block ids streamed; the other formats from the decoded trace)."""
    from .reporters import collapsed
    from .reporters.base import Options, write_report, write_to
    from .reporters.table import TRACE_REPORTERS
    from .tracefile.stream import id_source

    if format not in TRACE_REPORTERS:
        raise UsageError(f"unknown profile format {format!r} "
                         f"(choose {', '.join(TRACE_REPORTERS)})")
    tf = reader._file()
    threads = id_source(tf) if format == "collapsed" else None
    if threads is None or tf.blocks is None:
        return write_report(TRACE_REPORTERS[format], reader.decode(), output, Options())
    source = collapsed.BlockSource(tf.blocks, threads)
    base = reader.without_branches()
    write_to(output, lambda out: collapsed.render(base, out, source=source))
    return []
