"""Import frida without importing asyncio now.

``import frida`` imports ``frida.aio``, its asyncio API, which imports asyncio: ~20 ms
of the ~45 ms the import takes, on the path of every ``branchtrace run`` before Frida's
attach can start (start_early). branchtrace calls only Frida's synchronous API, and
``frida.aio`` touches asyncio only inside its functions, so :func:`load` imports frida
with asyncio deferred (:class:`_Deferred`, not LazyLoader, which runs at the import system's
first look at the module): the module object in
``sys.modules`` is asyncio's own, and it runs its code at the first use of one of its
attributes, by anyone. When asyncio is already imported, nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType


#: Set by the command line (run, attach): import frida with asyncio deferred.
defer_asyncio = False


def load() -> ModuleType:
    """The frida module (ImportError when it is not installed)."""
    loaded = sys.modules.get("frida")
    if loaded is not None:
        return loaded
    # numpy first, whole: its OpenBLAS starts a thread server at import, under a lock
    # that its fork handler takes too. Frida forks (its helper) on threads of its own;
    # a fork while another of our threads was importing numpy left a child stuck in
    # OpenBLAS's fork handler, holding our output pipes (a CI run hung on it).
    import numpy  # noqa: F401
    if defer_asyncio and "asyncio" not in sys.modules and importlib.util.find_spec("frida") is not None:
        _lazy("asyncio")
    import frida

    return frida


def _lazy(name: str) -> None:
    """Put module ``name`` in ``sys.modules``, to be executed at the first look-up of
    an attribute it does not have yet (its spec, name and path it has from the start:
    the import system reads them, so LazyLoader's module, which runs at any access,
    would run at once)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module


class _Deferred(ModuleType):
    """A module whose code runs when an attribute it lacks is first looked up."""

    def __getattr__(self, attr: str) -> object:
        with _lock:
            if type(self) is _Deferred:
                # from now on an ordinary module (another thread meanwhile sees it filling)
                self.__class__ = ModuleType  # type: ignore[assignment]
                try:
                    self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
                except BaseException:
                    sys.modules.pop(self.__name__, None)
                    raise
        return ModuleType.__getattribute__(self, attr)


_lock = threading.RLock()
