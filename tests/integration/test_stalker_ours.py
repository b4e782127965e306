"""What we inject is never part of the program's trace (docs/stalker.md, "Our own
libraries"): under Stalker, Frida's agent (memfd:frida-agent-64.so) and the libraries
it makes ld.so load (libpthread, libm, librt, libdl on Debian) are in neither the
module map nor the coverage, and none of their code (their destructors at exit) is
recorded; a library the program dlopens itself is the program's, even when Frida's
agent had loaded it already."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

from branchtrace import open as open_trace
from branchtrace.backends.stalker import StalkerBackend

if not StalkerBackend().probe().available:
    pytest.skip(f"stalker cannot run here: {StalkerBackend().probe().reason}",
                allow_module_level=True)

OURS = ("frida", "libpthread.so", "libm.so", "librt.so", "libdl.so")


def _record(exe: Path, tmp_path: Path, expect: str,
            argv: tuple[str, ...] = ()) -> tuple[list[str], dict, bytes]:
    trace_file, js, drcov = tmp_path / "t.bt", tmp_path / "c.json", tmp_path / "c.drcov"
    run = cli("run", "--backend", "stalker", "-o", str(trace_file), "--", *(argv or (str(exe),)))
    assert run.returncode == 0, run.stderr
    assert expect in run.stdout
    paths = [m.path for m in open_trace(trace_file).modules]
    for fmt, out in (("json", js), ("drcov", drcov)):
        done = cli("coverage", "--format", fmt, "-o", str(out), str(trace_file))
        assert done.returncode == 0, done.stderr
    return paths, json.loads(js.read_text()), drcov.read_bytes()


def test_frida_and_the_libraries_it_loads_are_not_in_the_results(build, tmp_path):
    exe = build("rel_plain_exit")
    paths, cov, drcov = _record(exe, tmp_path, "plain")
    assert any(p.endswith("libc.so.6") for p in paths), paths   # the map is there
    assert not [p for p in paths if any(o in p for o in OURS)], paths
    covered = [m["path"] for m in cov["modules"]]
    assert not [p for p in covered if any(o in p for o in OURS)], covered
    assert cov["summary"]["unmapped_blocks"] == 0      # none of their code was recorded
    header = drcov.split(b"BB Table")[0]               # drcov's module table is text
    assert b"libc.so.6" in header
    for o in OURS:
        assert o.encode() not in header, header.decode(errors="replace")


def test_a_library_the_program_dlopens_itself_is_the_programs(build, tmp_path):
    exe = build("rel_dlopen_libm")
    paths, cov, drcov = _record(exe, tmp_path, "cos(0.5) = 0.878")
    assert [p for p in paths if "libm.so" in p], paths
    libm = [m for m in cov["modules"] if "libm.so" in m["path"]]
    assert libm and libm[0]["blocks"], "cos() ran: its blocks are recorded"
    assert b"libm.so" in drcov.split(b"BB Table")[0]
    assert not [p for p in paths if "frida" in p], paths


def test_after_an_exec_the_new_image_has_none_of_ours_either(build, tmp_path):
    """Each image an exec brings gets its own before/after snapshot (Host._attach): /bin/sh
    (dash, libc only) execs the plain program; neither image shows Frida's libraries."""
    exe = build("rel_plain_exit")
    paths, cov, drcov = _record(exe, tmp_path, "plain", ("/bin/sh", "-c", f"exec {exe}"))
    assert str(exe) in paths and any(p.endswith("libc.so.6") for p in paths), paths
    assert not [p for p in paths if any(o in p for o in OURS)], paths
    covered = [m["path"] for m in cov["modules"]]
    assert str(exe) in covered, covered                 # the new image was recorded
    assert not [p for p in covered if any(o in p for o in OURS)], covered
    assert cov["summary"]["unmapped_blocks"] == 0
    header = drcov.split(b"BB Table")[0]
    for o in OURS:
        assert o.encode() not in header, header.decode(errors="replace")
