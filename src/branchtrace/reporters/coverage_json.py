"""Block and edge coverage with hit counts, as JSON (for scripts).

The document (``"format": "branchtrace-coverage"``, ``"version": 1``)::

    {
      "format": "branchtrace-coverage", "version": 1,
      "summary": {"branches": N, "blocks": N, "edges": N, "executed_bytes": N,
                  "runs": N, "dropped_runs": N, "unmapped_blocks": N},
      "notes": ["..."],
      "modules": [
        {"id": 0, "path": "/path/prog", "start": "0x5555...", "end": "0x5555...",
         "bias": "0x5555...", "build_id": "ab12...",
         "blocks": [[offset, size, hits], ...],
         "edges": [[from_offset, to_module, to_offset, kind, hits], ...]}
      ],
      "unmapped": {"blocks": [[address, size, hits], ...],
                   "edges": [[from_address, to_module, to_offset_or_address, kind, hits], ...]}
    }

Offsets are from the module's ``start`` (its lowest mapped address), so they stay the
same from run to run under address-space randomization. An edge is listed under the
module of its source; ``to_module`` is the id of its target's module (-1: none, and then
the target is an absolute address). ``kind`` is the branch kind's name (``call``,
``return``, ``cond``...). Blocks are sorted by offset, edges by source then target.
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np

from ..analysis.coverage import Coverage
from ..model import BranchKind

FORMAT = "branchtrace-coverage"
VERSION = 1


def _kind_names() -> np.ndarray:
    names = ["unknown"] * 256
    for kind in BranchKind:
        names[int(kind)] = kind.label
    return np.array(names, dtype=object)


def document(cov: Coverage) -> dict[str, Any]:
    """The JSON document of ``cov`` as Python objects."""
    kinds = _kind_names()
    starts = np.array([m.start for m in cov.modules] + [0], dtype=np.uint64)  # [-1] -> 0
    blocks = cov.blocks
    edges = cov.edges
    b_mod = blocks["module"]
    b_off = blocks["start"] - starts[b_mod]
    b_size = blocks["end"] - blocks["start"]
    e_from = edges["from_module"]
    e_to = edges["to_module"]
    e_from_off = edges["from_ip"] - starts[e_from]
    e_to_off = edges["to_ip"] - starts[e_to]
    e_kind = kinds[edges["kind"]]

    def block_rows(mask: np.ndarray) -> list[list[int]]:
        rows: list[list[int]] = np.stack(
            [b_off[mask], b_size[mask], blocks["hits"][mask]], axis=1).tolist()
        return rows

    def edge_rows(mask: np.ndarray) -> list[list[Any]]:
        return [list(r) for r in zip(e_from_off[mask].tolist(), e_to[mask].tolist(),
                                     e_to_off[mask].tolist(), e_kind[mask].tolist(),
                                     edges["hits"][mask].tolist())]

    modules = []
    for i, m in enumerate(cov.modules):
        modules.append({
            "id": i, "path": m.path, "start": hex(m.start), "end": hex(m.end),
            "bias": hex(m.bias % (1 << 64)), "build_id": m.build_id,
            "blocks": block_rows(b_mod == i), "edges": edge_rows(e_from == i),
        })
    return {
        "format": FORMAT, "version": VERSION,
        "summary": {
            "branches": cov.branches, "blocks": len(blocks), "edges": len(edges),
            "executed_bytes": cov.executed_bytes(), "runs": cov.runs,
            "dropped_runs": cov.dropped_runs, "unmapped_blocks": cov.unmapped_blocks,
        },
        "notes": list(cov.notes),
        "modules": modules,
        "unmapped": {"blocks": block_rows(b_mod < 0), "edges": edge_rows(e_from < 0)},
    }


def render(cov: Coverage, out: IO[str]) -> None:
    """Write the JSON document of ``cov`` to ``out``."""
    json.dump(document(cov), out, indent=None, separators=(",", ":"))
    out.write("\n")
