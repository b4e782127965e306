"""Collapsed stacks for flamegraph.pl (and speedscope, inferno): ``a;b;c WEIGHT`` lines.

Each line is a call stack of the rebuilt call stacks, outermost first, and the number
of branches taken while it was the stack (a function's own branches, not its callees').
With several threads, each stack starts with ``thread TID``; with several processes,
with ``PROGRAM PID`` (each process symbolized with its own modules). Lines are sorted by stack;
``;`` inside a name becomes ``:``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
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
    then holds no branches), else the trace's branches.

    The lines are written in sorted order as they are made (:class:`StackTrie`): the
    memory holds the stacks as a tree of names, never the text of every line."""
    trie = StackTrie()
    add(trie, trace, tid=tid, source=source)
    trie.write(out)


def add(trie: StackTrie, trace: Trace, *, tid: int | None = None,
        source: BlockSource | None = None) -> None:
    """Add the stacks :func:`render` writes to ``trie`` (several runs: one trie)."""
    views = trace.per_process() if tid is None else [trace]
    for view in views:
        head = ""
        if len(views) > 1:
            name = os.path.basename(view.argv[0]) if view.argv else "?"
            head = f"{name} {view.pid};".replace(";", ":")[:-1] + ";"
        _add_threads(trie, view, pick_threads(view, tid), head, source)


@dataclass(frozen=True)
class BlockSource:
    """A trace file's threads as block ids: the block table, and per thread its pieces
    and the branch indices of its gaps (tracefile.stream.IdStream)."""

    blocks: np.ndarray
    thread: Callable[[int], tuple[Iterable[IdPiece], list[int]]]
    compiled: bool = True
    gaps: Callable[[int], list[Gap]] | None = None   # a thread's gaps (as their indices)


def _add_threads(trie: StackTrie, trace: Trace, tids: list[int], head: str,
                 source: BlockSource | None) -> None:
    """Add the calling-context tree of each of ``tids`` to ``trie``."""
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    table = BlockFunctions(source.blocks, functions, reader) if source is not None else None
    names: dict[int, int] = {}                  # function key -> name id in the trie
    for t in tids:
        if source is not None and table is not None:
            pieces, gaps = source.thread(t)
            tree = context_tree(table, pieces, gaps, source.compiled)
            node_parent, node_func, weight = (tree.parent.tolist(), tree.function.tolist(),
                                              tree.weight.tolist())
            del tree
        else:
            node_parent, node_func, weight = stack_tree(
                call_trace(trace, t, functions=functions, reader=reader))
        prefix = head + (f"thread {t};" if len(tids) > 1 else "")
        roots: dict[int, int] = {}              # function key -> name id with the prefix
        for key in set(node_func):
            if key not in names:
                names[key] = trie.name(functions.name(key).replace(";", ":"))
        func_name = [names[k] for k in node_func]
        del node_func
        for i, up in enumerate(node_parent):
            if up < 0:
                k = func_name[i]
                if k not in roots:
                    roots[k] = trie.name(prefix + trie.names[k])
                func_name[i] = roots[k]
        trie.add_tree(node_parent, func_name, weight)


class StackTrie:
    """Distinct stacks as a tree of names (a node is its parent node and a name; stacks
    of different functions with the same names are one node), each node with the
    weights of the lines that end there. :meth:`write` writes the lines sorted as
    strings (as ``sorted`` would sort them) walking the tree: a node's lines are its
    own (``STACK WEIGHT``), then its children's (``STACK;...``), children in the order
    of their names, a name's own lines and its children's sorted apart when another
    name extends it (``f`` and ``f.cold``: ``f W``, ``f.cold ...``, ``f;...``).
    ``summed``: one line per stack, its weights added (several runs)."""

    def __init__(self, summed: bool = False) -> None:
        self.summed = summed
        self.names: list[str] = []
        self._name_ids: dict[str, int] = {}
        self._node: dict[tuple[int, int], int] = {}     # (parent, name) -> node
        self.parent: list[int] = [-1]                  # node 0: the root (no stack)
        self.label: list[int] = [-1]
        self.weight: list[int] = [0]
        self._more: dict[int, list[int]] = {}           # the weights after a node's first

    def name(self, text: str) -> int:
        """The id of the name ``text``."""
        n = self._name_ids.get(text)
        if n is None:
            n = self._name_ids[text] = len(self.names)
            self.names.append(text)
        return n

    def add_tree(self, parent: list[int], name: list[int], weight: list[int]) -> None:
        """Add a tree given as parallel lists (parent node or -1, name id, weight); a
        node may come before its parent."""
        where = [-1] * len(parent)             # node of the tree -> node of the trie
        nodes = self._node
        for i in range(len(parent)):
            chain = []
            g = i
            while g >= 0 and where[g] < 0:
                chain.append(g)
                g = parent[g]
            at = where[g] if g >= 0 else 0
            for h in reversed(chain):
                node = nodes.get((at, name[h]))
                if node is None:
                    node = nodes[(at, name[h])] = len(self.parent)
                    self.parent.append(at)
                    self.label.append(name[h])
                    self.weight.append(0)
                where[h] = at = node
                w = weight[h]
                if w:
                    if self.summed or not self.weight[node]:
                        self.weight[node] += w
                    else:
                        self._more.setdefault(node, []).append(w)

    def _lines_of(self, node: int) -> list[str]:
        """The weight parts of a node's own lines, sorted: ``" W\\n"``."""
        w = self.weight[node]
        more = self._more.get(node)
        if more is None:
            return [f" {w}\n"] if w else []
        return sorted(f" {v}\n" for v in [w, *more])

    def write(self, out: IO[str], batch: int = 1 << 20) -> None:
        """Write the lines, sorted, to ``out`` (``batch`` characters at a time)."""
        self._node = {}
        kids: list[list[int]] = [[] for _ in self.parent]
        for node in range(1, len(self.parent)):
            kids[self.parent[node]].append(node)
        buf: list[str] = []
        size = 0
        # each entry: the stack of a node (None at the root) and its groups still to write
        todo: list[tuple[str | None, Iterator[list[tuple[int, bool]]]]] = [
            (None, iter(self._groups(kids, 0)))]
        while todo:
            stack, groups = todo[-1]
            group = next(groups, None)
            if group is None:
                todo.pop()
                continue
            if len(group) > 1:              # names that do not sort apart: sorted whole
                lines = sorted(line for c, own in group
                               for line in self._all_lines(kids, c, self._text(stack, c), own))
            else:
                node, own = group[0]
                text = self._text(stack, node)
                if not own:
                    todo.append((text, iter(self._groups(kids, node))))
                    continue
                lines = [text + w for w in self._lines_of(node)]
            buf += lines
            size += sum(map(len, lines))
            if size >= batch:
                out.write("".join(buf))
                buf, size = [], 0
        out.write("".join(buf))

    def _text(self, stack: str | None, node: int) -> str:
        """The stack of ``node``, a child of the node whose stack is ``stack`` (None at
        the root)."""
        name = self.names[self.label[node]]
        return name if stack is None else f"{stack};{name}"

    def _groups(self, kids: list[list[int]], node: int) -> list[list[tuple[int, bool]]]:
        """The children of ``node`` in groups, in the order their lines sort: [(child,
        True)] for a child's own lines, [(child, False)] for its children's; several
        together when their names do not sort apart (a key extends another: ``f W`` and
        ``f x;...`` from the names ``f`` and ``f x``): their lines are sorted whole."""
        if len(kids[node]) == 1:            # ("f " sorts before "f;")
            c = kids[node][0]
            return [[(c, own)] for own in (True, False) if (self.weight[c] if own else kids[c])]
        keyed: list[tuple[str, int, bool]] = []
        for c in kids[node]:
            name = self.names[self.label[c]]
            if self.weight[c]:
                keyed.append((name + " ", c, True))
            if kids[c]:
                keyed.append((name + ";", c, False))
        keyed.sort()
        # the keys that extend a key follow it: when none extends the one before, none
        # extends any
        if not any(b[0].startswith(a[0]) for a, b in zip(keyed, keyed[1:])):
            return [[(c, own)] for _, c, own in keyed]
        out: list[list[tuple[int, bool]]] = []
        end = 0                             # the keys before end are in out's last group
        for i, (key, c, own) in enumerate(keyed):
            j = i + 1
            while j < len(keyed) and keyed[j][0].startswith(key):
                j += 1                      # the keys that extend this one follow it
            if i < end:
                out[-1].append((c, own))
            else:
                out.append([(c, own)])
            end = max(end, j)
        return out

    def _all_lines(self, kids: list[list[int]], node: int, text: str,
                   own: bool) -> Iterator[str]:
        """The own lines of ``node`` (whose stack is ``text``), or else the lines of
        its descendants."""
        if own:
            for w in self._lines_of(node):
                yield text + w
            return
        todo = [(c, self._text(text, c)) for c in kids[node]]
        while todo:
            n, t = todo.pop()
            for w in self._lines_of(n):
                yield t + w
            todo += [(c, self._text(t, c)) for c in kids[n]]
