"""Several trace files at once, as the runs of a test suite: `stats`, `sql` and `export`
over two recorded runs of loop.c (and over a directory holding them); the counts of
both are the sums of each run's, and every bad argument is a one-line error."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli

pytestmark = pytest.mark.backend("ptrace")

RUNS = {"a": 200, "b": 300}        # run id: how many times main calls work()


@pytest.fixture(scope="module")
def runs(build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a.btrace and b.btrace (two runs of loop.c), and a note."""
    root = tmp_path_factory.mktemp("runs")
    for name, n in RUNS.items():
        r = cli("run", "--backend", "ptrace", "-o", str(root / f"{name}.btrace"), "--",
                str(build("loop")), str(n))
        assert r.returncode == 0, r.stderr
    (root / "README").write_text("not a trace, and not named like one\n")
    (root / "sub").mkdir()
    shutil.copy(root / "a.btrace", root / "sub" / "c.btrace")     # not looked into
    return root


def stats(*args: str) -> dict:
    r = cli("stats", *args, "--format", "json", "--top", "1000")
    assert r.returncode == 0, r.stderr
    doc: dict = json.loads(r.stdout)
    return doc


def work(doc: dict) -> dict:
    return next(f for f in doc["functions"] if f["name"] == "work")


def test_stats_of_two_runs_add_their_counts(runs: Path) -> None:
    a, b = stats(str(runs / "a.btrace")), stats(str(runs / "b.btrace"))
    both = stats(str(runs / "a.btrace"), str(runs / "b.btrace"))
    assert both["records"] == a["records"] + b["records"] > 0
    assert both["kinds"] == {k: a["kinds"].get(k, 0) + b["kinds"].get(k, 0)
                             for k in {**a["kinds"], **b["kinds"]}}
    assert work(both)["calls"] == sum(RUNS.values())
    assert work(both)["branches"] == work(a)["branches"] + work(b)["branches"]
    assert [(r["run"], r["records"]) for r in both["runs"]] == [
        ("a", a["records"]), ("b", b["records"])]
    assert [(p["run"], p["pid"], p["branches"]) for p in both["processes"]] == [
        ("a", a["pid"], a["records"]), ("b", b["pid"], b["records"])]
    text = cli("stats", str(runs / "a.btrace"), str(runs / "b.btrace")).stdout
    assert text.startswith("runs:      2 trace files")
    assert f"records:   {both['records']} branches in 2 thread(s) of 2 process(es) in 2 runs" \
        in text


def test_a_directory_is_its_trace_files_sorted(runs: Path) -> None:
    given = stats(str(runs / "a.btrace"), str(runs / "b.btrace"))
    assert stats(str(runs)) == given
    one = runs.parent / f"{runs.name}-one"
    one.mkdir(exist_ok=True)
    shutil.copy(runs / "b.btrace", one / "b.btrace")
    # a directory of one file is that file: the output of one file, unchanged
    assert cli("stats", str(one)).stdout == cli("stats", str(runs / "b.btrace")).stdout


def test_sql_over_two_runs_counts_what_stats_counts(runs: Path) -> None:
    pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    both = stats(str(runs))
    for args in ([str(runs / "a.btrace"), str(runs / "b.btrace")], [str(runs)]):
        r = cli("sql", *args, "SELECT run, count(*) AS n FROM branches GROUP BY run "
                              "ORDER BY run", "--format", "json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert rows == [{"run": x["run"], "n": x["records"]} for x in both["runs"]]
        assert sum(row["n"] for row in rows) == both["records"]


def test_export_of_a_directory(runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    r = cli("export", str(runs), "-o", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "pq" / "branches").iterdir()) == ["run=a", "run=b"]
    assert f"exported {stats(str(runs))['records']} branches of 2 run(s)" in r.stderr


def one_line(r) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["stats", "sql", "export"])
def test_bad_arguments_are_one_line(runs: Path, tmp_path: Path, command: str) -> None:
    if command != "stats":
        pytest.importorskip("duckdb")
        pytest.importorskip("pyarrow")
    tail = {"stats": [], "sql": ["SELECT 1"], "export": ["-o", str(tmp_path / "out")]}[command]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x\n")
    good = str(runs / "a.btrace")
    for bad, words in ((str(tmp_path / "missing.btrace"), "missing.btrace: no such file"),
                       (str(runs / "README"), "README: not a branchtrace trace file"),
                       (str(empty), f"{empty}: a directory with no trace file")):
        assert words in one_line(cli(command, good, bad, *tail)), (command, bad)
    assert not (tmp_path / "out").exists()
    if command != "export":
        out = ["-o", good] if command == "stats" else [*tail, "-o", good]
        assert "is the trace file being read" in one_line(cli(command, str(runs), *out))
    else:
        assert "is the directory of trace files being read" in one_line(
            cli(command, str(runs), "-o", str(runs)))
    if command == "stats":
        assert "--pid takes one trace file, not 2" in one_line(
            cli("stats", str(runs), "--pid", "1"))


def test_profile_collapsed_of_several_runs_adds_the_same_stacks(runs):
    def folded(*args: str) -> dict[str, int]:
        r = cli("profile", *args, "--format", "collapsed")
        assert r.returncode == 0, r.stderr
        return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
                for line in r.stdout.splitlines()}
    a, b = folded(str(runs / "a.btrace")), folded(str(runs / "b.btrace"))
    both = folded(str(runs))
    assert both == {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}
    assert any(k.endswith("work") for k in both)


def test_profile_timelines_of_several_runs_hold_each_run(runs):
    """perfetto: one timeline with every run's events; speedscope: every run's profiles,
    each with its own frames."""
    def doc(fmt: str, *args: str) -> dict:
        r = cli("profile", *args, "--format", fmt)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def events(d: dict) -> Counter:
        return Counter(json.dumps(e, sort_keys=True) for e in d["traceEvents"])

    a, b = (doc("perfetto", str(runs / f"{x}.btrace")) for x in "ab")
    both = doc("perfetto", str(runs))
    assert events(both) == events(a) + events(b)
    assert sum(e["ph"] == "X" for e in both["traceEvents"]) > 10

    def profiles(d: dict) -> list[list[tuple[str, str, float]]]:
        names = [f["name"] for f in d["shared"]["frames"]]
        return [[(e["type"], names[e["frame"]], e["at"]) for e in p["events"]]
                for p in d["profiles"]]

    a, b = (doc("speedscope", str(runs / f"{x}.btrace")) for x in "ab")
    both = doc("speedscope", str(runs))
    assert profiles(both) == profiles(a) + profiles(b)
    assert len(both["shared"]["frames"]) == len(a["shared"]["frames"]) + len(b["shared"]["frames"])
    assert all(" pid " in p["name"] for p in both["profiles"])
