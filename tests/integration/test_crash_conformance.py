"""Crash facts, the same under every backend: signal, fault pc, fault address, thread.

tests/fixtures/crash_cases.c dies one way per case. Each case runs under ptrace (the
reference: it reads the faulting thread's registers and siginfo at the signal stop) and
under every other available backend; their JSON crash reports must agree on the signal,
the instruction that faulted (module, function, offset, disassembly), the fault address
(si_addr) and the thread that took the signal (the main thread or the other one). ASLR
moves everything between runs, so addresses are compared as functions and offsets, or as
"the same as the fault pc"; the recursion runs on a stack at a fixed address.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import pytest
from conftest import cli, marker_line

from branchtrace.backends import probe_all

BACKENDS = [name for name, probe in probe_all() if probe.available]
OTHERS = [name for name in BACKENDS if name != "ptrace"]

if "ptrace" not in BACKENDS or not OTHERS:
    pytest.skip("the crash conformance suite needs ptrace and another backend",
                allow_module_level=True)

#: case -> (signal, the fault pc's function (a prefix; None: outside every module), its
#: line's marker in the fixture (None: in libc), the thread: main or other)
CASES = {
    "uaf": ("SIGSEGV", None, None, "main"),        # the fetch at the freed pointer faults
    "poison": ("SIGSEGV", "fire", "UAF_CALL", "main"),  # non-canonical: the call faults
    "recurse": ("SIGSEGV", "recurse", "RECURSE", "other"),
    "abort": ("SIGABRT", "__pthread_kill_implementation", None, "main"),
    "handled_abort": ("SIGABRT", "__pthread_kill_implementation", None, "main"),
    "fpe": ("SIGFPE", "divide", "DIVIDE", "main"),
    "ill": ("SIGILL", "illegal", "UD2", "main"),
    "bus": ("SIGBUS", "main", "PAST_EOF", "main"),       # past the end of a mapped file
    "libc": ("SIGSEGV", "__strlen", None, "main"),  # strlen(NULL): in libc's strlen
    "thread": ("SIGSEGV", "null_write", "NULL_WRITE", "other"),
}


@lru_cache(maxsize=None)
def report(exe: str, backend: str, case: str, tmp: str) -> dict[str, Any]:
    path = os.path.join(tmp, f"{backend}-{case}.json")
    result = cli("run", "--backend", backend, "--format", "json", "--last", "16",
                 "--report-to", path, "--", exe, case, timeout=300)
    assert result.returncode >= 128, (backend, case, result.returncode, result.stderr)
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


def facts(doc: dict[str, Any]) -> dict[str, Any]:
    """What must be the same under every backend, free of ASLR."""
    ex = doc["exit"]
    pc = ex.get("fault_pc") or {}
    address = ex.get("fault_address")
    module = os.path.basename(pc["module"]) if pc.get("module") else None
    return {
        "signal": ex["signal"]["name"],
        "pc": (module, pc.get("function"), pc.get("offset"), pc.get("line")),
        "pc in a module": module is not None,
        "instruction": ex.get("fault_instruction"),
        "address": None if address is None else "the pc" if address == pc.get("address")
        else address,
        "thread": "main" if doc["thread"] == doc["pid"] else "other",
    }


@pytest.fixture(scope="module")
def exe(build) -> str:
    return str(build("crash_cases"))


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("crash_reports"))


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_crash_facts_as_ptrace(exe, tmp, backend, case):
    reference = facts(report(exe, "ptrace", case, tmp))
    other = facts(report(exe, backend, case, tmp))
    assert other == reference
    signal, function, marker, thread = CASES[case]
    # the reference itself is what the fixture says (so that agreeing means something)
    assert reference["signal"] == signal and reference["thread"] == thread
    if function is None:
        assert reference["pc"][1] is None
    else:
        assert (reference["pc"][1] or "").startswith(function), reference
    if marker is not None:
        assert reference["pc"][3] == marker_line("crash_cases.c", marker)
    if case in ("uaf",):
        assert reference["address"] == "the pc" and not reference["pc in a module"]
    if case in ("fpe", "ill"):
        assert reference["address"] == "the pc"   # si_addr of SIGFPE/SIGILL: the insn
    if case in ("abort", "handled_abort"):
        assert reference["address"] is None
    if case in ("poison", "libc", "thread"):
        assert reference["address"] == 0
    if case == "bus":
        assert reference["address"] == 0x100000100000 + 4096 + 8


def branch_names(doc: dict[str, Any]) -> list[tuple[str, Any, Any, Any, Any]]:
    return [(b["kind"], b["from"]["function"], b["from"]["offset"], b["to"]["function"],
             b["to"]["offset"]) for b in doc["branches"]]


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("case", ["abort", "handled_abort"])
def test_abort_ends_with_the_same_branches(exe, tmp, backend, case):
    """Frida's SIGABRT handling let abort() go on past the first raise (to reset the
    action and raise again) where natively the first raise kills; and a sigaction call
    went through Interceptor's hook (`jump sigaction+0x0 => sigaction+0x0`). The last 16
    branches are the reference's, one for one."""
    reference = branch_names(report(exe, "ptrace", case, tmp))
    other = branch_names(report(exe, backend, case, tmp))
    assert len(reference) == 16 and other == reference
    calls_of_sigaction = [b for b in reference if b[3] == "sigaction"]
    assert bool(calls_of_sigaction) == (case == "handled_abort")


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_last_branches_are_the_same(exe, tmp, backend, case):
    """Up to the fault; for `uaf`, the call to the freed pointer too (under Stalker no
    block there ever ran: the agent records the one the thread was entering)."""
    reference = branch_names(report(exe, "ptrace", case, tmp))[-2:]
    other = branch_names(report(exe, backend, case, tmp))[-2:]
    assert len(reference) == 2 and other == reference
    if case == "uaf":
        kind, source, _, target, _ = reference[-1]
        assert (kind, source, target) == ("indirect_call", "fire", None)


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_no_fake_branch_into_sigaction(exe, tmp, backend, case):
    names = branch_names(report(exe, backend, case, tmp))
    assert names
    assert not [b for b in names if b[0] == "jump" and b[1] == b[3] == "sigaction"
                and b[2] == b[4] == 0], names


@pytest.mark.parametrize("backend", OTHERS)
def test_the_stalker_report_has_no_block_start_note(exe, tmp, backend):
    for case in CASES:
        notes = report(exe, backend, case, tmp)["notes"]
        assert not [n for n in notes if "start of the last block" in n], (case, notes)
