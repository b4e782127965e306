"""Counts for statistics: branches by kind, the hottest functions and edges.

All of it is numpy over the branch arrays (sorts and bincounts), never a Python loop per
branch; Python only touches the few rows that are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import BRANCH_DTYPE, BranchKind
from .functions import FunctionIndex

CALL_KINDS = (BranchKind.CALL, BranchKind.INDIRECT_CALL)


@dataclass(frozen=True, slots=True)
class HotFunction:
    key: int
    name: str
    module: str | None
    branches: int     # branches taken from inside it
    calls: int        # calls that entered it at its first byte or anywhere


@dataclass(frozen=True, slots=True)
class Edge:
    from_ip: int
    to_ip: int
    kind: BranchKind
    count: int


def kind_counts(branches: np.ndarray) -> dict[BranchKind, int]:
    """How many branches of each kind (kinds that never occur are left out)."""
    counts = np.bincount(branches["kind"], minlength=len(BranchKind))
    return {k: int(counts[k]) for k in BranchKind if counts[k]}


def hot_functions(branches: np.ndarray, functions: FunctionIndex, top: int = 10) -> list[HotFunction]:
    """The ``top`` functions with the most branches taken from inside them."""
    return hot_functions_of(edge_table(branches), functions, top)


def hot_edges(branches: np.ndarray, top: int = 10) -> list[Edge]:
    """The ``top`` most taken (from, to) pairs, with their kind, most taken first."""
    return hot_edges_of(edge_table(branches), top)


def all_branches(arrays: list[np.ndarray]) -> np.ndarray:
    """The branches of several threads as one array (for counts over the whole trace)."""
    if not arrays:
        return np.zeros(0, dtype=BRANCH_DTYPE)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


# -- the same counts from an edge table: each distinct (from_ip, to_ip, kind) with its
# -- count (tracefile.counts.EDGE_COUNT_DTYPE), which a trace file gives in one pass
# -- without its branches in memory; equal to the functions above on the branches.

def edge_table(branches: np.ndarray) -> np.ndarray:
    """The edge table of branches in memory."""
    from ..decode.pairs import edges_of

    return edges_of(branches)


def kind_counts_of(edges: np.ndarray) -> dict[BranchKind, int]:
    counts = np.bincount(edges["kind"], weights=edges["count"], minlength=len(BranchKind))
    return {k: int(counts[k]) for k in BranchKind if counts[k]}


def hot_functions_of(edges: np.ndarray, functions: FunctionIndex, top: int = 10) -> list[HotFunction]:
    """:func:`hot_functions` from an edge table."""
    if not len(edges) or top <= 0:
        return []
    weights = edges["count"].astype(np.int64)
    keys = functions.keys(edges["from_ip"]).key
    u, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(inverse, weights=weights, minlength=len(u)).astype(np.int64)
    is_call = np.isin(edges["kind"], CALL_KINDS)
    callee = functions.keys(edges["to_ip"][is_call]).key
    cu, cinv = np.unique(callee, return_inverse=True)
    ccounts = np.bincount(cinv, weights=weights[is_call], minlength=len(cu)).astype(np.int64)
    order = np.lexsort((u, -counts))[:top]
    out = []
    for i in order.tolist():
        key = int(u[i])
        j = int(np.searchsorted(cu, u[i]))
        calls = int(ccounts[j]) if j < len(cu) and cu[j] == u[i] else 0
        info = functions.info(key)
        out.append(HotFunction(key, info.name, info.module, int(counts[i]), calls))
    return out


def hot_edges_of(edges: np.ndarray, top: int = 10) -> list[Edge]:
    """:func:`hot_edges` from an edge table (sorted by from, to, kind): rows that differ
    only in kind are one edge, of the first row's kind."""
    if not len(edges) or top <= 0:
        return []
    f, t = edges["from_ip"], edges["to_ip"]
    starts = np.flatnonzero(np.concatenate(([True], (f[1:] != f[:-1]) | (t[1:] != t[:-1]))))
    counts = np.add.reduceat(edges["count"].astype(np.int64), starts)
    fs, ts = f[starts], t[starts]
    best = np.lexsort((ts, fs, -counts))[:top]
    kinds = edges["kind"][starts]
    return [Edge(int(fs[i]), int(ts[i]), BranchKind(int(kinds[i])), int(counts[i]))
            for i in best.tolist()]
