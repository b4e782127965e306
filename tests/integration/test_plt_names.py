"""PLT stubs are named ``NAME@plt`` as objdump, GDB and perf name them (symbols/plt.py):
every layout the linker makes (lazy ``.plt``, ``-z now``, IBT's ``.plt.sec``,
``.plt.got``), libc's own PLT for its ifunc'd functions, and the names in a report of a
real recording."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import cli

from branchtrace.symbols import load_elf

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LAYOUTS = {"lazy": ("-Wl,-z,lazy",), "now": ("-Wl,-z,now",),
           "ibt": ("-fcf-protection", "-Wl,-z,ibtplt")}


def objdump_plt_labels(path: str) -> list[tuple[int, str]]:
    """(address, name) of each ``<NAME@plt>`` label objdump prints for the PLT sections."""
    out = subprocess.run(["objdump", "-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got",
                          path], capture_output=True, text=True, check=True).stdout
    return [(int(a, 16), n) for a, n in re.findall(r"^([0-9a-f]+) <(.+@plt)>:$", out, re.M)]


def names_at(path: str, addresses: list[int]) -> list[str | None]:
    img = load_elf(path)
    assert img is not None
    index, offset = img.lookup_functions(np.array(addresses, dtype=np.uint64))
    return [img.names[i] if i >= 0 and o == 0 else None for i, o in zip(index, offset)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_stub_of_an_executable_has_objdumps_name(build, layout):
    exe = str(build("plt_calls", *LAYOUTS[layout]))
    labels = objdump_plt_labels(exe)
    assert {"puts@plt", "strcmp@plt"} <= {n for _, n in labels}
    assert names_at(exe, [a for a, _ in labels]) == [n for _, n in labels]
    img = load_elf(exe)
    assert img is not None and img.symbol_address("puts") is None   # not the stub's
    sections = subprocess.run(["readelf", "-SW", exe], capture_output=True, text=True,
                              check=True).stdout
    plt0 = int(re.search(r"\s\.plt\s+PROGBITS\s+([0-9a-f]+)", sections).group(1), 16)
    assert names_at(exe, [plt0]) == [".plt"]       # the header every lazy stub jumps to


def test_libcs_own_plt_names_its_ifunc_targets():
    """objdump calls an IRELATIVE slot's stub ``*ABS*+0xADDR@plt``; the name is that of
    the ifunc symbol at ADDR (its resolver), e.g. ``strnlen@plt``."""
    labels = objdump_plt_labels(LIBC)
    if not labels:
        pytest.skip(f"{LIBC} has no PLT here")
    img = load_elf(LIBC)
    assert img is not None
    got = names_at(LIBC, [a for a, _ in labels])
    absolute = 0
    for (_, want), name in zip(labels, got):
        assert name is not None and name.endswith("@plt"), (want, name)
        m = re.fullmatch(r"\*ABS\*\+(0x[0-9a-f]+)@plt", want)
        if m:
            absolute += 1
            # the function at the resolver's address (memcpy has two: one per version)
            assert names_at(LIBC, [int(m.group(1), 16)]) == [name[:-4]], (want, name)
        else:
            assert name == want
    assert absolute > 0, "libc calls none of its ifunc'd functions through its PLT?"


@pytest.mark.backend("stalker")
def test_history_and_stats_name_the_stubs(build, tmp_path):
    exe = build("plt_calls", "-Wl,-z,now")      # bound at start: the stub jumps to strcmp
    trace = tmp_path / "plt.btrace"
    r = cli("run", "--backend", "stalker", "--mode", "stream", "--start", "entry",
            "-o", str(trace), "--", str(exe))
    assert r.returncode == 0, r.stderr
    r = cli("history", str(trace), "--calls", "--no-indent")
    assert r.returncode == 0, r.stderr
    functions = [ln.split("\t")[1].split(" ")[0] for ln in r.stdout.splitlines() if "\t" in ln]
    assert "puts@plt" in functions and "strcmp@plt" in functions
    # strcmp@plt is entered from compare, and compare is where it returns to
    at = functions.index("strcmp@plt")
    assert functions[at - 1] == "compare" and "strcmp" in functions[at + 1], functions
    assert functions[at + 2] == "compare"
    r = cli("stats", str(trace), "--top", "200")
    assert re.search(r"\bputs@plt \(plt_calls", r.stdout), r.stdout
