"""The real-program corpus (a package, so that its conftest does not shadow tests/conftest.py)."""
