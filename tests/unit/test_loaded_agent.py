"""The agent script the attach thread creates, loads and prepares before the host needs
it (agent_code.LoadedAgent): the host gets every message, the early ones first and in
order; a script that fails to prepare is unloaded, so the host's own is the only one."""
from __future__ import annotations

from typing import Any

import pytest

from branchtrace.backends.stalker.agent_code import LoadedAgent


class FakeScript:
    def __init__(self, fail_prepare: bool = False) -> None:
        self.handlers: list[Any] = []
        self.calls: list[str] = []
        self.fail_prepare = fail_prepare
        self.exports_sync = self

    def on(self, signal: str, handler: Any) -> None:
        assert signal == "message"
        self.handlers.append(handler)

    def off(self, signal: str, handler: Any) -> None:
        self.handlers.remove(handler)

    def emit(self, n: int) -> None:
        for handler in list(self.handlers):
            handler({"type": "send", "payload": {"n": n}}, None)

    def load(self) -> None:
        self.calls.append("load")
        self.emit(0)   # the agent's top level may already say something

    def prepare(self) -> None:
        self.calls.append("prepare")
        if self.fail_prepare:
            raise RuntimeError("unable to find method 'prepare'")
        self.emit(1)

    def unload(self) -> None:
        self.calls.append("unload")


class FakeSession:
    def __init__(self, script: FakeScript) -> None:
        self.script = script
        self.sources: list[str] = []

    def create_script(self, source: str, name: str) -> FakeScript:
        self.sources.append(source)
        return self.script


def test_early_messages_reach_the_host_first_and_in_order() -> None:
    script = FakeScript()
    loaded = LoadedAgent(FakeSession(script))
    assert script.calls == ["load", "prepare"]
    script.emit(2)
    got: list[int] = []
    assert loaded.take(lambda m, d: got.append(m["payload"]["n"])) is script
    script.emit(3)
    assert got == [0, 1, 2, 3]
    assert len(script.handlers) == 1   # the keeper is gone: nothing is kept twice


def test_the_script_is_the_agent_source() -> None:
    session = FakeSession(FakeScript())
    LoadedAgent(session)
    assert "rpc.exports" in session.sources[0] and "prepare()" in session.sources[0]


def test_a_script_that_cannot_prepare_is_unloaded() -> None:
    script = FakeScript(fail_prepare=True)
    with pytest.raises(RuntimeError):
        LoadedAgent(FakeSession(script))
    assert script.calls == ["load", "prepare", "unload"]
