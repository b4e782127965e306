"""Where a traced program's time goes inside Stalker's generated code.

`perf` sees the generated code as `[JIT]` (anonymous executable memory) and cannot say
what it is. This runs `branchtrace run` (ring mode) on a command, samples the program
with `perf record -e cpu-clock` for a while, copies the program's anonymous executable
mappings out of /proc/PID/mem while it still runs, and sorts every sample that fell in
them by what the code there is (docs/stalker.md, "The emitted code"):

- record: our recording code at the start of a block (and its pend path);
- body: the program's own instructions, copied;
- exit (Stalker): Stalker's code for the block's branch, after the body's end marker;
- exit (our lookup): our return and indirect-branch cache lookups;
- other generated code: Stalker's shared helpers (the context save and restore of a
  call into its C code), our CModules' code.

Samples in Frida's agent, libc, the kernel are counted by their `perf` object.

    python bench/jit_profile.py --delay 4 --duration 6 -- \\
        /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -quiet -O2 big.c -o /dev/null

Needs perf (software clock: no PMU needed) and capstone; Linux x86-64 only.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKER_OP = b"\x0f\x1f\x80"          # nop dword [rax+disp32]: the body's end marker
SAVE_RAX = b"\x48\xa3"                # mov [moffs64], rax: our code's first instruction
SAVE_RCX_LOW = b"\x48\x89\x0c\x25"      # mov [disp32], rcx: the same below 2 GiB
RESTORE_RCX_LOW = b"\x48\x8b\x0c\x25"   # mov rcx, [disp32]: its last instruction there


def program_pid(bt: subprocess.Popen[bytes], exe: str) -> int | None:
    """The traced program: a child of branchtrace's reaper running `exe`."""
    want = os.path.realpath(shutil.which(exe) or exe)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == bt.pid:
            continue
        try:
            if os.path.realpath(f"/proc/{entry}/exe") == want:
                return int(entry)
        except OSError:
            continue
    return None


def dump_regions(pid: int) -> list[tuple[int, int, bytes]]:
    regions = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split()
            if "x" not in fields[1] or (len(fields) > 5 and fields[5]):
                continue                  # only anonymous executable memory
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                regions.append((lo, hi, mem.read(hi - lo)))
            except (OSError, OverflowError, ValueError):
                continue
    return regions


def classify(regions: list[tuple[int, int, bytes]], samples: list[tuple[int, str]]
             ) -> collections.Counter[str]:
    import capstone  # type: ignore[import-untyped]

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    bases: collections.Counter[int] = collections.Counter()
    markers: collections.Counter[bytes] = collections.Counter()
    for _, _, data in regions:
        i = data.find(SAVE_RAX)
        while 0 <= i < len(data) - 10:
            bases[struct.unpack_from("<Q", data, i + 2)[0]] += 1
            i = data.find(SAVE_RAX, i + 1)
        i = data.find(MARKER_OP)
        while 0 <= i < len(data) - 7:
            markers[data[i + 3:i + 7]] += 1
            i = data.find(MARKER_OP, i + 1)
    contexts = [t for t, n in bases.most_common(64) if n > 100 and t % 4096 == 0]
    marker = MARKER_OP + markers.most_common(1)[0][0] if markers else b"\xff" * 8
    starts = [SAVE_RAX + struct.pack("<Q", t) for t in contexts]
    starts += [SAVE_RCX_LOW + struct.pack("<I", t + 8) for t in contexts if t < 1 << 31]
    restore = {RESTORE_RCX_LOW + struct.pack("<I", t + 8) for t in contexts if t < 1 << 31}
    out: collections.Counter[str] = collections.Counter()
    for ip, dso in samples:
        region = next(((lo, data) for lo, hi, data in regions if lo <= ip < hi), None)
        if region is None:
            out[f"outside generated code: {dso}"] += 1
            continue
        lo, data = region
        off = ip - lo
        base = max(0, off - 4096)
        window = data[base:off + 1]
        m = window.rfind(marker)
        r = max((window.rfind(p) for p in starts), default=-1)
        if m < 0 and r < 0:
            out["generated code: other (Stalker's helpers, CModules)"] += 1
        elif m > r:
            ours = data[base + m + 7:base + m + 9] == SAVE_RAX   # a lookup follows the end
            out["generated code: exit (our lookup)" if ours
                else "generated code: exit (Stalker)"] += 1
        else:
            body = None
            for insn in md.disasm(data[base + r:base + r + 400], lo + base + r):
                if insn.mnemonic == "jmp" and insn.bytes[0] == 0xE9:
                    body = int(insn.op_str, 16)     # our code ends with `jmp body`
                    break
                if bytes(insn.bytes) in restore:    # or, below 2 GiB, runs on into it
                    body = insn.address + insn.size
                    break
            out["generated code: record" if body is None or ip < body
                else "generated code: body"] += 1
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=float, default=2.0, help="seconds before sampling")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of sampling")
    ap.add_argument("--frequency", type=int, default=4000)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or shutil.which("perf") is None:
        print("jit_profile: give a command after --, and install perf", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        bt = subprocess.Popen([sys.executable, "-m", "branchtrace", "run", "--report",
                               "never", "--", *command], stdout=subprocess.DEVNULL)
        time.sleep(args.delay)
        pid = program_pid(bt, command[0])
        if pid is None:
            bt.wait()
            print("jit_profile: the program ended before sampling began", file=sys.stderr)
            return 1
        data = Path(tmp) / "perf.data"
        subprocess.run(["perf", "record", "-q", "-F", str(args.frequency), "-e",
                        "cpu-clock", "-p", str(pid), "-o", str(data), "--", "sleep",
                        str(args.duration)], check=True, stderr=subprocess.DEVNULL)
        regions = dump_regions(pid)
        status = bt.wait()
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,dso"],
                                capture_output=True, text=True, check=True).stdout
    samples = []
    for line in script.splitlines():
        fields = line.split()
        if fields:
            samples.append((int(fields[0], 16), " ".join(fields[1:])))
    shares = classify(regions, samples)
    total = sum(shares.values())
    print(f"{' '.join(command)}: {total} samples of pid {pid}, branchtrace exit {status}")
    for name, n in shares.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
