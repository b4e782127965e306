"""Line coverage in lcov's tracefile format (``genhtml`` and the coverage services read it).

Which source lines have code, and which of them ran, come from the DWARF line tables
of the modules that ran: a line has code when some line-table row of it covers at least
one byte of code; it ran when one of those bytes lies in an executed block (see
:mod:`branchtrace.analysis.coverage`). Its hit count is the most times any one of its
instructions ran. Functions (``FN``/``FNDA``) are the symbols whose first address has a
line in the file; their count is how often their first instruction ran.

Where this differs from ``gcov`` (which counts from the compiler's own flow graph, not
from DWARF):

* gcc's line table puts a function's prologue on the line of its opening brace, gcov on
  the line of the function's name; when the two differ both lines are right about
  different things, and this report follows DWARF.
* gcc's line table puts the epilogue on the closing brace; gcov folds it into the last
  statement and does not list the brace. The brace's instructions did run: it is listed.
* Lines without instructions (declarations without initializers, ``else``, labels)
  are in neither report.

The output of one report is deterministic: files sorted by path, lines by number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Callable

import numpy as np

from ..analysis.coverage import Coverage
from ..model import ModuleMap
from ..symbols import ElfImage, FunctionTable, LineTable, line_table_for
from ..symbols.images import module_image


@dataclass
class SourceFile:
    """The line coverage of one source file."""

    path: str
    lines: dict[int, int] = field(default_factory=dict)            # line -> hits
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (line, hits)

    @property
    def lines_hit(self) -> int:
        return sum(1 for h in self.lines.values() if h > 0)


@dataclass
class LineCoverage:
    files: list[SourceFile]
    #: Modules that ran but have no line table (their code is in no source file here).
    modules_without_lines: list[str]
    #: Source files left out because they are not on disk (``all_sources=False``).
    missing_sources: list[str] = field(default_factory=list)


def line_coverage(cov: Coverage, *, all_sources: bool = False,
                  image_of: Callable[[ModuleMap], ElfImage | None] | None = None
                  ) -> LineCoverage:
    """Per source file: the lines with code and their hit counts, and the functions.

    Every source file of every module that ran is included, except (unless
    ``all_sources``) files that are not on disk: ``genhtml`` stops at the first source
    it cannot read, and a library's debug information names the files of its build
    tree (``elf/dl-load.c``). ``image_of`` gives a module's ELF image (its line and
    function tables); by default :func:`~branchtrace.symbols.images.module_image`'s.
    """
    files: dict[str, SourceFile] = {}
    without: list[str] = []
    ran = np.unique(cov.blocks["module"])
    for m in ran[ran >= 0].tolist():
        module = cov.modules[m]
        image = module_image(module).image if image_of is None else image_of(module)
        table = line_table_for(image) if image is not None else None
        if image is None or table is None or len(table) == 0:
            without.append(module.path)
            continue
        for source in module_lines(table, image.functions, cov.module_blocks(m),
                                   module.bias).values():
            merged = files.setdefault(source.path, SourceFile(source.path))
            for line, hits in source.lines.items():
                merged.lines[line] = max(merged.lines.get(line, 0), hits)
            for name, (line, hits) in source.functions.items():
                old = merged.functions.get(name)
                merged.functions[name] = (line, max(hits, old[1] if old else 0))
    missing = set() if all_sources else {p for p in files if not os.path.isfile(p)}
    kept = [f for p, f in sorted(files.items()) if p not in missing]
    return LineCoverage(kept, without, sorted(missing))


def module_lines(table: LineTable, functions: FunctionTable | None, blocks: np.ndarray,
                 bias: int) -> dict[str, SourceFile]:
    """The line coverage of one module: its line table and function table (file
    addresses), its executed blocks (:data:`BLOCK_DTYPE`, run-time addresses, sorted)
    and its bias (run-time minus file addresses)."""
    ubias = np.uint64(bias % (1 << 64))
    start = blocks["start"] - ubias
    end = blocks["end"] - ubias
    row_hits = _row_hits(table.address, start, end, blocks["hits"])
    row_end = np.append(table.address[1:], table.address[-1:])
    has_code = (table.file >= 0) & (table.line > 0) & (row_end > table.address)
    fidx = table.file[has_code]
    lines = table.line[has_code]
    hits = row_hits[has_code]
    order = np.lexsort((lines, fidx))
    fidx, lines, hits = fidx[order], lines[order], hits[order]
    first = _group_starts(fidx, lines)
    max_hits = np.maximum.reduceat(hits, first) if len(first) else hits
    files: dict[str, SourceFile] = {}
    for f, ln, h in zip(fidx[first].tolist(), lines[first].tolist(), max_hits.tolist()):
        files.setdefault(table.files[f], SourceFile(table.files[f])).lines[ln] = int(h)
    if functions is not None:
        _add_functions(files, functions, table, blocks, ubias)
    return files


def _row_hits(rows: np.ndarray, start: np.ndarray, end: np.ndarray,
              hits: np.ndarray) -> np.ndarray:
    """For each line-table row ``[rows[k], rows[k+1])``: the most hits of any executed
    block overlapping it (0 if none). Blocks are sorted and do not overlap."""
    if len(start) == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=np.uint64)
    # Cut the address space at every row and block boundary: each piece lies in one
    # row and in at most one block, and a row's pieces are consecutive.
    points = np.unique(np.concatenate([rows, start, end]))
    b = np.searchsorted(start, points, side="right").astype(np.int64) - 1
    inside = (b >= 0) & (points < end[np.maximum(b, 0)])
    piece_hits = np.where(inside, hits[np.maximum(b, 0)], 0).astype(np.uint64)
    # A row with no pieces (an empty one) gets its successor's value: such rows have no
    # code and are never used.
    result: np.ndarray = np.maximum.reduceat(piece_hits, np.searchsorted(points, rows))
    return result


def _group_starts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(len(a), dtype=bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return np.flatnonzero(new)


def _add_functions(files: dict[str, SourceFile], functions: FunctionTable, table: LineTable,
                   blocks: np.ndarray, bias: np.uint64) -> None:
    """The functions whose first address has a line that has code in a reported file."""
    names = [n for n in functions.names if "@" not in n]
    if not names:
        return
    addrs = np.array([functions.address_of(n) or 0 for n in names], dtype=np.uint64)
    fidx, lines = table.lookup_lines(addrs)
    runtime = addrs + bias
    hits = np.zeros(len(names), dtype=np.uint64)
    if len(blocks):
        k = np.searchsorted(blocks["start"], runtime, side="right").astype(np.int64) - 1
        inside = (k >= 0) & (runtime < blocks["end"][np.maximum(k, 0)])
        hits = np.where(inside, blocks["hits"][np.maximum(k, 0)], hits)
    for name, f, ln, h in zip(names, fidx.tolist(), lines.tolist(), hits.tolist()):
        if f < 0 or ln <= 0:
            continue
        source = files.get(table.files[f])
        if source is None or ln not in source.lines:
            continue
        old = source.functions.get(name)
        source.functions[name] = (ln, max(int(h), old[1] if old else 0))


def render(cov: Coverage, out: IO[str], *, test_name: str = "",
           lines: LineCoverage | None = None) -> None:
    """Write the lcov tracefile of ``cov`` (or of its ``lines``, computed before) to ``out``."""
    lines = lines if lines is not None else line_coverage(cov)
    for source in lines.files:
        out.write(f"TN:{test_name}\n")
        out.write(f"SF:{source.path}\n")
        funcs = sorted(source.functions.items(), key=lambda kv: (kv[1][0], kv[0]))
        for name, (line, _) in funcs:
            out.write(f"FN:{line},{name}\n")
        for name, (_, hits) in funcs:
            out.write(f"FNDA:{hits},{name}\n")
        out.write(f"FNF:{len(funcs)}\n")
        out.write(f"FNH:{sum(1 for _, (_, h) in funcs if h > 0)}\n")
        for line, hits in sorted(source.lines.items()):
            out.write(f"DA:{line},{hits}\n")
        out.write(f"LF:{len(source.lines)}\n")
        out.write(f"LH:{source.lines_hit}\n")
        out.write("end_of_record\n")
