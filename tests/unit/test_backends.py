"""Backend selection: one place, and it explains itself."""

from __future__ import annotations

import pytest

from branchtrace import backends
from branchtrace.errors import BackendUnavailable, UsageError


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backend 'nope'"):
        backends.select("nope", environ={})


#: the intended order of preference for "auto": Stalker (near native speed) before
#: ptrace (single-stepping, the exact but slow oracle); stated here, not read from the code
INTENDED_ORDER = ["stalker", "ptrace"]


def test_the_order_of_preference_is_the_intended_one():
    assert backends.names() == INTENDED_ORDER
    assert [name for name, _ in backends.probe_all()] == INTENDED_ORDER


def _probe_as(monkeypatch, available: set[str]) -> None:
    """Every backend answers its probe as told, without running the real one."""
    from branchtrace.backends.ptrace import PtraceBackend
    from branchtrace.backends.stalker import StalkerBackend

    for name, cls in (("stalker", StalkerBackend), ("ptrace", PtraceBackend)):
        ok = name in available
        monkeypatch.setattr(cls, "probe", lambda self, ok=ok, name=name: backends.Probe(
            ok, f"{name} {'can' if ok else 'cannot'} run (test)"))


@pytest.mark.parametrize("available, chosen", [
    ({"stalker", "ptrace"}, "stalker"), ({"ptrace"}, "ptrace"), ({"stalker"}, "stalker")])
def test_auto_chooses_the_first_available_in_the_intended_order(monkeypatch, available, chosen):
    _probe_as(monkeypatch, available)
    choice = backends.select("auto", environ={})
    assert choice.backend.name == chosen
    skipped = INTENDED_ORDER[:INTENDED_ORDER.index(chosen)]
    assert choice.reasons == tuple(
        [f"{name}: skipped [backend-unavailable]; {name} cannot run (test)" for name in skipped]
        + [f"{chosen}: chosen; {chosen} can run (test)"])


def test_auto_says_why_it_chose_on_this_machine():
    choice = backends.select("auto", environ={})
    assert choice.backend.name in INTENDED_ORDER
    assert any(r.startswith(f"{choice.backend.name}: chosen") for r in choice.reasons)


def test_environment_overrides_auto_only():
    choice = backends.select("auto", environ={backends.ENV_BACKEND: "ptrace"})
    assert choice.reasons[0] == f"{backends.ENV_BACKEND}=ptrace"
    with pytest.raises(UsageError):
        backends.select("auto", environ={backends.ENV_BACKEND: "bogus"})
    # an explicit name wins over the environment
    assert backends.select("ptrace", environ={backends.ENV_BACKEND: "bogus"}).backend.name == "ptrace"


def test_unavailable_backend_is_refused(monkeypatch):
    from branchtrace.backends.ptrace import PtraceBackend

    monkeypatch.setattr(PtraceBackend, "probe", lambda self: backends.Probe(False, "no ptrace here"))
    with pytest.raises(BackendUnavailable, match="no ptrace here"):
        backends.select("ptrace", environ={})
    monkeypatch.setattr(backends, "_REGISTRY", {"ptrace": backends._REGISTRY["ptrace"]})
    with pytest.raises(BackendUnavailable, match="skipped \\[backend-unavailable\\]; no ptrace here"):
        backends.select("auto", environ={})


def test_probe_all_lists_every_backend():
    listed = dict(backends.probe_all())
    assert set(listed) == set(backends.names())
    assert listed["ptrace"].available, listed["ptrace"].reason


def test_every_backend_declares_every_capability_and_the_defaults_do_nothing():
    """A backend is a :class:`Backend` subclass, so the optional hooks callers call
    directly (``start_early``, ``prepare``, ``live`` ...) exist on all of them."""
    optional = ("start_early", "cancel_early", "prepare", "release", "live")
    for name in backends.names():
        backend = backends.load(name)
        assert backends.Backend in type(backend).__mro__
        assert all(callable(getattr(backend, hook)) for hook in optional), name

    class Minimal(backends.Backend):
        name, description = "minimal", "implements only what every backend must"

    minimal = Minimal()
    target = backends.Target(argv=("true",))
    assert minimal.start_early(target) is None and minimal.cancel_early() is None
    assert minimal.release() is None
    assert minimal.live(0) == (None, [])
