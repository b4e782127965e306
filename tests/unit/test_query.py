"""query/: the tables of `branchtrace sql` from built trace files, against rows written
out by hand; export to Parquet read back by DuckDB and pyarrow.

The symbolizer is a stub (functions by address range) so that every symbol column
has a known value; the compiled fixtures in tests/integration use the real one."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

duckdb = pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from branchtrace.errors import UsageError  # noqa: E402
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, ModuleMap  # noqa: E402
from branchtrace.query import addresses as addresses_module  # noqa: E402
from branchtrace.query import schema  # noqa: E402
from branchtrace.query.export import export, views_sql  # noqa: E402
from branchtrace.query.runs import open_runs, run_id  # noqa: E402
from branchtrace.query.session import Session, engine, error_line  # noqa: E402
from branchtrace.symbols import ResolvedArrays  # noqa: E402
from branchtrace.trace import Trace  # noqa: E402
from branchtrace.tracefile import save  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
BASE = 0x55d0_0000_0000
MAIN, WORK = BASE + 0x1000, BASE + 0x1100          # main: 0x100 bytes, work: 0x100 bytes
MODULE = ModuleMap("/nonexistent/prog", BASE, BASE + 0x4000, BASE)
C, R, J = BranchKind.CALL, BranchKind.RETURN, BranchKind.COND

# thread 100: the loop "main calls work, work returns, main loops" three times, with
# 5 records lost after its 4th branch; thread 101: one call and one return
T100 = [(MAIN + 0x10, WORK, C), (WORK + 0x20, MAIN + 0x15, R), (MAIN + 0x30, MAIN + 0x5, J)] * 3
T101 = [(MAIN + 0x10, WORK, C), (WORK + 0x20, MAIN + 0x15, R)]


class StubSymbolizer:
    """main and work by address range, file prog.c, line = offset // 16 + 1."""

    def __init__(self, modules: object, **kw: object) -> None:
        self.modules = (MODULE,)
        self.warnings: list[str] = []

    def resolve(self, a: np.ndarray) -> ResolvedArrays:
        a = np.asarray(a, np.uint64)
        main = (a >= MAIN) & (a < MAIN + 0x100)
        work = (a >= WORK) & (a < WORK + 0x100)
        known = main | work
        offset = np.where(main, a - np.uint64(MAIN), np.where(work, a - np.uint64(WORK), 0))
        return ResolvedArrays(
            address=a, module=np.where((a >= BASE) & (a < BASE + 0x4000), 0, -1).astype(np.int32),
            vaddr=a - np.uint64(BASE), function=np.where(main, 0, np.where(work, 1, -1))
            .astype(np.int32), offset=offset.astype(np.uint64),
            file=np.where(known, 0, -1).astype(np.int32),
            line=np.where(known, offset // 16 + 1, 0).astype(np.int32),
            module_paths=(MODULE.path,), function_names=("main", "work"),
            file_names=("/src/prog.c",))


def _array(rows: list[tuple[int, int, BranchKind]]) -> np.ndarray:
    out = np.zeros(len(rows), BRANCH_DTYPE)
    for i, (f, t, k) in enumerate(rows):
        out[i] = (f, t, int(k))
    return out


def make_file(path: Path, pid: int = 100) -> Path:
    trace = Trace(backend="ptrace", mode="stream", argv=("./prog", "a b"), pid=pid,
                  exit=ExitInfo("exited", code=0), modules=[MODULE],
                  threads={pid: _array(T100), pid + 1: _array(T101)},
                  gaps=[Gap(pid, 4, 5, "lost")], written={pid: 14, pid + 1: 2},
                  lost={pid: 5, pid + 1: 0}, start_time=1.0, end_time=2.0)
    save(trace, path)
    return path


def expected_branches(run: str, pid: int = 100) -> list[dict[str, object]]:
    """The rows of `branches`, by hand."""
    def side(ip: int) -> tuple[object, ...]:
        for name, start in (("main", MAIN), ("work", WORK)):
            if start <= ip < start + 0x100:
                return name, "prog", "/src/prog.c", (ip - start) // 16 + 1
        return None, None, None, None

    rows = []
    for tid, branches in ((pid, T100), (pid + 1, T101)):
        for seq, (f, t, k) in enumerate(branches):
            prev = branches[seq - 1][1] if seq > 0 and not (tid == pid and seq == 4) else None
            ff, fm, fl, fn = side(f)
            tf, tm, tl, tn = side(t)
            rows.append({"run": run, "pid": pid, "tid": tid, "seq": seq, "from_ip": f,
                         "to_ip": t, "kind": k.label, "block_start": prev,
                         "from_function": ff, "from_module": fm, "from_file": fl,
                         "from_line": fn, "to_function": tf, "to_module": tm, "to_file": tl,
                         "to_line": tn})
    return rows


@pytest.fixture(autouse=True)
def _stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addresses_module, "Symbolizer", StubSymbolizer)


def rows(session: Session, sql: str) -> list[dict[str, object]]:
    rel = session.query(sql)
    names = rel.columns
    return [dict(zip(names, r)) for r in rel.fetchall()]


def test_branches_are_the_written_rows(tmp_path: Path) -> None:
    with Session([str(make_file(tmp_path / "one.btrace"))]) as s:
        got = rows(s, "SELECT * FROM branches ORDER BY tid, seq")
        assert got == expected_branches("one")
        assert [c[0] for c in s.con.sql("DESCRIBE branches").fetchall()] == \
            [c.name for c in schema.BRANCHES]
        # a view scanned twice (a self-join) reads the file twice, correctly
        assert s.query("SELECT count(*) FROM branches a JOIN branches b "
                       "ON a.tid = b.tid AND a.seq + 1 = b.seq").fetchall() == [(8 + 1,)]


def test_derived_views(tmp_path: Path) -> None:
    with Session([str(make_file(tmp_path / "one.btrace"))]) as s:
        assert rows(s, "SELECT caller, callee, count FROM calls") == [
            {"caller": "main", "callee": "work", "count": 4}]
        assert rows(s, "SELECT function, branches, calls FROM functions ORDER BY function") == [
            {"function": "main", "branches": 3 + 3 + 1, "calls": 0},
            {"function": "work", "branches": 3 + 1, "calls": 4}]
        edges = rows(s, "SELECT from_ip, to_ip, kind, count, from_function, to_function "
                        "FROM edges ORDER BY count DESC, from_ip")
        assert edges == [
            {"from_ip": MAIN + 0x10, "to_ip": WORK, "kind": "call", "count": 4,
             "from_function": "main", "to_function": "work"},
            {"from_ip": WORK + 0x20, "to_ip": MAIN + 0x15, "kind": "return", "count": 4,
             "from_function": "work", "to_function": "main"},
            {"from_ip": MAIN + 0x30, "to_ip": MAIN + 0x5, "kind": "cond", "count": 3,
             "from_function": "main", "to_function": "main"}]
        # blocks: (previous to_ip, from_ip), none across the gap nor before the first
        blocks = rows(s, "SELECT start, last, count, function, line FROM blocks "
                         "ORDER BY start, last")
        assert blocks == [
            {"start": MAIN + 0x5, "last": MAIN + 0x10, "count": 2, "function": "main", "line": 1},
            {"start": MAIN + 0x15, "last": MAIN + 0x30, "count": 3, "function": "main",
             "line": 2},
            {"start": WORK, "last": WORK + 0x20, "count": 3, "function": "work", "line": 1}]
        assert rows(s, "SELECT run, pid, tid, records, written, lost FROM threads") == [
            {"run": "one", "pid": 100, "tid": 100, "records": 9, "written": 14, "lost": 5},
            {"run": "one", "pid": 100, "tid": 101, "records": 2, "written": 2, "lost": 0}]
        assert rows(s, "SELECT run, command, exit, exit_code FROM runs") == [
            {"run": "one", "command": "./prog 'a b'", "exit": "exited", "exit_code": 0}]
        assert rows(s, "SELECT pid, ppid FROM processes") == [{"pid": 100, "ppid": 0}]


def test_several_runs_and_their_ids(tmp_path: Path) -> None:
    a = make_file(tmp_path / "x.btrace", pid=100)
    (tmp_path / "d").mkdir()
    b = make_file(tmp_path / "d" / "x.btrace", pid=200)
    assert run_id("/a/b/my trace.btrace") == "my_trace"
    assert [r.id for r in open_runs([str(a), str(b)])] == ["x", "x-2"]
    with Session([str(a), str(b)]) as s:
        assert s.query("SELECT run, pid, count(*) FROM branches GROUP BY ALL ORDER BY run"
                       ).fetchall() == [("x", 100, 11), ("x-2", 200, 11)]


def test_a_bad_query_is_one_line(tmp_path: Path) -> None:
    with Session([str(make_file(tmp_path / "one.btrace"))]) as s:
        with pytest.raises(UsageError) as err:
            s.query("SELEC count(*) FROM branches")
        assert "\n" not in str(err.value) and "syntax error" in str(err.value)
        with pytest.raises(UsageError) as err:
            s.query("SELECT nosuch FROM branches")
        assert "\n" not in str(err.value) and "nosuch" in str(err.value)
    assert error_line(Exception("Parser Error: x\n\nLINE 1: SELEC\n       ^")) == \
        "Parser Error: x"


def test_without_duckdb_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(UsageError, match=re.escape("pip install 'branchtrace[sql]'")):
        engine()


def _hive(names: tuple[str, ...]) -> object:
    types = {"run": pa.string(), "tid": pa.int64()}
    return ds.partitioning(pa.schema([(n, types[n]) for n in names]), flavor="hive")


def test_export_two_runs_read_back_by_duckdb_and_pyarrow(tmp_path: Path) -> None:
    out = tmp_path / "out"
    warnings: list[str] = []
    a = make_file(tmp_path / "a.btrace", pid=100)
    b = make_file(tmp_path / "b.btrace", pid=200)
    assert export(open_runs([str(a)]), str(out), warnings) == 11
    assert export(open_runs([str(b)]), str(out), warnings) == 11      # a second command
    with pytest.raises(UsageError, match="already holds run a"):
        export(open_runs([str(a)]), str(out), warnings)
    assert not list(out.glob(".partial-*"))
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("branches/*/*/*")) == [
        "branches/run=a/tid=100/part-0.parquet", "branches/run=a/tid=101/part-0.parquet",
        "branches/run=b/tid=200/part-0.parquet", "branches/run=b/tid=201/part-0.parquet"]
    # DuckDB over the directory: the views of views.sql, the same queries as a session
    con = duckdb.connect()
    con.execute(f"SET file_search_path = '{out}'")
    con.execute((out / "views.sql").read_text())
    names = [c[0] for c in con.sql("DESCRIBE branches").fetchall()]
    assert names == [c.name for c in schema.BRANCHES]
    got = con.sql("SELECT * FROM branches WHERE run = 'a' ORDER BY tid, seq")
    assert [dict(zip(got.columns, r)) for r in got.fetchall()] == expected_branches("a")
    with Session([str(a), str(b)]) as s:
        for view in schema.DERIVED:
            q = f"SELECT * FROM {view} ORDER BY ALL"
            assert con.sql(q).fetchall() == s.query(q).fetchall(), view
    # pyarrow reads every table with the documented schema (partition columns last)
    for name, columns in schema.TABLES.items():
        parts = schema.PARTITIONS[name]
        table = pq.read_table(out / name, partitioning=_hive(parts))
        want = schema.arrow_schema(columns, without=parts)
        for p in parts:
            want = want.append(pa.field(p, schema.arrow_type(
                next(c.type for c in columns if c.name == p))))
        assert table.schema.equals(want), name
    assert pq.read_table(out / "branches", partitioning=_hive(("run", "tid"))).num_rows == 22


def test_views_sql_names_every_table() -> None:
    text = views_sql()
    for name in [*schema.TABLES, *schema.DERIVED]:
        assert f"CREATE OR REPLACE VIEW {name} AS" in text


def test_docs_list_every_column() -> None:
    """docs/sql.md documents each table's columns, in order, in its table of columns."""
    doc = DOCS.read_text()
    for name, columns in [*((n, tuple(c.name for c in cs)) for n, cs in schema.TABLES.items()),
                          *schema.DERIVED_COLUMNS.items()]:
        section = re.search(rf"^### `{name}`\n(.*?)(?=^#)", doc, re.S | re.M)
        assert section, name
        listed = re.findall(r"^\| `(\w+)` \|", section.group(1), re.M)
        assert tuple(listed) == columns, name


def test_prefetch_keeps_order_hands_errors_over_and_stops_when_closed() -> None:
    import threading

    from branchtrace.query.prefetch import prefetch

    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("broken chunk")

    got: list[int] = []
    with pytest.raises(ValueError, match="broken chunk"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1]
    made: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            made.append(n)
            yield n
            n += 1

    it = prefetch(endless(), depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "branchtrace-prefetch"]
    assert len(made) <= 5 + 2 + 1          # never more than depth ahead
