"""The call stack at a crash, two ways (analysis/stack.py): unwound from the stack the
backend copied, and replayed from the trace's calls and returns; on an intact stack they
agree, on a smashed one the difference is the finding. Both backends."""

from __future__ import annotations

import subprocess

import pytest
from conftest import FIXTURES

import branchtrace
from branchtrace.analysis.stack import disagreements, replayed, unwound
from branchtrace.backends import Target

BACKENDS = ["stalker", "ptrace"]


def built(tmp_path, name: str, *flags: str):
    exe = tmp_path / name
    subprocess.run(["gcc", "-g", *flags, "-o", str(exe), str(FIXTURES / f"{name}.c")],
                   check=True)
    return exe


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_intact_stack_agrees_with_the_trace(tmp_path, backend):
    exe = built(tmp_path, "unwind_deep", "-O2")
    trace = branchtrace.record(Target(argv=(str(exe), "x")),
                               branchtrace.RecordConfig(backend=backend))
    u = unwound(trace)
    assert u is not None and u.end == "outermost frame"
    r = replayed(trace, trace.exit.tid, trace.exit.fault_pc)
    names = [f.function for f in u.frames]
    assert names[1:3] == ["middle", "cmp"] and "main" in names
    assert [f.function for f in r][:len(r)] == names[:len(r)]
    assert disagreements(u.frames, r) == []
    # replayed frames say where they were entered: cmp by qsort's call
    cmp = next(f for f in r if f.function == "cmp")
    assert cmp.entered is not None and trace.branches(trace.exit.tid)["kind"][cmp.entered] \
        in (branchtrace.BranchKind.CALL, branchtrace.BranchKind.INDIRECT_CALL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_smashed_stack_disagrees_with_the_trace(tmp_path, backend):
    exe = built(tmp_path, "smash", "-O0", "-fno-stack-protector")
    trace = branchtrace.record(Target(argv=(str(exe), "x")),
                               branchtrace.RecordConfig(backend=backend))
    assert trace.exit.signal == 11
    r = replayed(trace, trace.exit.tid, trace.exit.fault_pc)
    assert [f.function for f in r[:2]] == ["smash", "main"]      # the trace still knows
    u = unwound(trace)
    if backend == "stalker":
        # the return faulted in Stalker's code, where the registers are not the
        # program's: no copy, and a note says why
        assert u is None
        assert any("no copy of the crashed thread's stack" in n for n in trace.notes)
        return
    assert u is not None and [f.function for f in u.frames] == ["smash", None]
    assert u.frames[1].pc == 0x4141414141414141 and "no module" in u.end
    assert disagreements(u.frames, r) == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_crash_report_shows_both_stacks(tmp_path, backend):
    import json

    from conftest import cli
    deep = built(tmp_path, "unwind_deep", "-O2")
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", "-", "--",
            str(deep), "x")
    doc = json.loads(r.stdout)
    names = [f["function"] for f in doc["stack"]]
    assert names[1:3] == ["middle", "cmp"] and doc["stack_end"] == "outermost frame"
    assert doc["stack_disagreements"] == []
    assert [f["function"] for f in doc["replayed_stack"]][:3] == names[:3]
    assert all(f["entered"] is None or f["entered"] < 0 for f in doc["replayed_stack"])
    text = cli("run", "--backend", backend, "--", str(deep), "x").stderr
    assert "Call stack (unwound from its stack; the calls in the trace agree):" in text
    assert "return (int)middle(NULL, 3);" in text             # cmp's source line
    smash = built(tmp_path, "smash", "-O0", "-fno-stack-protector")
    text = cli("run", "--backend", backend, "--", str(smash), "x").stderr
    assert "Call stack replayed from the trace's calls and returns:" in text
    if backend == "ptrace":
        assert "!! the trace's calls say main here" in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_in_libc_shows_the_programs_own_last_steps(tmp_path, backend):
    """assert fails: the report names the program's frame that called it (the assert's
    line) and its last calls out of its own code, through its PLT; --own libc.so.6 makes
    the fault the program's own, and the section goes."""
    import json

    from conftest import cli
    exe = built(tmp_path, "assert_deep", "-O0")
    line = next(i for i, t in enumerate((FIXTURES / "assert_deep.c").read_text()
                                       .splitlines(), 1) if "ASSERT_LINE" in t)
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", "-", "--",
            str(exe), "toolong")
    doc = json.loads(r.stdout)
    assert doc["exit"]["signal"]["name"] == "SIGABRT"
    own = doc["own"]
    frame = doc[own["frame_of"]][own["frame"]]
    assert (frame["function"], frame["line"]) == ("check", line)
    assert "assert(strlen(s) < 4);" in (frame["source"] or "")
    callees = [c["to"]["function"] for c in own["calls"]]
    assert callees[-2:] == ["strlen@plt", "__assert_fail@plt"], callees
    assert all(c["from"]["function"] == "check" for c in own["calls"][-2:])
    text = cli("run", "--backend", backend, "--", str(exe), "toolong").stderr
    assert "The program's own last steps (assert_deep; --own adds modules):" in text
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", "-",
            "--own", "libc.so.6", "--", str(exe), "toolong")
    assert json.loads(r.stdout)["own"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abort_is_unwound_past_abort_to_main(tmp_path, backend):
    """Frida's own agent hooks abort (and exit) with an onLeave listener: Interceptor
    puts its trampoline's address where abort's return address was. The stalker agent
    puts the real one back in the stack's copy (crash.js, untrampoline): the unwound
    stack of an assert, and of an uncaught C++ exception, goes on past abort to main."""
    import json

    from conftest import cli
    exe = built(tmp_path, "assert_deep", "-O0")
    line = next(i for i, t in enumerate((FIXTURES / "assert_deep.c").read_text()
                                       .splitlines(), 1) if "ASSERT_LINE" in t)
    doc = json.loads(cli("run", "--backend", backend, "--format", "json", "--report-to",
                         "-", "--", str(exe), "toolong").stdout)
    assert doc["exit"]["signal"]["name"] == "SIGABRT"
    assert doc["stack_end"] == "outermost frame" and doc["stack_disagreements"] == []
    names = [f["function"] for f in doc["stack"]]
    assert names.index("abort") < names.index("__assert_fail") < names.index("check"), names
    at = names.index("check")
    assert names[at:at + 3] == ["check", "outer", "main"]
    assert (doc["stack"][at]["line"], doc["stack"][at]["file"].rsplit("/", 1)[-1]) == \
        (line, "assert_deep.c")

    cpp = tmp_path / "cpp_throw"
    subprocess.run(["g++", "-g", "-O0", "-o", str(cpp), str(FIXTURES / "cpp_throw.cc")],
                   check=True)
    doc = json.loads(cli("run", "--backend", backend, "--format", "json", "--report-to",
                         "-", "--", str(cpp)).stdout)
    assert doc["stack_end"] == "outermost frame" and doc["stack_disagreements"] == []
    names = [f["function"] for f in doc["stack"]]
    assert names.index("abort") < names.index("__cxa_throw") < names.index("main"), names
    assert "shop::Inventory::take(unsigned long)" in names

    # a crash under exit() (an atexit handler): past exit to the function that called it
    doc = json.loads(cli("run", "--backend", backend, "--format", "json", "--report-to",
                         "-", "--", str(built(tmp_path, "atexit_crash", "-O0"))).stdout)
    assert doc["exit"]["signal"]["name"] == "SIGSEGV"
    assert doc["stack_end"] == "outermost frame" and doc["stack_disagreements"] == []
    names = [f["function"] for f in doc["stack"]]
    assert names[0] == "bye" and names.index("exit") < names.index("finish") < \
        names.index("main"), names


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_uncaught_exception_names_its_thrower(tmp_path, backend):
    """std::terminate's abort is thousands of branches after the throw: the program's
    own last steps still name the demangled thrower, its line, and its __cxa_throw."""
    import json

    from conftest import cli
    exe = tmp_path / "cpp_throw"
    subprocess.run(["g++", "-g", "-O0", "-o", str(exe), str(FIXTURES / "cpp_throw.cc")],
                   check=True)
    line = next(i for i, t in enumerate((FIXTURES / "cpp_throw.cc").read_text()
                                       .splitlines(), 1) if "THROW_LINE" in t)
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", "-", "--",
            str(exe))
    doc = json.loads(r.stdout)
    assert doc["exit"]["signal"]["name"] == "SIGABRT"
    own = doc["own"]
    frame = doc[own["frame_of"]][own["frame"]]
    assert (frame["function"], frame["line"]) == ("shop::Inventory::take(unsigned long)", line)
    last = own["calls"][-1]
    assert last["to"]["function"] == "__cxa_throw@plt"
    assert last["from"]["function"] == "shop::Inventory::take(unsigned long)"
    assert last["index"] < -1000                     # far behind the last branches


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stack_overflow_is_unwound_and_folded(tmp_path, backend):
    """The stack pointer is past the stack's end (in its guard) at the fault: the copy
    starts where the stack's mapping does. The unwinder walks its 256 frames; the report
    folds the recursion and says how deep the trace's calls go (1 MiB of stack here)."""
    import json
    import resource

    from conftest import cli

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))

    exe = built(tmp_path, "stack_overflow", "-O0")
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", "-", "--",
            str(exe), preexec_fn=small_stack)
    doc = json.loads(r.stdout)
    assert doc["exit"]["signal"]["name"] == "SIGSEGV"
    names = [f["function"] for f in doc["stack"]]
    assert len(names) == 256 and set(names) == {"down"} and doc["stack_end"] == "256 frames"
    assert len(doc["replayed_stack"]) > 1000 and doc["stack_disagreements"] == []
    text = cli("run", "--backend", backend, "--", str(exe), preexec_fn=small_stack).stderr
    assert "#1..#254 ×254" in text and "frames open)" in text


def test_after_exec_the_programs_own_code_is_the_program_it_runs(tmp_path):
    """sh -c 'exec ./assert_deep toolong': the maps hold sh too; the own code is the
    program the argv names, not the shell it replaced."""
    import json

    from conftest import cli
    exe = built(tmp_path, "assert_deep", "-O0")
    r = cli("run", "--backend", "stalker", "--format", "json", "--report-to", "-", "--",
            "sh", "-c", f"exec {exe} toolong")
    doc = json.loads(r.stdout)
    assert [m.rsplit("/", 1)[-1] for m in doc["own"]["modules"]] == ["assert_deep"]
    frame = doc[doc["own"]["frame_of"]][doc["own"]["frame"]]
    assert frame["function"] == "check"
