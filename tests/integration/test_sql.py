"""`branchtrace sql` and `branchtrace export` on compiled fixtures recorded by both
backends: counts equal `stats`', call counts equal the fixture's arithmetic, Parquet of
two runs read back by DuckDB and pyarrow, one-line errors, and peak memory that does
not grow with the trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS, FIXTURES, cli, marker_line

duckdb = pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from branchtrace.query import schema  # noqa: E402

N = 300          # loop.c: main calls work() N times


def record(build, backend: str, path: Path, n: int = N, mode: str = "ring") -> Path:
    r = cli("run", "--backend", backend, "--mode", mode, "-o", str(path), "--",
            str(build("loop")), str(n))
    assert r.returncode == 0, r.stderr
    return path


def sql(*args: str) -> list[dict[str, object]]:
    r = cli("sql", *args, "--format", "json")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, object]] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_counts_equal_stats(build, tmp_path: Path, backend: str) -> None:
    trace = record(build, backend, tmp_path / f"{backend}.btrace")
    stats = json.loads(cli("stats", str(trace), "--format", "json").stdout)
    kinds = {r["kind"]: r["n"] for r in sql(str(trace), "SELECT kind, count(*) AS n "
                                                         "FROM branches GROUP BY kind")}
    assert kinds == stats["kinds"]
    assert sql(str(trace), "SELECT count(*) AS n FROM branches") == [{"n": stats["records"]}]
    calls = sql(str(trace), "SELECT count FROM calls WHERE caller = 'main' AND callee = 'work'")
    assert calls == [{"count": N}]
    work = sql(str(trace), "SELECT branches, calls FROM functions WHERE function = 'work'")
    assert work[0]["calls"] == N and work[0]["branches"] >= 2 * N   # its jump and its ret
    # the symbols of a branch: work's return goes back into main, in loop.c
    ret = sql(str(trace), "SELECT DISTINCT to_function, to_file, from_line FROM branches "
                          "WHERE from_function = 'work' AND kind = 'return'")
    assert len(ret) == 1 and ret[0]["to_function"] == "main"
    assert str(ret[0]["to_file"]).endswith("loop.c")
    assert ret[0]["from_line"] == marker_line("loop.c", "return sink;") + 1   # work's }
    # the branches before a given one, by seq
    before = sql(str(trace), "WITH r AS (SELECT tid, seq FROM branches WHERE kind = 'return' "
                             "AND from_function = 'work' ORDER BY seq LIMIT 1) "
                             "SELECT b.kind FROM branches b, r WHERE b.tid = r.tid "
                             "AND b.seq < r.seq ORDER BY b.seq DESC LIMIT 1")
    assert before and before[0]["kind"] in ("cond", "jump")


def test_export_of_two_runs(build, tmp_path: Path) -> None:
    runs = [record(build, b, tmp_path / f"{b}.btrace") for b in ALL_BACKENDS]
    out = tmp_path / "parquet"
    for trace in runs:          # one command per run, into one directory
        r = cli("export", str(trace), "--format", "parquet", "-o", str(out))
        assert r.returncode == 0, r.stderr
    records = {t.stem: json.loads(cli("stats", str(t), "--format", "json").stdout)["records"]
               for t in runs}
    con = duckdb.connect()
    con.execute(f"SET file_search_path = '{out}'")
    con.execute((out / "views.sql").read_text())
    assert dict(con.sql("SELECT run, count(*) FROM branches GROUP BY run").fetchall()) == records
    assert sorted(con.sql("SELECT run, count FROM calls WHERE caller = 'main' "
                          "AND callee = 'work'").fetchall()) == sorted((r, N) for r in records)
    table = pq.read_table(out / "branches", partitioning=ds.partitioning(
        pa.schema([("run", pa.string()), ("tid", pa.int64())]), flavor="hive"))
    assert table.num_rows == sum(records.values())
    assert [f.name for f in table.schema] == [c.name for c in schema.BRANCHES
                                              if c.name not in ("run", "tid")] + ["run", "tid"]
    assert table.schema.field("from_ip").type == pa.int64()
    assert table.schema.field("to_function").type == pa.string()
    # exporting a run again is refused in one line, and leaves the directory as it was
    r = cli("export", str(runs[0]), "-o", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "already holds run" in r.stderr


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_errors_are_one_line(tmp_path: Path) -> None:
    golden = Path(__file__).resolve().parents[1] / "golden" / "fib.btrace"
    assert "syntax error" in one_line(cli("sql", str(golden), "SELEC 1"))
    assert "nosuch" in one_line(cli("sql", str(golden), "SELECT nosuch FROM branches"))
    assert "no such file" in one_line(cli("sql", "/nonexistent.btrace", "SELECT 1"))
    assert "not a branchtrace trace file" in one_line(
        cli("sql", str(FIXTURES / "fib.c"), "SELECT 1"))
    assert "then the query" in one_line(cli("sql", str(golden)))
    assert "no such file" in one_line(cli("export", "/nonexistent.btrace", "-o",
                                          str(tmp_path / "x")))
    r = cli("sql", str(golden), "SELECT count(*) AS n FROM branches", "--format", "parquet",
            "-o", str(tmp_path / "n.parquet"))
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "n.parquet").column("n").to_pylist()[0] > 0
    r = cli("sql", str(golden), "SELECT kind FROM branches LIMIT 2", "--format", "csv")
    assert r.stdout.splitlines()[0] == '"kind"' and len(r.stdout.splitlines()) == 3


def peak_rss_kb(*args: str) -> int:
    """Peak RSS of `branchtrace ARGS`, run in a fresh interpreter's child."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run([sys.executable, '-m', 'branchtrace', *sys.argv[1:]], "
            "stdout=subprocess.DEVNULL); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    assert out[0] == "0"
    return int(out[1])


@pytest.mark.backend("stalker")
def test_memory_does_not_grow_with_the_trace(build, tmp_path: Path) -> None:
    small = record(build, "stalker", tmp_path / "small.btrace", 300_000, "stream")
    big = record(build, "stalker", tmp_path / "big.btrace", 3_000_000, "stream")
    query = "SELECT count(*) FROM branches"
    n_small = int(cli("sql", str(small), query, "--format", "csv").stdout.split()[1])
    n_big = int(cli("sql", str(big), query, "--format", "csv").stdout.split()[1])
    assert n_big >= 9 * n_small > 0
    rss_small, rss_big = peak_rss_kb("sql", str(small), query), peak_rss_kb("sql", str(big), query)
    # 10x the branches (12M, 200 MB of decoded branches) cost no more than a little
    assert rss_big < rss_small + 64 * 1024, (rss_small, rss_big)


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "fib.btrace"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Files of every bad kind, and the words their one-line error has."""
    from branchtrace.tracefile.format import PREAMBLE, VERSION

    root = tmp_path_factory.mktemp("sqlbad")
    data = GOLDEN.read_bytes()
    magic, version, reserved = PREAMBLE.unpack_from(data)
    (root / "adir").mkdir()
    (root / "empty.btrace").write_bytes(b"")
    (root / "text.btrace").write_text("this is not a trace\n" * 20)
    (root / "newer.btrace").write_bytes(PREAMBLE.pack(magic, VERSION + 1, reserved)
                                        + data[PREAMBLE.size:])
    (root / "cut.btrace").write_bytes(data[:10])
    return {"missing": (root / "no-such.btrace", "no such file"),
            "directory": (root / "adir", "directory"), "empty": (root / "empty.btrace", "empty"),
            "text": (root / "text.btrace", "not a branchtrace trace"),
            "newer": (root / "newer.btrace", "newer"), "cut": (root / "cut.btrace", "truncated")}


@pytest.mark.parametrize("which", ["missing", "directory", "empty", "text", "newer", "cut"])
@pytest.mark.parametrize("command", ["sql", "export"])
def test_bad_files_are_one_line(bad_files, capfd, tmp_path: Path, command: str,
                                which: str) -> None:
    from branchtrace.cli import main as cli_main

    path, words = bad_files[which]
    args = ([command, str(GOLDEN), str(path), "SELECT 1"] if command == "sql"
            else [command, str(GOLDEN), str(path), "-o", str(tmp_path / "out")])
    code = cli_main(args)
    err = capfd.readouterr().err
    assert code != 0 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0].lower(), err
    assert not (tmp_path / "out" / "branches").exists()     # nothing half exported


def test_bad_options_are_one_line(capfd, tmp_path: Path) -> None:
    from branchtrace.cli import main as cli_main

    for args, words in ((["sql", str(GOLDEN), "SELECT 1", "--memory-limit", "lots"], "lots"),
                        (["sql", str(GOLDEN), "SELECT 1", "--format", "xml"], "xml"),
                        (["sql", str(GOLDEN), "SELECT 1", "-o", str(GOLDEN)], "being read"),
                        (["export", str(GOLDEN), "-o", str(GOLDEN)], "not a directory")):
        try:
            code = cli_main(args)
        except SystemExit as exc:       # argparse
            code = int(exc.code or 0)
        err = capfd.readouterr().err
        assert code != 0 and "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, err)
