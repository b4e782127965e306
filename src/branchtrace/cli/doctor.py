"""Show every backend, whether it can run here and why, and which one auto would choose."""

from __future__ import annotations

import argparse

from ..backends import ENV_BACKEND, probe_all, select
from ..errors import BranchtraceError

NAME = "doctor"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    ok = False
    for name, probe in probe_all():
        mark = "yes" if probe.available else "no "
        ok = ok or probe.available
        print(f"{name:<10} {mark}  {probe.reason}")
        if name == "stalker" and probe.available:
            from ..backends.stalker.xstate import self_test
            print(f"{'':<15}AVX-512 state: {self_test()[1]}")
    try:
        choice = select("auto")
        print(f"\nauto chooses: {choice.backend.name}")
        for reason in choice.reasons:
            print(f"  {reason}")
    except BranchtraceError as exc:
        print(f"\nauto chooses nothing: {exc}")
    print(f"(set {ENV_BACKEND} or --backend to choose one yourself)")
    return 0 if ok else 1
