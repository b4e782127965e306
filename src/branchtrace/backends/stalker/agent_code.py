"""What the host loads into the target: the agent script, the recorder's C source (one
CModule), the machine features the emitted code may use, and the benchmarking variant.
"""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import resources
from typing import Any

from ...errors import UsageError

#: The C code compiled in the target, in this order into one CModule (one translation
#: unit: TinyCC compiles a single source).
C_SOURCES = ("recorder.h", "emit.c", "lookups.c", "thread.c", "gs.c", "variants.c",
             "signals.c", "forkchild.c", "xstate.c", "acflag.c", "vfork.c", "recorder.c")


#: The agent script, in this order into one script (Frida loads one source; line numbers
#: in its error messages count from the start of agent.js).
JS_SOURCES = ("agent.js", "signals.js", "crash.js", "detach.js", "ours.js", "trigger.js",
              "forkchild.js", "fill.js", "capcache.js")


def agent_source() -> tuple[str, str]:
    """The agent script and the recorder's C source, from package data."""
    folder = resources.files("branchtrace.backends.stalker") / "agent"
    c_source = "\n".join(f"#line 1 \"{name}\"\n" + (folder / name).read_text("utf-8")
                         for name in C_SOURCES)
    script = "\n".join(f"// ---- {name}\n" + (folder / name).read_text("utf-8")
                       for name in JS_SOURCES)
    return script, c_source


class LoadedAgent:
    """The agent script, created and loaded in a session (its top level run) and
    prepared (its thread observer attached), not yet started: what the attach thread
    does for a program stopped at its entry while the host imports the rest (~20 ms
    less before the program runs). Messages that come before :meth:`take` are kept
    for it."""

    def __init__(self, session: Any) -> None:
        self._early: list[tuple[Any, Any]] = []
        self.script = session.create_script(agent_source()[0], name="branchtrace")
        self.script.on("message", self._keep)
        try:
            self.script.load()
            self.script.exports_sync.prepare()
        except Exception:
            with contextlib.suppress(Exception):   # the host loads one of its own
                self.script.unload()
            raise

    def _keep(self, message: Any, data: Any) -> None:
        self._early.append((message, data))

    def take(self, on_message: Any) -> Any:
        """The script, its messages going to ``on_message`` from now on (and the ones
        that came before, first)."""
        self.script.on("message", on_message)
        self.script.off("message", self._keep)
        early, self._early = self._early, []
        for message, data in early:
            on_message(message, data)
        return self.script


#: Benchmarking aid (docs/stalker.md): ``follow`` follows every thread with a transform
#: that only keeps instructions, ``stock`` uses Frida's own block events; neither records.
VARIANT_ENV = "BRANCHTRACE_STALKER_VARIANT"
VARIANTS = ("follow", "stock")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable ``name``, one of ``choices`` (a usage error
    otherwise), or ``default`` when it is unset."""
    value = os.environ.get(name, default)
    if value not in choices:
        shown = ", ".join(c or "(unset)" for c in choices)
        raise UsageError(f"{name}={value!r}: choose one of {shown}")
    return value


def benchmark_variant() -> str:
    return _choice(VARIANT_ENV, "", ("", *VARIANTS))


#: ``0`` turns the cache of blocks off (docs/stalker.md, "Returns"): every ``ret`` and
#: indirect branch then goes through Stalker's own two-entry inline caches. For
#: measuring what the cache gains.
RETCACHE_ENV = "BRANCHTRACE_STALKER_RETCACHE"


def return_cache() -> bool:
    return _choice(RETCACHE_ENV, "1", ("1", "0")) == "1"


#: ``entry`` records only the entry into and the return from signal handlers, as before
#: handlers ran under Stalker (docs/stalker.md, "Signal handlers"); ``inside`` (the
#: default) records their blocks too wherever the signal arrived at a safe point.
HANDLERS_ENV = "BRANCHTRACE_STALKER_HANDLERS"


def handler_insides() -> bool:
    return _choice(HANDLERS_ENV, "inside", ("inside", "entry")) == "inside"


#: ``0`` leaves Frida's agent as it is: its byte-at-a-time memset (agent/fill.js) and
#: capstone's per-handle table builder (agent/capcache.js). For measuring.
FASTFILL_ENV = "BRANCHTRACE_STALKER_FASTFILL"


def fast_fill() -> bool:
    return _choice(FASTFILL_ENV, "1", ("1", "0")) == "1"


#: Stalker's trust threshold (how often a block must run again before its code is
#: trusted and jumps to it are backpatched; 0: at once); unset: Frida's default, 1.
#: For measuring (docs/benchmarks.md).
TRUST_ENV = "BRANCHTRACE_STALKER_TRUST"


def trust_threshold() -> int | None:
    value = os.environ.get(TRUST_ENV, "")
    if value == "":
        return None
    try:
        threshold = int(value)
    except ValueError:
        threshold = -2
    if threshold < -1:
        raise UsageError(f"{TRUST_ENV}={value!r}: give -1 (never trust), 0, or a count")
    return threshold


def agent_options(smc_check: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The agent's parameters set from the environment (benchmarking and test aids)
    and ``smc_check`` (``run --smc-check all``: Stalker trusts no block, and the cache of
    blocks is off, so every jump goes through Stalker's check of the code; docs/stalker.md,
    "Code that changes"), and the notes a trace gets for those that are not the default."""
    options = {"variant": benchmark_variant(), "retcache": return_cache(),
               "handlers": handler_insides(), "fastFill": fast_fill(),
               "trust": trust_threshold()}
    notes = []
    if options["variant"]:
        notes.append(f"{VARIANT_ENV}={options['variant']}: a benchmarking variant, "
                     "nothing was recorded")
    if smc_check:
        options["trust"], options["retcache"] = -1, False
        notes.append("--smc-check all: Stalker checked every block's code before it ran "
                     "(no block trusted, no cache of blocks): code the program rewrote "
                     "ran as rewritten, slower")
    if not options["retcache"] and not smc_check:
        notes.append(f"{RETCACHE_ENV}=0: returns and indirect branches went through "
                     "Stalker's own caches (and every signal handler ran natively)")
    if options["trust"] is not None and not smc_check:
        notes.append(f"{TRUST_ENV}={options['trust']}: Stalker's trust threshold was set")
    if not options["handlers"]:
        notes.append(f"{HANDLERS_ENV}=entry: signal handlers ran natively")
    return options, notes


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (empty when it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def has_bmi2() -> bool:
    return "bmi2" in cpu_flags()


def has_avx512() -> bool:
    """Frida's Stalker then saves and restores the AVX-512 state in its epilog helpers,
    which the agent must fix (agent/xstate.c)."""
    return "avx512f" in cpu_flags()


def machine_ok() -> str | None:
    """Why this machine cannot run the backend at all (None: it may)."""
    if platform.system() != "Linux":
        return f"only Linux is supported, this is {platform.system()}"
    if platform.machine() != "x86_64":
        return f"only x86-64 is supported, this is {platform.machine()}"
    return None

