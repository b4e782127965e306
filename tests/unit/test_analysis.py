"""Call-stack reconstruction on built traces: nesting, and every hazard a real trace has
(gaps, longjmp, a trace that starts mid-call, signals, tail calls, fall-through).

Traces here are hand-built branch arrays over a fake symbol table (functions 0x100
bytes long at fixed addresses; no file on disk, so call lengths are unknown and a return
matches a call 2..15 bytes before it). Other unit tests import :func:`make_trace`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from branchtrace.analysis import (
    FunctionIndex,
    Runs,
    call_trace,
    hot_edges,
    hot_functions,
    kind_counts,
)
from branchtrace.analysis.callstack import CallTrace
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, ModuleMap
from branchtrace.symbols import ResolvedArrays, Symbolizer
from branchtrace.trace import Trace

K = BranchKind
FUNCS = {"main": 0x1000, "f": 0x2000, "g": 0x3000, "h": 0x4000, "handler": 0x5000,
         "longjmp": 0x6000, "inner": 0x7000}
SIZE = 0x100
MODULE = "/nonexistent/prog"
RESTORER = 0x8000          # in the module, in no function: "?? (prog)"


def at(name: str, offset: int = 0) -> int:
    return FUNCS[name] + offset


class FakeSymbols(Symbolizer):
    """A symbol table without a file: FUNCS, each SIZE bytes, in one module."""

    def __init__(self) -> None:
        super().__init__([ModuleMap(MODULE, 0x1000, 0x9000, 0)])
        self.names = sorted(FUNCS, key=FUNCS.__getitem__)
        self.starts = np.array([FUNCS[n] for n in self.names], dtype=np.uint64)

    def resolve(self, addresses: np.ndarray) -> ResolvedArrays:
        a = np.ascontiguousarray(addresses, dtype=np.uint64).ravel()
        i = np.searchsorted(self.starts, a, side="right").astype(np.int64) - 1
        start = self.starts[np.maximum(i, 0)]
        inside = (i >= 0) & (a >= start) & (a < start + np.uint64(SIZE))
        module = self.module_indices(a)
        return ResolvedArrays(
            address=a, module=module, vaddr=a, function=np.where(inside, i, -1).astype(np.int32),
            offset=np.where(inside, a - start, 0).astype(np.uint64),
            file=np.full(len(a), -1, np.int32), line=np.zeros(len(a), np.int32),
            module_paths=(MODULE,), function_names=tuple(self.names), file_names=())


def make_trace(branches: list[tuple[BranchKind, int, int]], gaps: list[Gap] = (),  # type: ignore[assignment]
               tid: int = 1, threads: dict[int, list[tuple[BranchKind, int, int]]] | None = None,
               start: float = 0.0, end: float = 0.0) -> Trace:
    """A trace of one thread ``tid`` (or of ``threads``) over the fake symbol table."""
    def array(rows: list[tuple[BranchKind, int, int]]) -> np.ndarray:
        out = np.zeros(len(rows), dtype=BRANCH_DTYPE)
        for i, (kind, src, dst) in enumerate(rows):
            out[i] = (src, dst, int(kind))
        return out

    arrays = {t: array(rows) for t, rows in (threads or {tid: branches}).items()}
    sym = FakeSymbols()
    return Trace(backend="test", mode="stream", argv=("prog",), pid=next(iter(arrays)),
                 exit=ExitInfo("exited", 0), modules=list(sym.modules), threads=arrays,
                 gaps=list(gaps), start_time=start, end_time=end, _symbolizer=sym)


def call(src: tuple[str, int], dst: str) -> tuple[BranchKind, int, int]:
    return K.CALL, at(*src), at(dst)


def ret(src: tuple[str, int], site: tuple[str, int]) -> tuple[BranchKind, int, int]:
    """A return from ``src`` to the instruction after the 5-byte call at ``site``."""
    return K.RETURN, at(*src), at(*site) + 5


def shape(ct: CallTrace) -> list[tuple[str, int] | str]:
    out: list[tuple[str, int] | str] = []
    for s in range(len(ct)):
        if ct.is_gap[s]:
            out.append("gap")
        else:
            out.append((ct.functions.name(int(ct.seg_function[s])), int(ct.seg_depth[s])))
    return out


def check_nesting(ct: CallTrace) -> None:
    """Frames nest: each lies within its parent, one level deeper; segments tile the runs."""
    for f in range(len(ct.frame_function)):
        assert ct.frame_open[f] < ct.frame_close[f]
        p = ct.frame_parent[f]
        if p >= 0:
            assert ct.frame_depth[f] == ct.frame_depth[p] + 1
            assert ct.frame_open[p] <= ct.frame_open[f] and ct.frame_close[f] <= ct.frame_close[p]
    assert (ct.seg_last >= ct.seg_first - 1).all()
    assert (ct.seg_last[ct.is_gap] == ct.seg_first[ct.is_gap] - 1).all()
    if len(ct):
        first, last = ct.seg_first, ct.seg_last
        assert first[0] == 0 and (first[1:] == last[:-1] + 1).all()


def analyse(trace: Trace, tid: int = 1) -> CallTrace:
    ct = call_trace(trace, tid)
    check_nesting(ct)
    return ct


def test_calls_and_returns_nest():
    trace = make_trace([
        call(("main", 0x10), "f"),
        (K.COND, at("f", 0x8), at("f", 0x20)),          # inside f: no new segment
        call(("f", 0x30), "g"),
        ret(("g", 0x40), ("f", 0x30)),
        call(("f", 0x50), "g"),
        ret(("g", 0x40), ("f", 0x50)),
        ret(("f", 0x60), ("main", 0x10)),
    ])
    ct = analyse(trace)
    assert shape(ct) == [("main", 0), ("f", 1), ("g", 2), ("f", 1), ("g", 2), ("f", 1), ("main", 0)]
    # a function instance is one frame however many segments it has
    assert len(ct.frame_function) == 4
    assert ct.seg_frame.tolist() == [0, 1, 2, 1, 3, 1, 0]
    assert ct.seg_branches.tolist() == [1, 2, 1, 1, 1, 1, 0]


def test_gap_resumes_in_a_deeper_frame_then_recovers():
    # main calls f; records are lost (f called g); g returns to f, f returns to main
    trace = make_trace([
        call(("main", 0x10), "f"),
        ret(("g", 0x40), ("f", 0x30)),
        ret(("f", 0x60), ("main", 0x10)),
    ], gaps=[Gap(1, 1, 7, "test")])
    ct = analyse(trace)
    assert shape(ct) == [("main", 0), ("f", 1), "gap", ("g", 2), ("f", 1), ("main", 0)]
    assert ct.gap_of(2) == Gap(1, 1, 7, "test")


def test_gap_after_lost_returns_unwinds():
    # main -> f -> g; records lost (g and f returned); main goes on
    trace = make_trace([
        call(("main", 0x10), "f"),
        call(("f", 0x30), "g"),
        (K.COND, at("main", 0x20), at("main", 0x40)),
        call(("main", 0x50), "h"),
    ], gaps=[Gap(1, 2, 3, "test")])
    ct = analyse(trace)
    assert shape(ct) == [("main", 0), ("f", 1), ("g", 2), "gap", ("main", 0), ("h", 1)]


def test_gap_at_start_and_end():
    trace = make_trace([call(("main", 0x10), "f")],
                       gaps=[Gap(1, 0, 100, "ring buffer overwrote the oldest records"),
                             Gap(1, 1, 5, "test")])
    ct = analyse(trace)
    assert shape(ct) == ["gap", ("main", 0), ("f", 1), "gap"]


def test_longjmp_unwinds_to_the_frame_it_lands_in():
    # main -> inner -> inner -> inner -> longjmp, which jumps back into main
    trace = make_trace([
        call(("main", 0x10), "inner"),
        call(("inner", 0x20), "inner"),
        call(("inner", 0x20), "inner"),
        call(("inner", 0x30), "longjmp"),
        (K.INDIRECT_JUMP, at("longjmp", 0x40), at("main", 0x15)),
        call(("main", 0x60), "f"),
        ret(("f", 0x10), ("main", 0x60)),
    ])
    ct = analyse(trace)
    assert shape(ct) == [("main", 0), ("inner", 1), ("inner", 2), ("inner", 3), ("longjmp", 4),
                         ("main", 0), ("f", 1), ("main", 0)]
    # every frame above main closed where the jump landed
    assert ct.frame_close[1:5].tolist() == [2 * 5] * 4     # position of run 5


def test_return_that_skips_frames_pops_them():
    # main -> f -> g -> h; h returns straight to main (f and g never return)
    trace = make_trace([
        call(("main", 0x10), "f"),
        call(("f", 0x10), "g"),
        call(("g", 0x10), "h"),
        ret(("h", 0x10), ("main", 0x10)),
    ])
    assert shape(analyse(trace)) == [("main", 0), ("f", 1), ("g", 2), ("h", 3), ("main", 0)]


def test_trace_starting_mid_call_lowers_the_baseline():
    # the trace starts inside g, called from f, called from main: neither call is seen
    trace = make_trace([
        ret(("g", 0x40), ("f", 0x30)),
        ret(("f", 0x60), ("main", 0x10)),
        call(("main", 0x20), "h"),
        ret(("h", 0x10), ("main", 0x20)),
    ])
    ct = analyse(trace)
    assert shape(ct) == [("g", 2), ("f", 1), ("main", 0), ("h", 1), ("main", 0)]
    # the frames found below the start were there from the start
    main = int(ct.seg_frame[2])
    assert ct.frame_open[main] == 0 and ct.frame_parent[main] == -1


def test_signal_handler_and_sigreturn():
    # main -> f; a signal arrives in f; the handler returns to the restorer, whose
    # rt_sigreturn lands back where f was; f returns
    trace = make_trace([
        call(("main", 0x10), "f"),
        (K.INTERRUPT, at("f", 0x22), at("handler")),
        call(("handler", 0x8), "g"),
        ret(("g", 0x10), ("handler", 0x8)),
        (K.RETURN, at("handler", 0x20), RESTORER),
        (K.SYSCALL, RESTORER + 7, at("f", 0x22)),
        ret(("f", 0x60), ("main", 0x10)),
    ])
    ct = analyse(trace)
    assert shape(ct) == [("main", 0), ("f", 1), ("handler", 2), ("g", 3), ("handler", 2),
                         ("?? (prog)", 2), ("f", 1), ("main", 0)]
    f = int(ct.seg_frame[1])
    assert int(ct.seg_frame[6]) == f          # the same instance of f goes on


def test_nested_signal_returns_to_the_right_handler():
    trace = make_trace([
        (K.INTERRUPT, at("main", 0x22), at("handler")),
        (K.INTERRUPT, at("handler", 0x4), at("handler")),
        (K.RETURN, at("handler", 0x20), RESTORER),
        (K.SYSCALL, RESTORER + 7, at("handler", 0x4)),
        (K.RETURN, at("handler", 0x20), RESTORER),
        (K.SYSCALL, RESTORER + 7, at("main", 0x22)),
    ])
    assert shape(analyse(trace)) == [("main", 0), ("handler", 1), ("handler", 2), ("?? (prog)", 2),
                                     ("handler", 1), ("?? (prog)", 1), ("main", 0)]


def test_tail_call_takes_the_frame_over():
    # main -> f; f jumps to g's first byte; g returns to main (f's caller)
    trace = make_trace([
        call(("main", 0x10), "f"),
        (K.JUMP, at("f", 0x30), at("g")),
        ret(("g", 0x40), ("main", 0x10)),
    ])
    assert shape(analyse(trace)) == [("main", 0), ("f", 1), ("g", 1), ("main", 0)]


def test_jump_elsewhere_switches_in_place_and_fall_through_too():
    trace = make_trace([
        call(("main", 0x10), "f"),
        (K.COND, at("f", 0x8), at("g", 0x80)),        # into the middle of g (a .cold part)
        (K.JUMP, at("g", 0x90), at("f", 0x10)),        # and back
        (K.COND, at("h", 0x8), at("h", 0x20)),         # f fell through into h
        ret(("h", 0x40), ("main", 0x10)),
    ])
    assert shape(analyse(trace)) == [("main", 0), ("f", 1), ("g", 1), ("f", 1), ("h", 1),
                                     ("main", 0)]


def test_return_to_a_caller_never_seen():
    # main -> f -> g; g returns into h, which is on no frame: h replaces f, one level up
    trace = make_trace([
        call(("main", 0x10), "f"),
        call(("f", 0x10), "g"),
        (K.RETURN, at("g", 0x20), at("h", 0x30)),
        ret(("h", 0x40), ("main", 0x10)),
    ])
    assert shape(analyse(trace)) == [("main", 0), ("f", 1), ("g", 2), ("h", 1), ("main", 0)]


def test_empty_and_gap_only_threads():
    ct = analyse(make_trace([]))
    assert len(ct) == 0 and len(ct.frame_function) == 0
    ct = analyse(make_trace([], gaps=[Gap(1, 0, 9, "no buffer")]))
    assert shape(ct) == ["gap"]


def _tree_branches(tree: list, caller: str, depth: int, rows: list, expect: list) -> None:
    """Branches of a call tree: each node is a list of children called from ``caller``."""
    names = ["f", "g", "h", "inner"]
    for i, children in enumerate(tree):
        callee = names[depth % len(names)]
        site = (caller, 0x10 + 8 * i)
        rows.append(call(site, callee))
        expect.append((callee, depth + 1))
        _tree_branches(children, callee, depth + 1, rows, expect)
        rows.append(ret((callee, 0xf0), site))
        expect.append((caller, depth))


trees = st.recursive(st.just([]), lambda kids: st.lists(kids, max_size=4), max_leaves=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(trees, max_size=5), st.integers(0, 3))
def test_random_call_trees(tree, cut):
    rows: list = []
    expect: list = [("main", 0)]
    _tree_branches(tree, "main", 0, rows, expect)
    ct = analyse(make_trace(rows))
    if not rows:
        assert len(ct) == 0
        return
    assert shape(ct) == expect
    assert len(ct) == 1 + len(rows)
    # cut the first branches off: the reconstruction stays consistent and ends the same
    if rows and cut < len(rows):
        ct2 = analyse(make_trace(rows[cut:]))
        assert shape(ct2)[-1][0] == "main"


def test_counts():
    trace = make_trace([
        call(("main", 0x10), "f"),
        (K.COND, at("f", 0x8), at("f", 0x20)),
        (K.COND, at("f", 0x8), at("f", 0x20)),
        ret(("f", 0x60), ("main", 0x10)),
        call(("main", 0x20), "f"),
    ])
    b = trace.branches(1)
    assert kind_counts(b) == {K.CALL: 2, K.RETURN: 1, K.COND: 2}
    edges = hot_edges(b, 2)
    assert (edges[0].from_ip, edges[0].to_ip, edges[0].count) == (at("f", 8), at("f", 0x20), 2)
    assert edges[0].kind == K.COND
    hot = hot_functions(b, FunctionIndex(trace.symbolizer), 5)
    assert [(h.name, h.branches, h.calls) for h in hot] == [("f", 3, 2), ("main", 2, 0)]


def test_runs_without_code_count_one_instruction_each():
    trace = make_trace([call(("main", 0x10), "f"), ret(("f", 0x60), ("main", 0x10))],
                       gaps=[Gap(1, 1, 2, "test")])
    runs = Runs(trace, 1)
    assert runs.counts.tolist() == [1, 1, 0]      # no file on disk: no tail either
    assert runs.first_number.tolist() == [1, 2, 3]
    assert runs.instructions(0)[0].text == "(code not readable)"
