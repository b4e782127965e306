"""The extended register state under the stalker backend (docs/stalker.md, "AVX-512
state"): a value in every bit of zmm0-31, k0-k7, MXCSR and the x87 control word must still
be there after a branch into code Stalker had to compile, for every variant we ship; and a
real program that takes glibc's AVX-512 paths (gdb) behaves as it does natively.

Frida 17.26's epilog helper loses bits 256-511 of zmm0-15 at every return from Stalker's C
code; without the agent's fix (agent/xstate.c) every call of the fixture counts one
mismatch there."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import cli

from branchtrace.backends.stalker import StalkerBackend
from branchtrace.backends.stalker.agent_code import VARIANT_ENV, cpu_flags
from branchtrace.backends.stalker.xstate import CALLS as PROBE_CALLS

if not StalkerBackend().probe().available:
    pytest.skip(f"stalker cannot run here: {StalkerBackend().probe().reason}",
                allow_module_level=True)

#: calls per thread: the 512 targets, then 512 more through code compiled by then
CALLS = "1024"

#: what each mode of the fixture needs of the CPU
NEEDS = {"avx512": ("avx512f", "avx512bw"), "avx2": ("avx2",)}


def _exe(build, mode: str):
    lacking = [flag for flag in NEEDS[mode] if flag not in cpu_flags()]
    if lacking:
        pytest.skip(f"the CPU lacks {', '.join(lacking)}: the {mode} state cannot be "
                    "checked on this machine")
    return build("avx512_state", "-O1", "-mavx512f")


def _clean(out: str, mode: str) -> None:
    assert f"mode {mode}: 2 threads x {CALLS} calls, mismatches 0:" in out, out


@pytest.mark.parametrize("mode", ["avx512", "avx2"])
def test_fixture_passes_natively(build, mode):
    exe = _exe(build, mode)
    result = subprocess.run([str(exe), mode, CALLS], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    _clean(result.stdout, mode)


@pytest.mark.parametrize("variant", ["", "follow", "stock"])
@pytest.mark.parametrize("mode", ["avx512", "avx2"])
def test_state_survives_new_blocks(build, mode, variant):
    exe = _exe(build, mode)
    env = dict(os.environ)
    env.pop(VARIANT_ENV, None)
    if variant:
        env[VARIANT_ENV] = variant
    result = cli("run", "--backend", "stalker", "--report", "never", "--", str(exe), mode,
                 CALLS, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    _clean(result.stdout, mode)


def test_state_survives_stream_mode_slow_paths(build):
    """A small buffer in stream mode: the emitted code calls out to reserve chunks
    (bt_stream_slow) while the fixture's registers are live."""
    mode = "avx512" if "avx512f" in cpu_flags() else "avx2"
    exe = _exe(build, mode)
    result = cli("run", "--backend", "stalker", "--mode", "stream", "--buffer", "1024",
                 "--report", "never", "--", str(exe), mode, CALLS)
    assert result.returncode == 0, result.stdout + result.stderr
    _clean(result.stdout, mode)


def test_gdb_version_is_as_native():
    """gdb's start-up takes glibc's AVX-512 string paths: with the zmm state lost it died
    of std::length_error (exit 134)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed")
    native = subprocess.run([gdb, "--version"], capture_output=True, text=True, timeout=60)
    traced = cli("run", "--backend", "stalker", "--report", "never", "--", gdb, "--version")
    assert (traced.returncode, traced.stdout) == (native.returncode, native.stdout), \
        traced.stderr


def test_doctor_self_test_says_the_state_is_kept():
    if not {"avx512f", "avx512bw"} <= cpu_flags():
        pytest.skip("the CPU lacks avx512f or avx512bw: doctor has nothing to check")
    result = cli("doctor")
    assert result.returncode == 0, result.stderr
    assert (f"AVX-512 state: kept (zmm0-31 and k0-k7 unchanged after {PROBE_CALLS} calls "
            "into new code)") in result.stdout, result.stdout
