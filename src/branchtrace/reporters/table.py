"""The formats the commands offer: ``{format name: reporter}``, one table per kind of input.

``branchtrace profile --format F`` looks F up in :data:`TRACE_REPORTERS`, ``branchtrace
coverage --format F`` in :data:`COVERAGE_REPORTERS`; the ``--format`` choices are the
tables' keys, in order. A new output format is a module with its ``render`` plus one
row here. Each reporter module is imported when its report is written, so that looking
at the table costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Generic

from .base import D, Options, Reporter

if TYPE_CHECKING:
    from ..analysis.coverage import Coverage
    from .lines import LineCoverage
    from ..trace import Trace


@dataclass(frozen=True, slots=True)
class Format(Generic[D]):
    """A :class:`~.base.Reporter` made of its description and a render function."""

    name: str
    binary: bool
    extension: str
    write: Callable[[D, IO[Any], Options], list[str]]

    def render(self, data: D, out: IO[Any], options: Options) -> list[str]:
        return self.write(data, out, options)


def _perfetto(trace: Trace, out: IO[Any], options: Options) -> list[str]:
    from . import perfetto

    perfetto.render(trace, out, tid=options.tid)
    return []


def _speedscope(trace: Trace, out: IO[Any], options: Options) -> list[str]:
    from . import speedscope

    speedscope.render(trace, out, tid=options.tid)
    return []


def _collapsed(trace: Trace, out: IO[Any], options: Options) -> list[str]:
    from . import collapsed

    collapsed.render(trace, out, tid=options.tid)
    return []


def _drcov(cov: Coverage, out: IO[Any], options: Options) -> list[str]:
    from . import drcov

    left_out = drcov.render(cov, out)
    if left_out:
        return [f"{left_out} executed block(s) lie in no module: left out of the drcov file"]
    return []


def _lines(cov: Coverage, options: Options) -> tuple[LineCoverage, list[str]]:
    """The line coverage the lcov and text reports show, and warnings about it."""
    from .lines import PathFilter, line_coverage

    lines = line_coverage(cov, all_sources=options.all_sources,
                          paths=PathFilter(options.include, options.omit))
    warnings = []
    if lines.missing_sources:
        warnings.append(f"{len(lines.missing_sources)} source file(s) not on disk left out "
                        f"(e.g. {lines.missing_sources[0]}); --all-sources keeps them")
    if not lines.files:
        if lines.filtered_out:
            warnings.append(f"no source lines: --include/--omit left out all of the "
                            f"{lines.filtered_out} source file(s) that ran")
        else:
            warnings.append("no source lines: the code that ran has no DWARF line "
                            "information (build with -g)")
    return lines, warnings


def _lcov(cov: Coverage, out: IO[Any], options: Options) -> list[str]:
    from . import lcov

    lines, warnings = _lines(cov, options)
    lcov.render(cov, out, test_name=options.test_name, lines=lines)
    return warnings


def _text(cov: Coverage, out: IO[Any], options: Options) -> list[str]:
    from . import coverage_text

    lines, warnings = _lines(cov, options)
    coverage_text.render(lines, out, show_missing=options.show_missing)
    return warnings


def _coverage_json(cov: Coverage, out: IO[Any], options: Options) -> list[str]:
    from . import coverage_json

    coverage_json.render(cov, out)
    return []


def _table(*formats: Reporter[D]) -> dict[str, Reporter[D]]:
    return {f.name: f for f in formats}


#: ``branchtrace profile``: call stacks rebuilt from a trace.
TRACE_REPORTERS: dict[str, Reporter[Trace]] = _table(
    Format("perfetto", False, ".json", _perfetto),
    Format("speedscope", False, ".speedscope.json", _speedscope),
    Format("collapsed", False, ".folded", _collapsed),
)

#: ``branchtrace coverage``: the basic blocks and edges that ran.
COVERAGE_REPORTERS: dict[str, Reporter[Coverage]] = _table(
    Format("drcov", True, ".drcov", _drcov),
    Format("lcov", False, ".info", _lcov),
    Format("json", False, ".json", _coverage_json),
    Format("text", False, ".txt", _text),
)
