"""Where an unwound and a replayed stack disagree (analysis/stack.py disagreements)."""

from __future__ import annotations

from branchtrace.analysis.stack import StackFrame, disagreements


def u(*names, garbage=()):
    return tuple(StackFrame(n, 0x1000 + i, None, i not in garbage) for i, n in enumerate(names))


def r(*names, bottom=None):
    return tuple(StackFrame(n, 0x1000 + i, None if i == bottom else -i - 1)
                 for i, n in enumerate(names))


def test_the_same_stack_agrees_up_to_the_replays_bottom():
    assert disagreements(u("c", "b", "a", "x"), r("c", "b", "a", bottom=2)) == []


def test_a_smashed_return_address_is_a_disagreement():
    assert disagreements(u("smash", None, garbage=(1,)), r("smash", "main", bottom=1)) == [1]
    assert disagreements(u("c", "evil", "a"), r("c", "b", "a", bottom=2)) == [1]


def test_unnamed_frames_on_either_side_are_passed_over():
    # the unwinder sees two stripped frames where the replay sees one
    assert disagreements(u("abort", None, None, "terminate", "throw"),
                         r("abort", None, "terminate", "throw", bottom=3)) == []
    assert disagreements(u("a", "b"), r("a", None, "b", bottom=2)) == []
    # garbage beside an unnamed replayed frame still counts
    assert disagreements(u("a", None, "c", garbage=(1,)), r("a", None, "c", bottom=2)) == [1]
