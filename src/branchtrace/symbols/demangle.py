"""Readable names for C++ and Rust symbols: ``_ZN4shop9Inventory4takeEm`` becomes
``shop::Inventory::take(unsigned long)``.

The demangler is the one GCC's toolchain uses, ``abi::__cxa_demangle`` in libstdc++
(c++filt, GDB and perf print the same text), called through ctypes. It is maintained
with GCC and present wherever C++ programs run; a Python package would only wrap it
(cxxfilt, last released in 2021) or reimplement a grammar that changes with every C++
standard (itanium-demangler). Without libstdc++ names stay as they are.

Rust's legacy mangling is Itanium's with a hash as the last path element
(``_ZN4core3fmt5write17h0123456789abcdefE``): the demangled name drops ``::h<16 hex>``,
as rustc-demangle does in its default form. Rust's v0 mangling (``_R...``) is left as is.
A ``@plt`` or ``@VERSION`` suffix is kept after the demangled name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable
from functools import lru_cache

#: Longer names are left as they are: the demangler is native code reading names from
#: binaries a trace names, so what it is given is bounded (the longest name in libstdc++,
#: libc and python3 is under 600 characters).
MAX_MANGLED = 4096
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_LIBS = ("libstdc++.so.6", "libstdc++.so")


def _load() -> Callable[[bytes], str | None] | None:
    lib = None
    for name in (*_LIBS, ctypes.util.find_library("stdc++")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None
    try:
        demangle = lib.__cxa_demangle
        free = ctypes.CDLL(None).free
    except (AttributeError, OSError):
        return None
    demangle.restype = ctypes.c_void_p
    demangle.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.POINTER(ctypes.c_int)]
    free.argtypes = [ctypes.c_void_p]
    free.restype = None

    def call(mangled: bytes) -> str | None:
        status = ctypes.c_int(0)
        out = demangle(mangled, None, None, ctypes.byref(status))
        if not out:
            return None
        try:
            text = ctypes.string_at(out)
        finally:
            free(out)
        return text.decode("utf-8", "replace") if status.value == 0 else None

    return call


_demangler: Callable[[bytes], str | None] | None = None
_loaded = False


def available() -> bool:
    """Whether a demangler could be loaded (libstdc++ is there)."""
    return _get() is not None


def _get() -> Callable[[bytes], str | None] | None:
    global _demangler, _loaded
    if not _loaded:
        _demangler, _loaded = _load(), True
    return _demangler


@lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The readable form of a mangled symbol name; any other name unchanged."""
    if not name.startswith("_Z") or len(name) > MAX_MANGLED:
        return name
    base, at, suffix = name.partition("@")
    call = _get()
    if call is None:
        return name
    try:
        text = call(base.encode("ascii"))
    except UnicodeEncodeError:
        return name
    if text is None:
        return name
    if base.startswith("_ZN") and base.endswith("E"):
        text = _RUST_HASH.sub("", text)
    return text + at + suffix
