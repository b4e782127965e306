"""GDB's ranges and a function filter for the history, applied to its lines as they are
written: ``--range FROM,TO`` (GDB's ``record function-call-history FROM,TO`` and
``instruction-history FROM,TO``: the numbered lines FROM to TO) and ``--function NAME``
(the call history's segments of that function). Lines are numbered from the thread's
start, so a range near the start is read no further than its end: once a line past TO
is written, :class:`RangeDone` stops the reading.
"""

from __future__ import annotations

from typing import IO


class RangeDone(Exception):
    """The last line of the range was written: nothing more is needed."""


class LineFilter:
    """A text stream that passes on only the lines in range (and of the function).

    A line is numbered when it begins with digits and a tab; in the instruction history
    an instruction's line has an address after the tab (``0x...``), and the lines before
    it (its source line, with ``--source``) go with it."""

    def __init__(self, out: IO[str], first: int = 1, last: int | None = None,
                 function: str | None = None, insns: bool = False) -> None:
        self.out, self.first, self.last, self.function = out, first, last, function
        self.insns = insns
        self._partial = ""
        self._pending: list[str] = []
        self.shown = 0

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _line(self, line: str) -> None:
        number, tab, rest = line.partition("\t")
        if not (tab and number.isdigit()) or (self.insns and not rest.startswith("0x")):
            if self.insns:
                self._pending.append(line)          # a source line: goes with the next
            elif not self.shown:
                pass
            else:
                self.out.write(line + "\n")
            return
        n = int(number)
        pending, self._pending = self._pending, []
        if self.last is not None and n > self.last:
            raise RangeDone
        if n < self.first or not self._of_function(rest):
            return
        for p in pending:
            self.out.write(p + "\n")
        self.out.write(line + "\n")
        self.shown += 1

    def _of_function(self, rest: str) -> bool:
        if self.function is None:
            return True
        name = rest.split("\t", 1)[0].strip()
        return name == self.function or name.split("(", 1)[0] == self.function


def parse_range(text: str) -> tuple[int, int | None]:
    """``FROM,TO`` (both from 1), ``FROM,`` (to the end) or ``N`` (that line alone)."""
    first, comma, last = text.partition(",")
    try:
        a = int(first)
        b = (int(last) if last.strip() else None) if comma else a
    except ValueError:
        raise ValueError(f"--range: FROM,TO with numbers from 1, not {text!r}") from None
    if a < 1 or (b is not None and b < a):
        raise ValueError(f"--range: FROM,TO with 1 <= FROM <= TO, not {text!r}")
    return a, b
