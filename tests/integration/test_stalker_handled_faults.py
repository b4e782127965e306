"""Faults the program handles itself, the alignment-check flag and vfork children under
Stalker (docs/stalker.md, "Faults the program handles", "The alignment-check flag",
"vfork"): the program must behave, and be recorded, as it does natively. The first two
killed every `java` before."""

from __future__ import annotations

import subprocess

import pytest
from conftest import cli

pytestmark = pytest.mark.backend("stalker")


@pytest.mark.parametrize("mode", ["ring", "stream"])
@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_handler_that_reads_and_moves_the_pc_sees_the_programs(build, tmp_path, mode, where):
    """rel_faultpc's handler moves the pc past its probe's load only when the pc is that
    load (as the JVM's does), and makes guard pages accessible and returns (the store runs
    again). Natively and traced: the same output; the trace enters the handler once per
    fault (3 moved, 4 retried)."""
    exe = str(build("rel_faultpc"))
    args = [exe] + (["thread"] if where == "thread" else [])
    native = subprocess.run(args, capture_output=True, text=True, check=True)
    assert native.stdout == "moved 3, sum 3, retried 4, total 10\n"
    out = tmp_path / "faults.btrace"
    traced = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never",
                 "-o", str(out), "--", *args)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == native.stdout, traced.stderr
    history = cli("history", str(out))
    assert history.returncode == 0, history.stderr
    entries = [line for line in history.stdout.splitlines() if line.split()[-1:] == ["on_segv"]]
    assert len(entries) == 7, history.stdout[-3000:]


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_a_program_that_flips_the_alignment_check_flag_runs_as_natively(build, mode):
    """rel_acflag sets EFLAGS.AC, reads it back, branches on it and puts it back (the
    JVM's CPU probe): under Stalker its code ran with AC set and the program died of
    SIGSEGV. It must see AC change, and end with it clear, as natively."""
    exe = str(build("rel_acflag"))
    native = subprocess.run([exe], capture_output=True, text=True, check=True)
    assert native.stdout == "AC changeable 3 of 3, flipped bit 0x40000, AC now 0\n"
    traced = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never", "--", exe)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == native.stdout


def test_a_fault_that_the_programs_handler_raises_again_is_reported_where_it_was(tmp_path):
    """Python's faulthandler takes SIGSEGV, prints the Python stack, restores the default
    action and raises the signal again: the program dies of the raise, in `raise`. The
    crash report shows the fault the handler took (strlen reading address 0), with a note
    saying so; before, it showed `__pthread_kill_implementation`."""
    import sys

    code = "import ctypes; ctypes.string_at(0)"
    native = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                            capture_output=True, text=True)
    assert native.returncode == -11
    assert "Fatal Python error: Segmentation fault" in native.stderr
    out = tmp_path / "fh.btrace"
    traced = cli("run", "--backend", "stalker", "-o", str(out), "--",
                 sys.executable, "-X", "faulthandler", "-c", code)
    assert traced.returncode == 128 + 11, traced.stderr
    assert "Fatal Python error: Segmentation fault" in traced.stderr
    faulted = [line for line in traced.stderr.splitlines() if "faulted at:" in line]
    assert len(faulted) == 1 and "strlen" in faulted[0], traced.stderr[-3000:]
    assert "fault address: 0x0" in traced.stderr
    stats = cli("stats", str(out))
    assert "raised it again" in stats.stdout, stats.stdout[-2000:]


@pytest.mark.parametrize("follow", [True, False])
def test_a_vfork_child_leaves_nothing_in_its_parents_records(build, tmp_path, follow):
    """rel_vfork's children call child_only() before they exec, in their parent's memory
    (docs/stalker.md, "vfork"): the child leaves Stalker right after its system call, so
    the parent's records hold none of it (before, child_only was in the parent's thread,
    3 times 21 calls). The output is native's, children followed or not."""
    exe = str(build("rel_vfork"))
    native = subprocess.run([exe], capture_output=True, text=True, check=True)
    assert native.stdout == "children exited 0\n"
    out = tmp_path / "vfork.btrace"
    flags = [] if follow else ["--no-follow-children"]
    traced = cli("run", "--backend", "stalker", "--report", "never", *flags, "-o", str(out),
                 "--", exe)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == native.stdout
    history = cli("history", str(out))
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert any(line.split()[-1:] == ["waitpid"] for line in lines), history.stdout[-2000:]
    assert not any("child_only" in line for line in lines), history.stdout[-2000:]


def test_code_rewritten_after_it_ran_runs_as_rewritten_with_smc_check(build, tmp_path):
    """rel_smc writes a function into a page, runs it 8 times, changes a constant in it
    (as a JIT patches code it already ran) and runs it 8 times more. Stalker trusts code
    that ran unchanged and links to it directly, so by default the old code runs on: the
    program sees the wrong sum and ends with status 1, and `run` repeats the trace's
    note (code from no file's memory, and the option). `--smc-check all` runs it as
    rewritten: the output is native's."""
    exe = str(build("rel_smc"))
    native = subprocess.run([exe], capture_output=True, text=True, check=True)
    assert native.stdout == "sum 1624\n"
    plain = tmp_path / "plain.btrace"
    traced = cli("run", "--backend", "stalker", "-o", str(plain), "--", exe)
    # the old constant ran on (Stalker trusted the code after its second run): the
    # program sees the wrong sum and ends with status 1, and `run` says why it may have
    assert traced.stdout == "sum 1616\n" and traced.returncode == 1, traced.stderr
    assert "--smc-check all makes it run as rewritten" in traced.stderr, traced.stderr
    stats = cli("stats", str(plain))
    assert "memory that is no file's" in stats.stdout, stats.stdout[-2000:]
    checked = tmp_path / "checked.btrace"
    for mode in ("ring", "stream"):
        traced = cli("run", "--backend", "stalker", "--mode", mode, "--report", "never",
                     "--smc-check", "all", "-o", str(checked), "--", exe)
        assert traced.returncode == 0, traced.stderr
        assert traced.stdout == native.stdout
    stats = cli("stats", str(checked))
    assert "--smc-check all" in stats.stdout and "no file's" not in stats.stdout
