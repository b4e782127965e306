"""Why the system forbids tracing a process, in words: what every backend says when an
attach is refused.

The kernel lets a tracer attach (``ptrace_may_access``) when the tracer's real user and
group ids equal all of the target's (real, effective, saved), the target is dumpable,
and the Yama LSM agrees (``/proc/sys/kernel/yama/ptrace_scope``: 0 classic, 1 only
descendants, 2 only with CAP_SYS_PTRACE, 3 never); CAP_SYS_PTRACE overrides the first
two and Yama's 1 and 2. A process already traced cannot be traced a second time.
"""

from __future__ import annotations

import os

#: Where Yama's setting lives (absent when the kernel has no Yama).
YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_CAP_SYS_PTRACE = 19
_SCOPES = {1: "only descendants may be traced", 2: "only with CAP_SYS_PTRACE",
           3: "no process may be traced"}


def _status(pid: int | str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def has_cap_sys_ptrace() -> bool:
    """Whether this process holds CAP_SYS_PTRACE (root usually does)."""
    try:
        return bool(int(_status("self").get("CapEff", "0"), 16) >> _CAP_SYS_PTRACE & 1)
    except ValueError:
        return False


def ptrace_scope() -> int | None:
    """Yama's ptrace_scope, or None without Yama."""
    try:
        with open(YAMA_SCOPE, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def tracer_of(pid: int) -> int:
    """The pid tracing ``pid`` (0: none, or unknown)."""
    try:
        return int(_status(pid).get("TracerPid", "0"))
    except ValueError:
        return 0


def other_owner(pid: int) -> int | None:
    """The uid ``pid`` runs as when it is not ours (None when every id matches ours)."""
    status = _status(pid)
    try:
        uids = [int(u) for u in status.get("Uid", "").split()[:3]]
        gids = [int(g) for g in status.get("Gid", "").split()[:3]]
    except ValueError:
        return None
    if any(u != os.getuid() for u in uids) or any(g != os.getgid() for g in gids):
        return next((u for u in uids if u != os.getuid()), uids[0] if uids else None)
    return None


def untraceable(pid: int) -> str | None:
    """Why no one can trace ``pid`` whatever the permissions (None: no such reason)."""
    status = _status(pid)
    if status.get("State", "").startswith(("Z", "X")):
        return "it has exited (a zombie its parent has not reaped)"
    if status.get("Kthread") == "1" or (status and "Kthread" not in status and _no_exe(pid)):
        return "it is a kernel thread"
    return None


def _no_exe(pid: int) -> bool:
    """A live process without an executable and a command line: a kernel thread (older
    kernels have no Kthread field)."""
    try:
        os.readlink(f"/proc/{pid}/exe")
        return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(1) == b""
    except OSError:
        return False


def denied_reason(pid: int) -> str:
    """Why an attach to ``pid`` was refused (EPERM), as a clause for a one-line message."""
    reasons = []
    never = untraceable(pid)
    if never:
        return never
    tracer = tracer_of(pid)
    if tracer:
        reasons.append(f"it is already traced by pid {tracer}")
    cap = has_cap_sys_ptrace()
    owner = other_owner(pid)
    if owner is not None and not cap:
        reasons.append(f"it belongs to another user (uid {owner}, we are uid {os.getuid()}) "
                       "and branchtrace lacks CAP_SYS_PTRACE")
    scope = ptrace_scope()
    if scope is not None and scope >= 1 and not (cap and scope < 3):
        reasons.append(f"{YAMA_SCOPE} is {scope}: {_SCOPES.get(scope, 'restricted')}")
    if not reasons:
        reasons.append("the kernel refused (a set-user-ID or undumpable program, or a "
                       "security module such as SELinux or AppArmor)")
    return "; ".join(reasons)
