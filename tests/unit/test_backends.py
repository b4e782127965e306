"""Backend selection: one place, and it explains itself."""

from __future__ import annotations

import pytest

from branchtrace import backends
from branchtrace.errors import BackendUnavailable, UsageError


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backend 'nope'"):
        backends.select("nope", environ={})


def test_auto_chooses_the_first_available_backend_and_says_why():
    choice = backends.select("auto", environ={})
    available = [name for name, probe in backends.probe_all() if probe.available]
    assert choice.backend.name == available[0]
    assert any(r.startswith(f"{available[0]}: chosen") for r in choice.reasons)


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
