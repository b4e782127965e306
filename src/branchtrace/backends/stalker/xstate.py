"""A self-test of the register state under the stalker backend, for ``branchtrace doctor``
(docs/stalker.md, "AVX-512 state"): a small Python program, run under ``branchtrace run``,
puts known values in all 512 bits of zmm0-31 and in k0-k7, calls into code that never ran
before (so that Stalker compiles it in its C code and returns through its epilog helper),
and reads them back, 64 times. Frida 17.26 without the agent's fix loses bits 256-511 of
zmm0-15 there.
"""

from __future__ import annotations

import subprocess
import sys

from .agent_code import cpu_flags

#: check(in=rdi, out=rsi, target=rdx), as GNU as assembles:
#:     .irp r,0..31: vmovdqu64 r*64(%rdi), %zmmR      .irp r,0..7: kmovq 2048+r*8(%rdi), %kR
#:     sub $8, %rsp; call *%rdx; add $8, %rsp
#:     .irp r,0..31: vmovdqu64 %zmmR, r*64(%rsi)      .irp r,0..7: kmovq %kR, 2048+r*8(%rsi)
#:     vzeroupper; ret
CHECK = (
    "62f1fe486f0762f1fe486f4f0162f1fe486f570262f1fe486f5f0362f1fe486f670462f1fe486f6f0562f1fe"
    "486f770662f1fe486f7f076271fe486f47086271fe486f4f096271fe486f570a6271fe486f5f0b6271fe486f"
    "670c6271fe486f6f0d6271fe486f770e6271fe486f7f0f62e1fe486f471062e1fe486f4f1162e1fe486f5712"
    "62e1fe486f5f1362e1fe486f671462e1fe486f6f1562e1fe486f771662e1fe486f7f176261fe486f47186261"
    "fe486f4f196261fe486f571a6261fe486f5f1b6261fe486f671c6261fe486f6f1d6261fe486f771e6261fe48"
    "6f7f1fc4e1f8908700080000c4e1f8908f08080000c4e1f8909710080000c4e1f8909f18080000c4e1f890a7"
    "20080000c4e1f890af28080000c4e1f890b730080000c4e1f890bf380800004883ec08ffd24883c40862f1fe"
    "487f0662f1fe487f4e0162f1fe487f560262f1fe487f5e0362f1fe487f660462f1fe487f6e0562f1fe487f76"
    "0662f1fe487f7e076271fe487f46086271fe487f4e096271fe487f560a6271fe487f5e0b6271fe487f660c62"
    "71fe487f6e0d6271fe487f760e6271fe487f7e0f62e1fe487f461062e1fe487f4e1162e1fe487f561262e1fe"
    "487f5e1362e1fe487f661462e1fe487f6e1562e1fe487f761662e1fe487f7e176261fe487f46186261fe487f"
    "4e196261fe487f561a6261fe487f5e1b6261fe487f661c6261fe487f6e1d6261fe487f761e6261fe487f7e1f"
    "c4e1f8918600080000c4e1f8918e08080000c4e1f8919610080000c4e1f8919e18080000c4e1f891a6200800"
    "00c4e1f891ae28080000c4e1f891b630080000c4e1f891be38080000c5f877c3"
)

CALLS = 64

#: The program run under the tracer: the check in an executable mapping, then CALLS
#: targets of 16 bytes each (`jmp +2; ud2; ret`: two new blocks), one call per target.
PROBE = f"""
import ctypes, mmap, sys
code = bytes.fromhex({CHECK!r})
m = mmap.mmap(-1, 8192, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m[:len(code)] = code
for i in range({CALLS}):
    m[4096 + 16 * i:4096 + 16 * i + 5] = bytes((0xeb, 0x02, 0x0f, 0x0b, 0xc3))
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
check = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(base)
state = bytes((7 * i + 1) % 251 + 1 for i in range(2112))
src = ctypes.create_string_buffer(state, 2112)
bad = 0
for i in range({CALLS}):
    out = ctypes.create_string_buffer(2112)
    check(src, out, base + 4096 + 16 * i)
    bad += out.raw != state
print("xstate", bad, "of", {CALLS})
"""


def self_test(timeout: float = 60.0) -> tuple[bool | None, str]:
    """Whether the AVX-512 state survives Stalker here (None: nothing to test, or the
    test could not run), and a line that says so."""
    if "avx512f" not in cpu_flags() or "avx512bw" not in cpu_flags():
        return None, "no AVX-512 on this CPU: nothing to check"
    argv = [sys.executable, "-m", "branchtrace", "run", "--backend", "stalker",
            "--report", "never", "--", sys.executable, "-I", "-S", "-c", PROBE]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"the self-test could not run: {exc}"
    words = result.stdout.split()
    if result.returncode != 0 or len(words) != 4 or words[0] != "xstate":
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return None, f"the self-test could not run: {reason}"
    if words[1] == "0":
        return True, f"kept (zmm0-31 and k0-k7 unchanged after {CALLS} calls into new code)"
    return False, (f"LOST after {words[1]} of {CALLS} calls into new code: programs that "
                   "use AVX-512 may misbehave under the stalker backend")
