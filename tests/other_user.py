"""An interpreter another user (uid 65534) can run, with branchtrace importable: the
tests that prove what an unprivileged user cannot do run branchtrace as that user.

The venv's python usually links into a private directory (/root/.pyenv), so the
system's python of the same version runs instead, with branchtrace and its dependencies
on PYTHONPATH: where they lie, when uid 65534 can read them there, else a world-readable
copy (a checkout may lie under a private directory). ``conftest.nobody_python`` gives
it to tests, checked once per session.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


NOBODY = 65534
SETPRIV = shutil.which("setpriv")
AS_NOBODY = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# what `python -m branchtrace` imports (frida for the stalker backend), and what it needs
# beside them in site-packages
_NOBODY_NEEDS = ["numpy", "capstone", "elftools", "zstandard", "frida"]
_NOBODY_ALSO = ["numpy.libs", "typing_extensions.py"]


@dataclass
class OtherUserPython:
    """An interpreter that uid 65534 can run, with branchtrace and its dependencies
    importable (:func:`nobody_python`)."""

    python: str
    env: dict[str, str]
    how: str   # "the venv, readable by uid 65534" or "a world-readable copy in DIR"

    def argv(self, *args: str) -> list[str]:
        """``python -m branchtrace ARGS`` with this interpreter."""
        return [self.python, "-m", "branchtrace", *args]

    def run(self, argv: list[str], setpriv_args: list[str] | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``argv`` as uid 65534 (or under other ``setpriv`` options), from ``/``."""
        assert SETPRIV is not None
        return subprocess.run(  # type: ignore[call-overload]
            [SETPRIV, *(AS_NOBODY if setpriv_args is None else setpriv_args), *argv],
            capture_output=True, text=True, timeout=120, cwd="/", env=self.env, check=False,
            **kwargs)


def _copy_readable(src: Path, dst: Path) -> None:
    """``src`` (a file or a tree) at ``dst``, every part readable by anyone: files hard
    linked where they already are (fast), else copied."""
    def one(s: str, d: str) -> None:
        mode = os.stat(s).st_mode
        if mode & 0o004 and (not mode & 0o100 or mode & 0o001):
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)
        os.chmod(d, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & 0o7777)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=one,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for root, dirs, _ in os.walk(dst):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(dst, 0o755)
    else:
        one(str(src), str(dst))


def setup(tmp: Path) -> OtherUserPython | str:
    """The interpreter for uid 65534, or why there is none."""
    if os.geteuid() != 0 or SETPRIV is None:
        return "needs root and setpriv to run as another user"
    major, minor = sys.version_info[:2]
    python = f"/usr/bin/python{major}.{minor}"
    if not os.access(python, os.X_OK):
        return f"no system interpreter {python} (the venv's may lie in a private directory)"
    import branchtrace

    src = Path(branchtrace.__file__).resolve().parent.parent
    # frida only where this interpreter has it (without it the stalker tests skip or fail
    # by themselves; the ptrace half still needs the other user's interpreter)
    found = {}
    for name in _NOBODY_NEEDS:
        try:
            found[name] = Path(importlib.import_module(name).__file__ or "").resolve()
        except ImportError:
            pass
    needs = list(found)
    sites = {path.parent.parent for path in found.values()}   # site/NAME/__init__.py
    if len(sites) != 1:
        return f"the packages {needs} are not in one site-packages: {sites}"
    site = sites.pop()
    env = {k: v for k, v in os.environ.items() if k not in ("BRANCHTRACE_BACKEND", "PYTHONHOME")}
    tried = []
    for copy in (False, True):
        how, path = "the venv, readable by uid 65534", [src, site]
        if copy:   # the checkout or the venv lies in a private directory
            tmp.chmod(0o755)
            for sub in ("src", "site"):
                (tmp / sub).mkdir(mode=0o755)
            _copy_readable(src / "branchtrace", tmp / "src" / "branchtrace")
            for name in [*needs, *_NOBODY_ALSO]:
                if (site / name).exists():
                    _copy_readable(site / name, tmp / "site" / name)
            how, path = f"a world-readable copy in {tmp}", [tmp / "src", tmp / "site"]
        candidate = OtherUserPython(
            python, {**env, "PYTHONPATH": os.pathsep.join(map(str, path))}, how)
        check = candidate.run([python, "-c", f"import os, branchtrace.cli, {', '.join(needs)}; "
                                               f"assert os.getuid() == {NOBODY}; print('ok')"])
        if check.returncode == 0 and check.stdout.strip() == "ok":
            return candidate
        tried.append(f"{how}: {(check.stderr.strip() or check.stdout.strip())[-300:]}")
    return f"uid {NOBODY} cannot run branchtrace: " + "; ".join(tried)
