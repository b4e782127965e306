"""The {format: reporter} tables the CLI looks formats up in."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from test_coverage import BASE, LOOP_3, branches, cover
from test_coverage import make_trace as make_coverage_trace
from test_reporters_profile import sample

from branchtrace.analysis.coverage import BLOCK_DTYPE, EDGE_DTYPE, Coverage
from branchtrace.cli import build_parser
from branchtrace.model import ModuleMap
from branchtrace.reporters import collapsed, coverage_json, drcov, lcov, perfetto, speedscope
from branchtrace.reporters.base import Options
from branchtrace.reporters.table import COVERAGE_REPORTERS, TRACE_REPORTERS

#: What each command offers, as its help text documents it; drcov alone is binary.
PROFILE_FORMATS = ("perfetto", "speedscope", "collapsed")
COVERAGE_FORMATS = ("drcov", "lcov", "json", "text")
BINARY = {"drcov"}


def format_choices(command: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    (fmt,) = [a for a in sub.choices[command]._actions if a.dest == "format"]
    assert fmt.choices is not None
    return tuple(fmt.choices)


def test_every_format_the_cli_offers_has_a_reporter() -> None:
    assert format_choices("profile") == PROFILE_FORMATS == tuple(TRACE_REPORTERS)
    assert format_choices("coverage") == COVERAGE_FORMATS == tuple(COVERAGE_REPORTERS)
    for table in (TRACE_REPORTERS, COVERAGE_REPORTERS):
        for name, reporter in table.items():
            assert reporter.name == name
            assert reporter.binary == (name in BINARY)
            assert reporter.extension.startswith(".") and len(reporter.extension) > 1


def write(reporter, data, options=Options()) -> tuple[bytes | str, list[str]]:
    out: io.BytesIO | io.StringIO = io.BytesIO() if reporter.binary else io.StringIO()
    warnings = reporter.render(data, out, options)
    return out.getvalue(), warnings


def test_profile_formats_write_what_their_module_writes() -> None:
    trace = sample()
    for name, module in (("perfetto", perfetto), ("speedscope", speedscope),
                         ("collapsed", collapsed)):
        expected = io.StringIO()
        module.render(trace, expected)
        assert write(TRACE_REPORTERS[name], trace) == (expected.getvalue(), [])
    # the thread option reaches the reporter
    with pytest.raises(Exception, match="no thread 99"):
        write(TRACE_REPORTERS["collapsed"], trace, Options(tid=99))


def test_coverage_formats_write_what_their_module_writes() -> None:
    cov = cover(make_coverage_trace({1: branches(*LOOP_3)}))
    expected_bin = io.BytesIO()
    drcov.render(cov, expected_bin)
    assert write(COVERAGE_REPORTERS["drcov"], cov) == (expected_bin.getvalue(), [])
    expected = io.StringIO()
    coverage_json.render(cov, expected)
    assert write(COVERAGE_REPORTERS["json"], cov) == (expected.getvalue(), [])
    expected = io.StringIO()
    lcov.render(cov, expected, test_name="t1")
    text, warnings = write(COVERAGE_REPORTERS["lcov"], cov, Options(test_name="t1"))
    assert text == expected.getvalue()
    # /nonexistent/prog has no line table
    assert warnings == ["no source lines: the code that ran has no DWARF line information "
                        "(build with -g)"]


@pytest.mark.parametrize("name", TRACE_REPORTERS)
def test_a_text_profile_format_cannot_write_bytes(name: str) -> None:
    with pytest.raises(TypeError):
        TRACE_REPORTERS[name].render(sample(), io.BytesIO(), Options())


def test_binary_and_text_coverage_formats_need_their_stream() -> None:
    cov = cover(make_coverage_trace({1: branches(*LOOP_3)}))
    with pytest.raises(TypeError):
        COVERAGE_REPORTERS["drcov"].render(cov, io.StringIO(), Options())
    with pytest.raises(TypeError):   # (lcov writes nothing here: no line tables)
        COVERAGE_REPORTERS["json"].render(cov, io.BytesIO(), Options())


def test_drcov_warns_about_the_blocks_it_leaves_out() -> None:
    blocks = np.zeros(2, dtype=BLOCK_DTYPE)
    blocks[0] = (BASE + 0x10, BASE + 0x20, 1, 0)
    blocks[1] = (0x9000_0000, 0x9000_0010, 1, -1)
    cov = Coverage(modules=(ModuleMap(path="/m", start=BASE, end=BASE + 0x1000, bias=0),),
                   blocks=blocks, edges=np.zeros(0, dtype=EDGE_DTYPE), branches=0, runs=2,
                   dropped_runs=0, unknown_lengths=0)
    _, warnings = write(COVERAGE_REPORTERS["drcov"], cov)
    assert warnings == ["1 executed block(s) lie in no module: left out of the drcov file"]
