"""A plain-text summary of line coverage per source file, like ``coverage report``.

One row per source file (the lines of :mod:`.lines`, the same as lcov's ``DA``): the
lines with code, how many of them never ran, and the percentage that ran; then a
``TOTAL`` row. With ``show_missing``, a last column lists the lines that never ran as
ranges (``14-15, 51-52, 60``): a range runs over consecutive lines *with code*, so
lines without code inside it (comments, blank lines) do not break it, as in
coverage.py. Percentages have one decimal, and are never rounded up to 100.0% or down
to 0.0% when some but not all lines ran::

    Name          Lines    Miss   Cover  Missing
    --------------------------------------------
    /src/prog.c      40       3   92.5%  14-15, 60
    --------------------------------------------
    TOTAL            40       3   92.5%
"""

from __future__ import annotations

from typing import IO

from .lines import LineCoverage, SourceFile


def cover_percent(hit: int, total: int) -> str:
    """``hit`` of ``total`` as a percentage with one decimal ("-" when ``total`` is 0)."""
    if total == 0:
        return "-"
    text = f"{100.0 * hit / total:.1f}"
    if hit < total and text == "100.0":
        return "99.9"
    if hit > 0 and text == "0.0":
        return "0.1"
    return text


def missing_ranges(source: SourceFile) -> str:
    """The lines of ``source`` that never ran, as ranges over its lines with code."""
    parts: list[str] = []
    run: list[int] = []
    for line, hits in sorted(source.lines.items()):
        if hits == 0:
            run.append(line)
            continue
        if run:
            parts.append(_span(run))
            run = []
    if run:
        parts.append(_span(run))
    return ", ".join(parts)


def _span(lines: list[int]) -> str:
    return str(lines[0]) if len(lines) == 1 else f"{lines[0]}-{lines[-1]}"


def render(lines: LineCoverage, out: IO[str], *, show_missing: bool = False) -> None:
    """Write the summary of ``lines`` to ``out``."""
    header = ["Name", "Lines", "Miss", "Cover"]
    rows = [[f.path, str(len(f.lines)), str(len(f.lines) - f.lines_hit),
             cover_percent(f.lines_hit, len(f.lines)) + "%"] for f in lines.files]
    hit, total = lines.totals()
    cover = cover_percent(hit, total)
    total_row = ["TOTAL", str(total), str(total - hit), cover + ("%" if total else "")]
    if show_missing:
        header.append("Missing")
        for row, f in zip(rows, lines.files):
            row.append(missing_ranges(f))
        total_row.append("")
    name_width = max(len(r[0]) for r in [header, *rows, total_row])
    widths = [max(len(r[i]) for r in [header, *rows, total_row]) for i in range(1, 4)]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(name_width)]
        cells += [cell.rjust(max(width, 6)) for cell, width in zip(row[1:4], widths)]
        if show_missing:
            cells.append(row[4])
        return "  ".join(cells).rstrip() + "\n"

    rule = "-" * len(line(header).rstrip()) + "\n"
    out.write(line(header))
    out.write(rule)
    for row in rows:
        out.write(line(row))
    out.write(rule)
    out.write(line(total_row))
