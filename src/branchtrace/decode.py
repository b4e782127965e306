"""Raw store encodings -> canonical branch arrays (:data:`~branchtrace.model.BRANCH_DTYPE`).

Vectorized: numpy does the work, never a Python loop per record.
"""

from __future__ import annotations

import numpy as np

from .errors import TraceFormatError
from .model import BRANCH_DTYPE
from .store import Encoding, RECORD_DTYPES


def decode(encoding: Encoding, records: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
    """Decode one thread's raw records (oldest first) into canonical branches.

    ``blocks`` is the block table the BLOCKID encoding refers to."""
    if encoding == Encoding.FROMTO:
        if records.dtype != RECORD_DTYPES[Encoding.FROMTO]:
            records = records.view(RECORD_DTYPES[Encoding.FROMTO])
        out = np.empty(len(records), dtype=BRANCH_DTYPE)
        out["from_ip"] = records["from_ip"]
        out["to_ip"] = records["to_ip"]
        out["kind"] = records["kind"]
        return out
    raise TraceFormatError(f"cannot decode records of encoding {int(encoding)} without a block table")


def concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Join drained pieces (possibly none) into one array."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)
