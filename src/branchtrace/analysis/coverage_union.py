"""The coverage of several processes as one: the union of what ran in each.

Coverage is per module file, so processes that map the same file (the same path and
build-id) share its blocks and edges whatever address it was loaded at: each process's
addresses move by the difference of the load biases to the first mapping of that file
seen (the one the merged :class:`~.coverage.Coverage` lists), blocks are cut again at
every process's block bounds, and hits add up. Addresses in no module stay as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .coverage import BLOCK_DTYPE, EDGE_DTYPE, Coverage, _split_blocks, compute
from .coverage_counts import Counts, compute_counted
from .coverage_stream import Source, compute_streamed

if TYPE_CHECKING:
    from ..model import ModuleMap
    from ..trace import Trace


def compute_all(trace: Trace, source: Source | None = None, *,
                counts: Counts | None = None) -> Coverage:
    """The coverage of every process of ``trace``, each computed with its own modules;
    with ``source``, each thread's branches come from it piece by piece
    (coverage_stream.py), with ``counts``, each thread's runs and edges come counted
    (coverage_counts.py; tracefile.counts.count_runs), instead of the trace's arrays."""
    def one(view: Trace) -> Coverage:
        if counts is not None:
            return compute_counted(view, counts)
        return compute(view) if source is None else compute_streamed(view, source)

    views = trace.per_process()
    if len(views) == 1:
        return one(views[0])
    return union([one(view) for view in views])


def union(covs: list[Coverage]) -> Coverage:
    modules: list[ModuleMap] = []
    index: dict[tuple[str, str], int] = {}
    blocks_in: list[np.ndarray] = []
    edges_in: list[np.ndarray] = []
    for cov in covs:
        where = np.full(len(cov.modules) + 1, -1, dtype=np.int64)   # [-1] stays -1
        delta = np.zeros(len(cov.modules) + 1, dtype=np.uint64)
        for i, m in enumerate(cov.modules):
            key = (m.path, m.build_id)
            if key not in index:
                index[key] = len(modules)
                modules.append(m)
            where[i] = index[key]
            delta[i] = np.uint64((modules[index[key]].bias - m.bias) % (1 << 64))
        b = cov.blocks.copy()
        shift = delta[b["module"]]                     # module -1 reads the last slot: 0
        b["start"] += shift
        b["end"] += shift
        b["module"] = where[b["module"]]
        blocks_in.append(b)
        e = cov.edges.copy()
        e["from_ip"] += delta[e["from_module"]]
        e["to_ip"] += delta[e["to_module"]]
        e["from_module"] = where[e["from_module"]]
        e["to_module"] = where[e["to_module"]]
        edges_in.append(e)
    blocks = _union_blocks(np.concatenate(blocks_in) if blocks_in else np.zeros(0, BLOCK_DTYPE))
    edges = _union_edges(np.concatenate(edges_in) if edges_in else np.zeros(0, EDGE_DTYPE))
    notes = tuple(dict.fromkeys(n for cov in covs for n in cov.notes))
    return Coverage(modules=tuple(modules), blocks=blocks, edges=edges,
                    branches=sum(c.branches for c in covs), runs=sum(c.runs for c in covs),
                    dropped_runs=sum(c.dropped_runs for c in covs),
                    unknown_lengths=sum(c.unknown_lengths for c in covs), notes=notes)


def _union_blocks(b: np.ndarray) -> np.ndarray:
    """Blocks of several processes (in merged addresses) cut at every bound, per module."""
    parts = []
    for module in np.unique(b["module"]).tolist():
        mine = b[b["module"] == module]
        part = _split_blocks(mine["start"], mine["end"], mine["hits"])
        part["module"] = module
        parts.append(part)
    if not parts:
        return np.zeros(0, BLOCK_DTYPE)
    out = np.concatenate(parts)
    return out[np.argsort(out["start"], kind="stable")]


def _union_edges(e: np.ndarray) -> np.ndarray:
    """Edges with the same (from, to, kind) as one, their hits added up."""
    if len(e) == 0:
        return e
    order = np.lexsort((e["kind"], e["to_ip"], e["from_ip"]))
    e = e[order]
    new = np.ones(len(e), dtype=bool)
    new[1:] = (e["from_ip"][1:] != e["from_ip"][:-1]) | (e["to_ip"][1:] != e["to_ip"][:-1]) \
        | (e["kind"][1:] != e["kind"][:-1])
    first = np.flatnonzero(new)
    out = e[first].copy()
    out["hits"] = np.add.reduceat(e["hits"], first)
    return out
