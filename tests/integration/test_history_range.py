"""history --range FROM,TO (GDB's ranges) and --function NAME: the same lines as the
whole history, filtered, on a new ptrace recording of fib."""

from __future__ import annotations

import pytest
from conftest import cli

pytestmark = pytest.mark.backend("ptrace")


@pytest.fixture(scope="module")
def fib_trace(build, tmp_path_factory):
    out = tmp_path_factory.mktemp("range") / "fib.btrace"
    r = cli("run", "--backend", "ptrace", "-o", str(out), "--", str(build("fib")))
    assert r.returncode == 0, r.stderr
    return str(out)


def numbered(text: str) -> dict[int, str]:
    return {int(line.split("\t", 1)[0]): line for line in text.splitlines()}


def test_ranges_and_functions_filter_the_whole_history(fib_trace):
    whole = numbered(cli("history", fib_trace, "--calls").stdout)
    assert len(whole) == 57
    got = cli("history", fib_trace, "--calls", "--range", "3,6").stdout.splitlines()
    assert got == [whole[n] for n in range(3, 7)]
    assert cli("history", fib_trace, "--range", "55").stdout.splitlines() == [whole[55]]
    assert cli("history", fib_trace, "--range", "56,").stdout.splitlines() == \
        [whole[56], whole[57]]
    square = cli("history", fib_trace, "--function", "square", "--no-indent").stdout
    assert [line.split("\t")[1] for line in square.splitlines()] == ["square"] * 3
    insns = numbered(cli("history", fib_trace, "--insns").stdout)
    got = cli("history", fib_trace, "--insns", "--range", "10,14").stdout.splitlines()
    assert got == [insns[n] for n in range(10, 15)]


@pytest.mark.parametrize("args, words", [
    (["--range", "5,2"], "1 <= FROM <= TO"),
    (["--range", "x"], "numbers from 1"),
    (["--range", "1,2", "--last", "3"], "give one"),
    (["--insns", "--function", "main"], "--function goes with --calls"),
])
def test_bad_ranges_are_one_line(fib_trace, args, words):
    r = cli("history", fib_trace, *args)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.splitlines()) == 1
