"""Line and branch coverage per source file: what the lcov and text reports are made of.

Which source lines have code, and which of them ran, come from the DWARF line tables
of the modules that ran: a line has code when some line-table row of it covers at least
one byte of code; it ran when one of those bytes lies in an executed block (see
:mod:`branchtrace.analysis.coverage`). Its hit count is the most times any one of its
instructions ran. Functions are the symbols whose first address has a line in the file;
their count is how often their first instruction ran.

Branches are the conditional jumps (``jcc``, ``jrcxz``, ``loop``) in the code of a line,
found by disassembling the line-table rows of the reported files. Each has two
outcomes: *taken* (it jumped: the recorded conditional edges from it, their hits added
up) and *not taken* (it fell through: how often it ran, the hits of the executed block
holding it, less the times it jumped). A trace records only taken branches; the fall
throughs are known because the block around the jump ran more often than it jumped. A
jump in code that never ran has no counts (lcov's ``-``); one that ran but always went
the same way has a count of 0 for its other outcome. These are machine branches: one
per ``jcc`` instruction, which at ``-O0`` is one per source condition.

Which files are reported: every source file of every module that ran, less those the
path filter leaves out, and (unless ``all_sources``) those not on disk: ``genhtml``
stops at the first source it cannot read, and a library's debug information names the
files of its build tree (``elf/dl-load.c``).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..analysis.coverage import Coverage
from ..isa import disassembler, is_conditional
from ..model import BranchKind, ModuleMap
from ..symbols import ElfImage, FunctionTable, LineTable, line_table_for
from ..symbols.images import module_image


@dataclass(frozen=True, slots=True)
class BranchSite:
    """One conditional jump: how often it ran and how often it jumped (0, 0: never ran)."""

    executed: int
    taken: int

    @property
    def not_taken(self) -> int:
        return self.executed - self.taken

    @property
    def outcomes_hit(self) -> int:
        """How many of its two outcomes happened (0, 1 or 2)."""
        return int(self.taken > 0) + int(self.not_taken > 0)


@dataclass
class SourceFile:
    """The line coverage of one source file."""

    path: str
    lines: dict[int, int] = field(default_factory=dict)            # line -> hits
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (line, hits)
    #: line -> its conditional jumps, in address order (modules in the order they ran)
    branches: dict[int, list[BranchSite]] = field(default_factory=dict)

    @property
    def lines_hit(self) -> int:
        return sum(1 for h in self.lines.values() if h > 0)

    @property
    def branches_found(self) -> int:
        """Branch outcomes (two per conditional jump), as lcov's ``BRF``."""
        return 2 * sum(len(sites) for sites in self.branches.values())

    @property
    def branches_hit(self) -> int:
        """Branch outcomes that happened, as lcov's ``BRH``."""
        return sum(s.outcomes_hit for sites in self.branches.values() for s in sites)


@dataclass
class LineCoverage:
    files: list[SourceFile]
    #: Modules that ran but have no line table (their code is in no source file here).
    modules_without_lines: list[str]
    #: Source files left out because they are not on disk (``all_sources=False``).
    missing_sources: list[str] = field(default_factory=list)
    #: Source files left out by the path filter (``--include``/``--omit``).
    filtered_out: int = 0

    def totals(self) -> tuple[int, int]:
        """``(lines that ran, lines with code)`` over every file."""
        return (sum(f.lines_hit for f in self.files), sum(len(f.lines) for f in self.files))


@dataclass(frozen=True, slots=True)
class PathFilter:
    """Which source files a report keeps: those matching some ``include`` pattern (all
    when there is none) and no ``omit`` pattern. Patterns are :mod:`fnmatch`'s, matched
    against the whole path as the report writes it (``*`` matches ``/`` too), as
    coverage.py's ``--include``/``--omit`` do; see :func:`prepare_patterns`."""

    include: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()

    def __call__(self, path: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(path, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(path, p) for p in self.omit)


def prepare_patterns(values: Sequence[str], cwd: str) -> tuple[str, ...]:
    """Patterns from command-line values, as coverage.py reads them: each value may hold
    several, separated by commas; one that starts with neither a wildcard nor ``/`` is
    relative to ``cwd`` (``src/*`` is ``$PWD/src/*``)."""
    out = []
    for value in values:
        for pattern in value.split(","):
            pattern = pattern.strip()
            if not pattern:
                continue
            if not pattern.startswith(("*", "?", "/")):
                pattern = os.path.join(cwd, pattern)
            out.append(pattern)
    return tuple(out)


def line_coverage(cov: Coverage, *, all_sources: bool = False,
                  paths: PathFilter = PathFilter(), branches: bool = True,
                  image_of: Callable[[ModuleMap], ElfImage | None] | None = None
                  ) -> LineCoverage:
    """Per source file: the lines with code and their hit counts, the functions, and
    (``branches``) the conditional jumps with their outcomes.

    ``paths`` says which files to keep; files not on disk are left out too unless
    ``all_sources``. ``image_of`` gives a module's ELF image (its line and function
    tables, its code); by default :func:`~branchtrace.symbols.images.module_image`'s.
    """
    files: dict[str, SourceFile] = {}
    without: list[str] = []
    verdict: dict[str, bool] = {}
    missing: set[str] = set()
    filtered: set[str] = set()

    def keep(path: str) -> bool:
        ok = verdict.get(path)
        if ok is None:
            if not paths(path):
                filtered.add(path)
                ok = False
            elif not all_sources and not os.path.isfile(path):
                missing.add(path)
                ok = False
            else:
                ok = True
            verdict[path] = ok
        return ok

    ran = np.unique(cov.blocks["module"])
    for m in ran[ran >= 0].tolist():
        module = cov.modules[m]
        image = module_image(module).image if image_of is None else image_of(module)
        table = line_table_for(image) if image is not None else None
        if image is None or table is None or len(table) == 0:
            without.append(module.path)
            continue
        edges = cov.edges[cov.edges["from_module"] == m] if branches else None
        for source in module_lines(table, image.functions, cov.module_blocks(m), module.bias,
                                   keep=keep, edges=edges,
                                   read=image.read_vaddr if branches else None).values():
            merged = files.setdefault(source.path, SourceFile(source.path))
            for line, hits in source.lines.items():
                merged.lines[line] = max(merged.lines.get(line, 0), hits)
            for name, (line, hits) in source.functions.items():
                old = merged.functions.get(name)
                merged.functions[name] = (line, max(hits, old[1] if old else 0))
            for line, sites in source.branches.items():
                merged.branches.setdefault(line, []).extend(sites)
    return LineCoverage([f for _, f in sorted(files.items())], without, sorted(missing),
                        len(filtered))


def module_lines(table: LineTable, functions: FunctionTable | None, blocks: np.ndarray,
                 bias: int, *, keep: Callable[[str], bool] | None = None,
                 edges: np.ndarray | None = None,
                 read: Callable[[int, int], bytes] | None = None) -> dict[str, SourceFile]:
    """The line coverage of one module: its line table and function table (file
    addresses), its executed blocks (:data:`BLOCK_DTYPE`, run-time addresses, sorted)
    and its bias (run-time minus file addresses). ``keep``: which source files to
    report (all by default). With ``read`` (file address, size -> its bytes) and
    ``edges`` (the module's taken edges, :data:`EDGE_DTYPE`), the conditional jumps of
    each line too."""
    ubias = np.uint64(bias % (1 << 64))
    start = blocks["start"] - ubias
    end = blocks["end"] - ubias
    row_hits = _row_hits(table.address, start, end, blocks["hits"])
    row_end = np.append(table.address[1:], table.address[-1:])
    has_code = (table.file >= 0) & (table.line > 0) & (row_end > table.address)
    if keep is not None:
        kept = np.zeros(len(table.files) + 1, dtype=bool)   # file -1: the last slot
        for f in np.unique(table.file[has_code]).tolist():
            kept[f] = keep(table.files[f])
        has_code &= kept[table.file]
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
    if read is not None and edges is not None:
        _add_branches(files, table, has_code, row_end, read, blocks, edges, ubias)
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


def _hits_at(blocks: np.ndarray, runtime: np.ndarray) -> np.ndarray:
    """The hits of the executed block holding each run-time address (0: none)."""
    hits = np.zeros(len(runtime), dtype=np.uint64)
    if len(blocks):
        k = np.searchsorted(blocks["start"], runtime, side="right").astype(np.int64) - 1
        inside = (k >= 0) & (runtime < blocks["end"][np.maximum(k, 0)])
        hits = np.where(inside, blocks["hits"][np.maximum(k, 0)], hits)
    return hits


def _add_functions(files: dict[str, SourceFile], functions: FunctionTable, table: LineTable,
                   blocks: np.ndarray, bias: np.uint64) -> None:
    """The functions whose first address has a line that has code in a reported file."""
    names = [n for n in functions.names if "@" not in n]
    if not names:
        return
    addrs = np.array([functions.address_of(n) or 0 for n in names], dtype=np.uint64)
    fidx, lines = table.lookup_lines(addrs)
    hits = _hits_at(blocks, addrs + bias)
    for name, f, ln, h in zip(names, fidx.tolist(), lines.tolist(), hits.tolist()):
        if f < 0 or ln <= 0:
            continue
        source = files.get(table.files[f])
        if source is None or ln not in source.lines:
            continue
        old = source.functions.get(name)
        source.functions[name] = (ln, max(int(h), old[1] if old else 0))


def conditional_jumps(table: LineTable, rows: np.ndarray, row_end: np.ndarray,
                      read: Callable[[int, int], bytes]) -> np.ndarray:
    """File addresses of the conditional jumps in the line-table rows selected by the
    mask ``rows``: each stretch of consecutive selected rows is disassembled from its
    start (a row starts on an instruction), up to undecodable bytes if any."""
    selected = np.flatnonzero(rows)
    if len(selected) == 0:
        return np.zeros(0, dtype=np.uint64)
    lo = table.address[selected]
    hi = row_end[selected]
    # a stretch begins where a selected row does not start at the previous one's end
    begins = np.ones(len(selected), dtype=bool)
    begins[1:] = lo[1:] != hi[:-1]
    first = np.flatnonzero(begins)
    last = np.append(first[1:], len(selected)) - 1
    md = disassembler(detail=False)
    found: list[int] = []
    for a, b in zip(lo[first].tolist(), hi[last].tolist()):
        code = read(a, b - a)
        for address, _, mnemonic, _ in md.disasm_lite(code, a):
            if is_conditional(mnemonic):
                found.append(address)
    return np.array(found, dtype=np.uint64)


def _add_branches(files: dict[str, SourceFile], table: LineTable, rows: np.ndarray,
                  row_end: np.ndarray, read: Callable[[int, int], bytes], blocks: np.ndarray,
                  edges: np.ndarray, bias: np.uint64) -> None:
    """Each reported line's conditional jumps: how often each ran and jumped."""
    sites = conditional_jumps(table, rows, row_end, read)
    if len(sites) == 0:
        return
    runtime = sites + bias
    executed = _hits_at(blocks, runtime)
    cond = edges[edges["kind"] == BranchKind.COND]        # sorted by from_ip
    taken = np.zeros(len(sites), dtype=np.uint64)
    if len(cond):
        starts, first = np.unique(cond["from_ip"], return_index=True)
        per_site = np.add.reduceat(cond["hits"], first)
        k = np.minimum(np.searchsorted(starts, runtime), len(starts) - 1)
        taken = np.where(starts[k] == runtime, per_site[k], taken)
    # records lost around a jump can leave its block uncounted: it ran at least as
    # often as it jumped
    executed = np.maximum(executed, taken)
    fidx, lines = table.lookup_lines(sites)
    for f, ln, e, t in zip(fidx.tolist(), lines.tolist(), executed.tolist(), taken.tolist()):
        source = files.get(table.files[f]) if f >= 0 else None
        if source is None or ln not in source.lines:
            continue
        source.branches.setdefault(ln, []).append(BranchSite(int(e), int(t)))
