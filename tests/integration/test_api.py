"""The Python API as a user meets it (issue 16): the cookbook's blocks run as written,
the reader agrees with the whole-trace decode, the tables round-trip through DuckDB and
pandas, bad names and tids are errors, record() says what it kept."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import branchtrace
from branchtrace.tracefile import open_trace
from conftest import backend_probe, cli, need_backend

DOCS = Path(__file__).parent.parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def any_backend() -> None:
    if not any(backend_probe(name)[0] for name in ("stalker", "ptrace")):
        pytest.skip("no backend can run here")


def test_the_cookbook_runs(build, tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/cookbook.md, in order, as one script, in a
    directory holding the threads fixture."""
    any_backend()
    pytest.importorskip("pandas")
    pytest.importorskip("duckdb")
    shutil.copy(build("threads"), tmp_path / "threads")
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall((DOCS / "cookbook.md").read_text())
    assert len(blocks) >= 12
    scope: dict[str, object] = {"__name__": "cookbook"}
    for k, code in enumerate(blocks):
        assert len(code.strip().splitlines()) <= 6, f"block {k} is more than a few lines"
        exec(compile(code, f"cookbook.md block {k}", "exec"), scope)
    # what the blocks found is what the fixture does
    assert sorted(scope["per_thread"].values()) == [0, 50, 100, 150, 200]  # type: ignore[attr-defined]
    source = str(Path(__file__).parent.parent / "fixtures" / "threads.c")
    assert {9, 19, 20, 29, 30} <= scope["ran"]  # type: ignore[operator]
    counts = scope["counts"]
    with branchtrace.open("threads.btrace") as t:
        assert counts == {tid: len(t.branches(tid)) for tid in t.tids}
        assert t.coverage().lines(source) == scope["ran"]
    newest = scope["newest"]
    assert isinstance(newest, branchtrace.Trace)
    for tid, branches in newest.threads.items():
        assert len(branches) <= 100
        gap = newest.gaps[0] if newest.gaps[0].tid == tid else \
            next(g for g in newest.gaps if g.tid == tid and g.reason == "not kept in memory")
        assert gap.index == 0 and newest.lost[tid] >= gap.count > 0
    assert any("again.btrace" in n for n in newest.notes)
    assert "did you mean work" in capsys.readouterr().out


@pytest.fixture(scope="module", params=["stalker", "ptrace"])
def recorded(request, build, tmp_path_factory) -> Path:
    need_backend(request.param)
    out = tmp_path_factory.mktemp("api") / f"threads-{request.param}.btrace"
    r = cli("run", "--backend", request.param, "--mode", "stream", "-o", str(out), "--",
            str(build("threads")))
    assert r.returncode == 0, r.stderr
    return out


def test_the_reader_is_the_trace_open_gave(recorded):
    whole = open_trace(recorded)
    with branchtrace.open(recorded) as t:
        assert repr(t).endswith("not decoded)")
        assert t.gaps == whole.gaps and t.lost == whole.lost and t.tids == list(whole.threads)
        for tid in t.tids:                      # streamed, in small pieces, equal
            parts = [p.branches for p in t.iter_branches(tid, chunk=7)
                     if isinstance(p, branchtrace.Piece)]
            assert all(len(p) <= 7 for p in parts)
            assert np.array_equal(np.concatenate(parts), whole.threads[tid])
        assert "not decoded" in repr(t)
        assert all(np.array_equal(t.branches(k), v) for k, v in whole.threads.items())
        assert t.total() == whole.total() and "decoded" in repr(t)
    assert t.closed
    with pytest.raises(branchtrace.UsageError, match="closed"):
        list(t.iter_branches())


def test_task_answers_and_their_errors(recorded):
    with branchtrace.open(recorded) as t:
        assert sorted(t.calls_per_thread("work").values()) == [0, 50, 100, 150, 200]
        assert t.calls("work") == 500 and t.calls("main") <= 1
        assert t.calls("puts", tid=t.pid) == 1          # through puts@plt, into libc
        with pytest.raises(branchtrace.UnknownFunctionError, match="did you mean work"):
            t.calls("wrok")
        with pytest.raises(branchtrace.UnknownThreadError, match="no thread 1 "):
            t.calls("work", tid=1)
        with pytest.raises(branchtrace.UnknownThreadError):
            t.call_tree(1)
        with pytest.raises(branchtrace.NotInTraceError):
            t.coverage().lines("nosuch.c")
        with pytest.raises(LookupError):        # the errors are LookupErrors too
            list(t.iter_branches(tid=1))
        edges = t.hot_edges(3)
        assert len(edges) == 3 and edges[0].count >= edges[1].count >= edges[2].count
        assert {(e.source.function, e.target.function) for e in edges if e.count == 500} \
            >= {("worker", "work"), ("work", "worker")}
        per_thread = t.calls_per_thread("work")     # the file names threads as chunks come
        tree = t.call_tree(max(per_thread, key=lambda k: per_thread[k]))
        (work,) = tree.find("work")
        assert work.total == work.branches and work.line is not None
        assert tree.total == sum(n.branches for n in tree.walk())


def test_history_is_the_commands(recorded, tmp_path):
    with branchtrace.open(recorded) as t:
        # the thread that called work 100 times (the file names threads in the order their
        # chunks came, which differs from run to run)
        tid = next(k for k, n in t.calls_per_thread("work").items() if n == 100)
        text = t.history("calls", tid=tid, lines=True, insn_ranges=True)
        insns = t.history("insns", tid=tid, range=(5, 40), source=True)
        out = io.StringIO()
        t.write_history(out, function="work", tid=tid)
    r = cli("history", str(recorded), "--thread", str(tid), "--lines", "--insn-ranges")
    assert r.returncode == 0 and r.stdout == text
    r = cli("history", str(recorded), "--thread", str(tid), "--insns", "--range", "5,40",
            "--source")
    assert r.returncode == 0 and r.stdout == insns
    labels = [line.split("\t")[1].strip() for line in out.getvalue().splitlines()]
    assert labels == ["work"] * 100


@pytest.mark.parametrize("fmt", ["collapsed", "speedscope"])
def test_profile_is_the_commands(recorded, tmp_path, fmt):
    with branchtrace.open(recorded) as t:
        t.profile(str(tmp_path / "api.out"), fmt)
    r = cli("profile", str(recorded), "--format", fmt, "-o", str(tmp_path / "cli.out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "api.out").read_text() == (tmp_path / "cli.out").read_text()
    assert "work" in (tmp_path / "api.out").read_text()


def test_arrow_round_trips_through_duckdb_and_pandas(recorded):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    import pyarrow as pa

    with branchtrace.open(recorded) as t:
        branches = t.to_arrow(columns=["function", "line", "time"])
        df = t.to_pandas(columns=["function", "line"])
        whole = {tid: t.branches(tid) for tid in t.tids}
    assert branches.num_rows == len(df) == sum(len(b) for b in whole.values())
    for tid, b in whole.items():
        rows = branches.filter(pa.compute.equal(branches["tid"], tid))
        assert np.array_equal(rows["to_ip"].to_numpy(), b["to_ip"])
        assert np.array_equal(rows["seq"].to_numpy(), np.arange(len(b)))
    back = duckdb.sql("select * from branches order by tid, seq").arrow()
    back = back.read_all() if hasattr(back, "read_all") else back
    for name in ("tid", "seq", "from_ip", "to_ip", "from_line"):
        assert back[name].to_pylist() == branches.sort_by([("tid", "ascending"),
                                                         ("seq", "ascending")])[name].to_pylist()
    assert back["kind"].cast(pa.string()).to_pylist() == \
        branches.sort_by([("tid", "ascending"), ("seq", "ascending")])["kind"].cast(
            pa.string()).to_pylist()
    calls = duckdb.sql("select count(*) from branches where kind = 'call' "
                       "and to_function = 'work'").fetchall()
    assert calls == [(500,)]
    assert isinstance(df["kind"].dtype, pd.CategoricalDtype)
    assert set(df["kind"].cat.categories) >= {"call", "return", "cond"}
    assert (df["to_function"] == "work").sum() >= 500
    again = pa.Table.from_pandas(df, preserve_index=False)
    assert again["to_ip"].to_pylist() == branches["to_ip"].to_pylist()
    assert again["kind"].cast(pa.string()).to_pylist() == branches["kind"].cast(
        pa.string()).to_pylist()
    frame = duckdb.sql("select tid, count(*) n from df group by tid order by tid").df()
    assert frame["n"].tolist() == [len(whole[tid]) for tid in sorted(whole)]


def test_record_says_what_it_kept(build, tmp_path):
    need_backend("ptrace")
    exe, out = build("loop"), tmp_path / "loop.btrace"
    target = branchtrace.Target(argv=(str(exe), "300"))
    reader = branchtrace.record(target, branchtrace.RecordConfig(backend="ptrace",
                                                                 mode="stream"), output=out)
    assert isinstance(reader, branchtrace.TraceReader) and reader.path == out
    full = open_trace(out)
    assert np.array_equal(reader.branches(reader.pid), full.branches(full.pid))
    kept = branchtrace.record(target, branchtrace.RecordConfig(backend="ptrace"),
                              output=tmp_path / "k.btrace", keep=10)
    n = len(open_trace(tmp_path / "k.btrace").branches(kept.pid))
    assert len(kept.branches(kept.pid)) == 10
    (gap,) = [g for g in kept.gaps if g.reason == "not kept in memory"]
    assert (gap.index, gap.count) == (0, n - 10) and kept.lost[kept.pid] == n - 10
    assert any("k.btrace has them" in note for note in kept.notes)


def test_the_readme_api_section_runs(build, tmp_path, monkeypatch, capsys):
    """The README's Python API example, as written, in a directory holding ./loop."""
    need_backend("ptrace")
    text = (DOCS.parent / "README.md").read_text()
    section = text[text.index("## Python API"):]
    (code,) = BLOCK.findall(section[:section.index("\n## ", 5)])
    shutil.copy(build("loop"), tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    trace = scope["trace"]
    assert isinstance(trace, branchtrace.Trace) and not trace.gaps
    with branchtrace.open(tmp_path / "loop.btrace") as t:
        assert t.calls("work") == 1000 and t.lost == {t.pid: 0}
    assert "1000 [HotEdge(" in capsys.readouterr().out
