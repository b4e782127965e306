"""Errors that reach the user: each maps to an exit code and prints as one line."""

from __future__ import annotations


class BranchtraceError(Exception):
    """Base class. ``str(err)`` is the one line shown to the user."""

    exit_code = 2


class UsageError(BranchtraceError):
    """Bad arguments: sizes, names, options."""

    exit_code = 2


class TargetError(BranchtraceError):
    """The program or pid cannot be started or traced."""

    exit_code = 3


class StoreError(BranchtraceError):
    """The store cannot be configured (size, memory limit, file system)."""

    exit_code = 4


class MemoryLimitError(StoreError):
    """A buffer request exceeds the memory limit; raised at configuration time."""


class BackendUnavailable(BranchtraceError):
    """The requested backend cannot run on this machine."""

    exit_code = 5


class TraceFormatError(BranchtraceError):
    """A file is not a trace, or is corrupt, or of a version we cannot read."""

    exit_code = 6
