"""C++ names in reports: demangled everywhere a person reads them
(``shop::Inventory::take(unsigned long)``), mangled in lcov's FN records (genhtml
demangles those itself); and the fault of a C++ crash placed on its line by both
backends, where the faulting instruction's bytes occur twice in its block."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import FIXTURES, cli

from branchtrace.symbols.demangle import available, demangle

pytestmark = pytest.mark.skipif(not available(), reason="no libstdc++ to demangle with")
SOURCE = FIXTURES / "cpp_crash.cc"
TAKE = "shop::Inventory::take(unsigned long)"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cpp") / "cpp_crash"
    subprocess.run(["g++", "-g", "-O0", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def crash_line() -> int:
    lines = SOURCE.read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if "CRASH_LINE" in ln)


def test_demangle():
    assert demangle("_ZN4shop9Inventory4takeEm") == TAKE
    assert demangle("_ZNSt8ios_base4InitC1Ev@plt") == "std::ios_base::Init::Init()@plt"
    assert demangle("_ZN4core3fmt5write17h0123456789abcdefE") == "core::fmt::write"   # Rust
    for name in ("main", "_Zbogus", "", "_R_not_v0_handled"):
        assert demangle(name) == name


def test_hostile_names_come_back_as_they_are():
    """Names a hostile binary may hold: deep nesting the demangler refuses (its recursion
    limit), and names past MAX_MANGLED, never given to it."""
    for name in ("_Z1f" + "P" * 4000 + "i", "_Z" + "N1a" * 1300 + "E",
                 "_Z1f" + "P" * 9000 + "i", "_Z1f" + "A1_" * 1300 + "i"):
        assert demangle(name) == name


@pytest.mark.parametrize("backend", ["stalker", "ptrace"])
def test_crash_report_is_demangled_and_on_the_line(program, backend, tmp_path):
    pytest.importorskip("capstone")
    report = tmp_path / "crash.json"
    trace = tmp_path / "crash.btrace"
    r = cli("run", "--backend", backend, "--format", "json", "--report-to", str(report),
            "--last", "4", "-o", str(trace), "--", str(program), "crash")
    assert r.returncode == 128 + 11, r.stderr
    doc = json.loads(report.read_text())
    fault = doc["exit"]["fault_pc"]
    assert (fault["function"], fault["line"]) == (TAKE, crash_line())
    names = {b[end]["function"] for b in doc["branches"] for end in ("from", "to")}
    assert TAKE in names and not any(n and n.startswith("_Z") for n in names)
    text = cli("crash", str(trace), "--last", "8").stdout
    assert TAKE in text and "_ZN" not in text
    assert "restock(shop::Inventory&, unsigned long)" in cli("history", str(trace)).stdout
    # lcov's FN records keep the linker's names: genhtml demangles them
    lcov = cli("coverage", str(trace), "--format", "lcov", "-o", "-").stdout
    assert re.search(r"^FN:\d+,_ZN4shop9Inventory4takeEm$", lcov, re.M), lcov
