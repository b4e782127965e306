"""The version of branchtrace, in a module of its own: every floor may import it (the
trace writer and the exporters name it in their output) without importing the package
root. Keep it equal to ``version`` in pyproject.toml."""

from __future__ import annotations

__version__ = "0.1.0"
