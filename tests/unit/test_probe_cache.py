"""The stalker backend keeps its probe's answer per Frida version, kernel and boot."""

from __future__ import annotations

import json

from branchtrace.backends import Probe
from branchtrace.backends import stalker


def test_the_answer_is_kept_for_the_same_key_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BRANCHTRACE_PROBE_CACHE", raising=False)
    key = {"frida": "1.0", "kernel": "6.0", "boot": "b", "uid": "0"}
    assert stalker._cached_probe(key) is None                     # nothing kept yet
    stalker._keep_probe(key, Probe(False, "Frida cannot attach here: no"))
    path = tmp_path / "branchtrace" / "stalker-probe.json"
    assert path.exists() and (path.parent.stat().st_mode & 0o777) == 0o700
    got = stalker._cached_probe(key)
    assert got == Probe(False, "Frida cannot attach here: no (cached)")
    assert stalker._cached_probe({**key, "boot": "other"}) is None   # rebooted: test again
    assert stalker._cached_probe({**key, "frida": "2.0"}) is None
    monkeypatch.setenv("BRANCHTRACE_PROBE_CACHE", "0")
    assert stalker._cached_probe(key) is None                     # switched off


def test_a_damaged_cache_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    key = {"frida": "1.0", "kernel": "6.0", "boot": "b", "uid": "0"}
    path = tmp_path / "branchtrace" / "stalker-probe.json"
    path.parent.mkdir(parents=True)
    for junk in ("{", "[]", json.dumps({"key": key, "available": "yes", "reason": 1}),
                 json.dumps({"key": key})):
        path.write_text(junk)
        assert stalker._cached_probe(key) is None


def test_the_real_key_names_this_machine():
    key = stalker._probe_key()
    assert key is not None and key["frida"] and key["kernel"] and len(key["boot"]) >= 32
