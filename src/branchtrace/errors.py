"""Errors that reach the user: each maps to an exit code and prints as one line.

The codes are those of the readers (stats, history, ...). ``run`` and ``attach`` exit
with the program's status, so their own failures use codes a program rarely uses, as
``env`` and ``timeout`` do: 127 the program was not found, 126 it cannot be executed,
125 any other failure of branchtrace (cli/__init__.py maps them)."""

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


class ProgramNotFound(TargetError):
    """The program to run does not exist (a shell's 127)."""

    exit_code = 127


class CannotExecute(TargetError):
    """The program exists but cannot be executed (a shell's 126)."""

    exit_code = 126


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


class NotInTraceError(UsageError, LookupError):
    """A function, thread or process the trace does not have: a misspelled name, a tid
    or pid of another run. The message names what the trace does have."""


class UnknownFunctionError(NotInTraceError):
    """No module of the process defines a function of that name."""


class UnknownThreadError(NotInTraceError):
    """The trace recorded no thread of that id."""


class UnknownProcessError(NotInTraceError):
    """The trace recorded no process of that id."""
