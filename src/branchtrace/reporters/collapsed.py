"""Collapsed stacks for flamegraph.pl (and speedscope, inferno): ``a;b;c WEIGHT`` lines.

Each line is a call stack of the rebuilt call stacks, outermost first, and the number
of branches taken while it was the stack (a function's own branches, not its callees').
With several threads, each stack starts with ``thread TID``; with several processes,
with ``PROGRAM PID`` (each process symbolized with its own modules). Lines are sorted by stack;
``;`` inside a name becomes ``:``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import numpy as np

from ..analysis import CallTrace, CodeReader, FunctionIndex, call_trace
from ..analysis.contexts import BlockFunctions, IdPiece, context_tree
from ..model import Gap
from ..trace import Trace
from .base import pick_threads


def stack_tree(ct: CallTrace) -> tuple[list[int], list[int], list[int]]:
    """The distinct call stacks as a tree: (parent node or -1, function key, branches
    taken with exactly this stack) per node; a node comes after its parent."""
    m = len(ct.frame_function)
    real = ~ct.is_gap
    per_frame = np.bincount(ct.seg_frame[real], weights=ct.seg_branches[real], minlength=m)
    parent = ct.frame_parent.tolist()
    func = ct.frame_function.tolist()
    node_of: dict[int, int] = {}                     # frame -> node
    nodes: dict[tuple[int, int], int] = {}           # (parent node, function) -> node
    node_parent: list[int] = []
    node_func: list[int] = []
    weight: list[int] = []
    for f in np.flatnonzero(per_frame > 0).tolist():
        chain = []
        g = f
        while g >= 0 and g not in node_of:
            chain.append(g)
            g = parent[g]
        node = node_of[g] if g >= 0 else -1
        for h in reversed(chain):
            up = node
            node = nodes.setdefault((up, func[h]), len(node_parent))
            if node == len(node_parent):
                node_parent.append(up)
                node_func.append(func[h])
                weight.append(0)
            node_of[h] = node
        weight[node] += int(per_frame[f])
    return node_parent, node_func, weight


def stack_weights(ct: CallTrace) -> dict[tuple[int, ...], int]:
    """Branches taken per call stack (a tuple of function keys, outermost first)."""
    node_parent, node_func, weight = stack_tree(ct)
    paths: list[tuple[int, ...]] = []
    for up, key in zip(node_parent, node_func):
        paths.append((paths[up] if up >= 0 else ()) + (key,))
    return {paths[i]: w for i, w in enumerate(weight) if w}


def render(trace: Trace, out: IO[str], *, tid: int | None = None,
           source: BlockSource | None = None) -> None:
    """Write the collapsed stacks of each thread (or of ``tid``) to ``out``. ``source``:
    the threads' branches as block ids, read chunk by chunk (a trace file; the trace
    then holds no branches), else the trace's branches."""
    views = trace.per_process() if tid is None else [trace]
    lines: list[str] = []
    for view in views:
        head = ""
        if len(views) > 1:
            name = os.path.basename(view.argv[0]) if view.argv else "?"
            head = f"{name} {view.pid};".replace(";", ":")[:-1] + ";"
        lines += _lines(view, pick_threads(view, tid), head, source)
    lines.sort()
    out.write("".join(lines))


@dataclass(frozen=True)
class BlockSource:
    """A trace file's threads as block ids: the block table, and per thread its pieces
    and the branch indices of its gaps (tracefile.stream.IdStream)."""

    blocks: np.ndarray
    thread: Callable[[int], tuple[Iterable[IdPiece], list[int]]]
    compiled: bool = True
    gaps: Callable[[int], list[Gap]] | None = None   # a thread's gaps (as their indices)


def _lines(trace: Trace, tids: list[int], head: str, source: BlockSource | None) -> list[str]:
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    table = BlockFunctions(source.blocks, functions, reader) if source is not None else None
    lines: list[str] = []
    names: dict[int, str] = {}
    for t in tids:
        if source is not None and table is not None:
            pieces, gaps = source.thread(t)
            tree = context_tree(table, pieces, gaps, source.compiled)
            node_parent, node_func, weight = (tree.parent.tolist(), tree.function.tolist(),
                                              tree.weight.tolist())
        else:
            node_parent, node_func, weight = stack_tree(
                call_trace(trace, t, functions=functions, reader=reader))
        prefix = head + (f"thread {t};" if len(tids) > 1 else "")
        text: dict[int, str] = {}            # each node's stack, built from its parent's
        for node, w in enumerate(weight):
            if not w:
                continue
            chain = []
            g = node
            while g >= 0 and g not in text:
                chain.append(g)
                g = node_parent[g]
            for h in reversed(chain):
                key = node_func[h]
                name = names.get(key)
                if name is None:
                    name = names[key] = functions.name(key).replace(";", ":")
                up = node_parent[h]
                text[h] = f"{text[up]};{name}" if up >= 0 else prefix + name
            lines.append(f"{text[node]} {w}\n")
    return lines
