"""Line and branch coverage in lcov's tracefile format (``genhtml``, coverage services).

The lines, functions and branches are :mod:`.lines`'s (from the DWARF line tables and
the recorded edges). A file's record is ``TN``, ``SF``, ``FN``/``FNDA``/``FNF``/``FNH``,
then, when it has conditional jumps, ``BRDA:line,block,branch,taken`` for each and
``BRF``/``BRH``, then ``DA``/``LF``/``LH``. In ``BRDA`` the *block* numbers the
conditional jumps of one line (0, 1, ... in address order), *branch* 0 is the jump
taken and 1 the fall-through; *taken* is ``-`` when the jump never ran (lcov: "the
block was never executed") and a count, possibly 0, when it did.

Where this differs from ``gcov`` (which counts from the compiler's own flow graph, not
from DWARF):

* gcc's line table puts a function's prologue on the line of its opening brace, gcov on
  the line of the function's name; when the two differ both lines are right about
  different things, and this report follows DWARF.
* gcc's line table puts the epilogue on the closing brace; gcov folds it into the last
  statement and does not list the brace. The brace's instructions did run: it is listed.
* Lines without instructions (declarations without initializers, ``else``, labels)
  are in neither report.
* Branches are machine branches, gcov's are the arcs of its flow graph. For a line whose
  conditions each compile to one conditional jump (``if``, ``while``, ``for``, ``?:``,
  ``&&``/``||`` at ``-O0``) both count two outcomes per condition, with the same
  counts (in another order: gcov numbers the arcs its way). They differ where gcc makes
  other code of a construct: a ``switch`` is one multi-way branch for gcov (one arc per
  case) and a chain of compare-and-jumps (or an indirect jump through a table, which
  is no conditional branch) here; optimized code merges, duplicates and removes jumps.

The output of one report is deterministic: files sorted by path, lines by number.
"""

from __future__ import annotations

from typing import IO

from ..analysis.coverage import Coverage
from .lines import LineCoverage, SourceFile, line_coverage, module_lines

__all__ = ["LineCoverage", "SourceFile", "line_coverage", "module_lines", "render"]


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
        if source.branches:
            for line, sites in sorted(source.branches.items()):
                for block, site in enumerate(sites):
                    ran = site.executed > 0
                    out.write(f"BRDA:{line},{block},0,{site.taken if ran else '-'}\n")
                    out.write(f"BRDA:{line},{block},1,{site.not_taken if ran else '-'}\n")
            out.write(f"BRF:{source.branches_found}\n")
            out.write(f"BRH:{source.branches_hit}\n")
        for line, hits in sorted(source.lines.items()):
            out.write(f"DA:{line},{hits}\n")
        out.write(f"LF:{len(source.lines)}\n")
        out.write(f"LH:{source.lines_hit}\n")
        out.write("end_of_record\n")
