"""progress.py: a bar on a terminal once the delay has passed, gone at the first other
output; nothing when stderr is not a terminal, or when tqdm is missing."""

from __future__ import annotations

import io
import sys

import pytest

from branchtrace import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch) -> Terminal:
    """A terminal as stderr (set in the test's body: pytest sets its own capture stream
    after the fixtures ran)."""
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    monkeypatch.delenv(progress.NO_PROGRESS_ENV, raising=False)
    monkeypatch.delenv("TERM", raising=False)
    return Terminal()


def test_a_bar_on_a_terminal_ended_by_other_output(terminal, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.shown():
        assert progress.active()
        progress.expect(4 << 20)
        progress.advance(1 << 20)
        progress.advance(1 << 20)
        drawn = terminal.getvalue()
        assert "branchtrace: reading" in drawn and "1.00M/4.00M" in drawn, drawn
        print("a warning", file=sys.stderr)       # the bar goes first, for good
        progress.advance(1 << 20)
    assert not progress.active() and sys.stderr is terminal
    rest = terminal.getvalue()[len(drawn):]
    assert rest.endswith("a warning\n") and "reading" not in rest.split("\r")[-1], rest


def test_nothing_before_the_delay(terminal, monkeypatch):
    monkeypatch.setenv(progress.DELAY_ENV, "3600")
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.shown():
        progress.expect(100)
        progress.advance(100)
    assert terminal.getvalue() == ""


def test_nothing_when_asked_not_to(terminal, monkeypatch):
    monkeypatch.setenv(progress.NO_PROGRESS_ENV, "1")
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.shown():
        assert not progress.active()
        progress.advance(100)
    assert terminal.getvalue() == ""


def test_nothing_on_a_pipe(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    with progress.shown():
        assert not progress.active()
        progress.expect(100)
        progress.advance(100)
        assert sys.stderr is pipe
    assert pipe.getvalue() == ""


def test_without_tqdm_nothing_and_no_error(terminal, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)       # import tqdm fails
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.shown():
        progress.expect(100)
        progress.advance(50)
        progress.advance(50)
    assert terminal.getvalue() == ""
