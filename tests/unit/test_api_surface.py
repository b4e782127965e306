"""The Python API's surface (issue 16): the names it exports and nothing else, a
docstring on every public class and method, Literal choices that are the command
line's, a user script that passes ``mypy --strict`` (and one that must not), and the
lazy reader on written files (decodes nothing until asked, errors for bad tids)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest

import branchtrace
from branchtrace.model import Gap
from branchtrace.tracefile import open_trace

from test_tracefile import synthetic, written

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_dir_is_the_api_and_every_name_resolves() -> None:
    assert dir(branchtrace) == sorted(branchtrace.__all__)
    for name in branchtrace.__all__:
        assert getattr(branchtrace, name) is not None, name
    for name in ("TraceFormatError", "UnknownFunctionError", "UnknownThreadError",
                 "NotInTraceError", "BranchtraceError"):
        assert issubclass(getattr(branchtrace, name), branchtrace.BranchtraceError)
    assert issubclass(branchtrace.NotInTraceError, LookupError)
    with pytest.raises(AttributeError):
        branchtrace.importlib  # type: ignore[attr-defined]  # noqa: B018


def _public_members(cls: type) -> list[tuple[str, object]]:
    return [(n, v) for n, v in vars(cls).items()
            if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))]


def test_every_public_class_and_method_has_a_docstring() -> None:
    missing = []
    for name in branchtrace.__all__:
        value = getattr(branchtrace, name)
        if inspect.isclass(value):
            if not (value.__doc__ or "").strip():
                missing.append(name)
            for member, obj in _public_members(value):
                if not (getattr(obj, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{member}")
        elif inspect.isfunction(value) and not (value.__doc__ or "").strip():
            missing.append(name)
    assert missing == []


def test_every_public_name_and_method_is_in_the_reference() -> None:
    text = (DOCS / "api.md").read_text()
    names = [n for n in branchtrace.__all__ if n != "__version__"]
    names += [m for m, _ in _public_members(branchtrace.TraceReader)]
    names += [m for m, _ in _public_members(branchtrace.CoverageData)]
    assert [n for n in names if f"`{n}" not in text and f".{n}(" not in text] == []


def test_the_literal_choices_are_the_command_lines() -> None:
    from branchtrace.backends import names
    from branchtrace.reporters.table import COVERAGE_REPORTERS, TRACE_REPORTERS
    from branchtrace.store import StoreMode

    assert set(typing.get_args(branchtrace.Mode)) == {m.name.lower() for m in StoreMode}
    assert set(typing.get_args(branchtrace.BackendName)) == {"auto", *names()}
    assert set(typing.get_args(branchtrace.ProfileFormat)) == set(TRACE_REPORTERS)
    assert set(typing.get_args(branchtrace.CoverageFormat)) == set(COVERAGE_REPORTERS)


def test_importing_the_api_imports_no_numpy() -> None:
    code = "import branchtrace, sys; branchtrace.UsageError; print('numpy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    assert r.stdout.strip() == "False"


USER_SCRIPT = '''
from __future__ import annotations

import numpy as np

import branchtrace


def summary(path: str, function: str) -> dict[str, object]:
    config = branchtrace.RecordConfig(backend="ptrace", mode="stream")
    mode: branchtrace.Mode = config.mode
    with branchtrace.open(path) as t:
        per_thread: dict[int, int] = t.calls_per_thread(function)
        total: int = t.calls(function, tid=t.tids[0])
        hot: list[branchtrace.HotEdge] = t.hot_edges(3)
        tree: branchtrace.CallNode = t.call_tree(t.tids[0])
        depth: list[str] = [n.function for n in tree.walk()]
        cov: branchtrace.CoverageData = t.coverage()
        lines: set[int] = cov.lines("prog.c")
        files: list[str] = cov.files()
        text: str = t.history("calls", tid=t.tids[0], last=5)
        n = 0
        for piece in t.iter_branches(chunk=1024):
            if isinstance(piece, branchtrace.Gap):
                n += 0 * piece.count
            else:
                n += len(piece.branches)
        where: list[branchtrace.Location] = t.symbolize(np.array([1, 2], np.uint64))
        gaps: list[branchtrace.Gap] = t.gaps
    try:
        branchtrace.open(path).calls("nothing")
    except branchtrace.UnknownFunctionError as err:
        print(err)
    return {"mode": mode, "per_thread": per_thread, "total": total, "hot": hot,
            "depth": depth, "lines": lines, "files": files, "text": text, "n": n,
            "where": where, "gaps": gaps}
'''

BAD_SCRIPT = '''
import branchtrace

with branchtrace.open("x") as t:
    t.calls(42)
    lines: set[str] = t.coverage().lines("a.c")
branchtrace.RecordConfig(mode="lossless")
'''


MYPY_INI = """
[mypy]
strict = True
# as for an installed package: its types are used, its own errors are not the user's
[mypy-branchtrace.*]
ignore_errors = True
[mypy-pyarrow.*,pandas.*,capstone.*,elftools.*,tqdm.*]
ignore_missing_imports = True
"""


def test_mypy_strict_passes_a_user_script_and_catches_misuse(tmp_path: Path) -> None:
    """One mypy run over two scripts (mypy reads the package once): the good one has
    no error, the bad one the three it should."""
    pytest.importorskip("mypy")
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    (tmp_path / "good.py").write_text(textwrap.dedent(USER_SCRIPT))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD_SCRIPT))
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini",
                        "--cache-dir", str(tmp_path / "cache"), "good.py", "bad.py"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "MYPYPATH": str(ROOT / "src")}, timeout=600)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if e.startswith("good.py")] == [], r.stdout
    bad = "\n".join(e for e in errors if e.startswith("bad.py"))
    assert 'Argument 1 to "calls" of "TraceReader" has incompatible type "int"' in bad
    assert 'Incompatible types in assignment (expression has type "set[int]"' in bad
    assert "Literal['lossless']" in bad
    assert len(errors) == 3, r.stdout


def test_the_reader_decodes_nothing_until_asked(tmp_path: Path) -> None:
    path = written(tmp_path)
    full = synthetic()
    with branchtrace.open(path) as t:
        assert isinstance(t, branchtrace.Trace) and "not decoded" in repr(t)
        assert t.tids == list(full.threads) and t.written == open_trace(path).written
        assert sorted(t.gaps, key=str) == sorted(open_trace(path).gaps, key=str)
        for tid in t.tids:
            items = list(t.iter_branches(tid, chunk=5))
            got = [p.branches for p in items if isinstance(p, branchtrace.Piece)]
            assert all(0 < len(b) <= 5 for b in got)
            assert sum(map(len, got)) == len(full.branches(tid))
            if got:
                assert np.array_equal(np.concatenate(got), full.branches(tid))
            assert [g for g in items if isinstance(g, Gap)] == [g for g in t.gaps if g.tid == tid]
        assert "not decoded" in repr(t)
        with pytest.raises(branchtrace.UnknownThreadError, match="no thread 5 .*100, 101, 102"):
            next(t.iter_branches(5))
        with pytest.raises(branchtrace.UsageError, match="chunk"):
            next(t.iter_branches(chunk=0))
        assert np.array_equal(t.branches(101), full.branches(101)) and "decoded" in repr(t)
        with pytest.raises(branchtrace.UnknownThreadError):
            t.branches(5)                       # a Trace in memory gives an empty array
        assert len(full.branches(5)) == 0
        changed = dataclasses.replace(t, argv=("other",))     # a Trace in memory
        assert type(changed) is branchtrace.Trace and changed.argv == ("other",)
        assert np.array_equal(changed.branches(100), full.branches(100))
        t.threads = {}                          # a Trace's fields stay assignable
        assert t.total() == 0


def test_a_file_that_is_no_trace_is_a_trace_format_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.btrace"
    bad.write_bytes(b"not a trace at all" * 10)
    with pytest.raises(branchtrace.TraceFormatError):
        branchtrace.open(bad)


def test_a_call_tree_is_built_whatever_the_order_of_its_nodes() -> None:
    from branchtrace.analysis.functions import FunctionInfo
    from branchtrace.api_tasks import tree_nodes

    names = {1: "main", 2: "f", 3: "g"}
    # node 0 (g) under node 2 (f) under node 1 (main): children before their parents
    (root,) = tree_nodes([2, -1, 1], [3, 1, 2], [5, 1, 2],
                         lambda key: FunctionInfo(key, names[key], "prog", "p.c", key))
    assert [(n.function, n.branches, n.total) for n in root.walk()] == \
        [("main", 1, 8), ("f", 2, 7), ("g", 5, 5)]
    assert root.find("g")[0].line == 3 and root.find("h") == []
