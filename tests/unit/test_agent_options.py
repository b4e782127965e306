"""The Stalker agent's measuring knobs read from the environment: defaults, notes, and a
clear usage error for a bad value (backends/stalker/agent_code.py)."""
from __future__ import annotations

import pytest

from branchtrace.backends.stalker import agent_code
from branchtrace.errors import UsageError


def test_defaults_leave_no_note(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (agent_code.TRUST_ENV, agent_code.FASTFILL_ENV, agent_code.RETCACHE_ENV):
        monkeypatch.delenv(name, raising=False)
    options, notes = agent_code.agent_options()
    assert options["trust"] is None and options["fastFill"] and options["retcache"]
    assert not [n for n in notes if "TRUST" in n or "RETCACHE" in n]


@pytest.mark.parametrize("value,threshold", [("0", 0), ("3", 3), ("-1", -1)])
def test_trust_threshold_is_passed_and_noted(monkeypatch: pytest.MonkeyPatch,
                                            value: str, threshold: int) -> None:
    monkeypatch.setenv(agent_code.TRUST_ENV, value)
    options, notes = agent_code.agent_options()
    assert options["trust"] == threshold
    assert any(n.startswith(f"{agent_code.TRUST_ENV}={threshold}:") for n in notes)


@pytest.mark.parametrize("value", ["x", "-2", "1.5"])
def test_a_bad_trust_threshold_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                value: str) -> None:
    monkeypatch.setenv(agent_code.TRUST_ENV, value)
    with pytest.raises(UsageError, match=agent_code.TRUST_ENV):
        agent_code.agent_options()
