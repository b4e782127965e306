"""A traced module's ELF image, checked against the trace: the one place images are loaded.

A trace stores module maps (path, addresses, build id), not code or symbols: reporters
read those back from the files on disk, and from this process's own vDSO for the
``[vdso]`` mapping. That is only right while the file is the one the trace saw, so
:func:`module_image` gives the image only when its build id matches the one recorded
(and, for the vDSO, when this kernel's vDSO fits in the traced mapping); otherwise it
says why there is none. The resolver (symbols, lines), the code reader (instructions,
coverage), the coverage reporters and the crash report all go through it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..model import ModuleMap
from .elf import ElfImage, load_elf
from .maps import is_deleted, is_special

VDSO = "[vdso]"


@dataclass(frozen=True, slots=True)
class ModuleImage:
    """A module's image, or why it has none.

    ``reason`` reads after the module's path (``/bin/x changed since the trace (build
    id differs)``); it is empty when there is an image. ``file_problem`` is True when
    the reason is about a file the trace names (gone, unreadable, changed): worth a
    warning; it is False for kernel mappings, which have no file to read.
    """

    module: ModuleMap
    image: ElfImage | None
    reason: str = ""
    file_problem: bool = False

    def why(self) -> str:
        """``<path> <reason>``: one line saying why there is no image ("" if there is)."""
        return f"{self.module.path} {self.reason}" if self.reason else ""


def module_image(module: ModuleMap) -> ModuleImage:
    """The ELF image of ``module`` as the trace saw it, or the reason it cannot be used.

    Images are cached by file identity (:func:`~.elf.load_elf`), so calling this for
    every use is cheap.
    """
    path = module.path
    if path == VDSO:
        image = own_vdso_image()
        if image is None:
            return ModuleImage(module, None, "cannot be read in this process")
        size = sum(s.memsz for s in image.segments)
        if size > module.end - module.start:
            return ModuleImage(module, None, "differs from this kernel's (larger than traced)")
        return ModuleImage(module, image)
    if is_special(path):
        return ModuleImage(module, None, "is a kernel mapping with no file")
    if is_deleted(path):
        return ModuleImage(module, None, "is gone", file_problem=True)
    image = load_elf(path)
    if image is None:
        return ModuleImage(module, None, "cannot be read as an ELF file", file_problem=True)
    if module.build_id and image.build_id != module.build_id:
        return ModuleImage(module, None, "changed since the trace (build id differs)",
                           file_problem=True)
    return ModuleImage(module, image)


_VDSO_LOCK = threading.Lock()
_VDSO: list[ElfImage | None] = []


def own_vdso_image() -> ElfImage | None:
    """This process's vDSO, read from /proc/self/mem (the same kernel image for all)."""
    with _VDSO_LOCK:
        if not _VDSO:
            image: ElfImage | None = None
            try:
                with open("/proc/self/maps", encoding="utf-8") as f:
                    lines = [ln for ln in f if ln.rstrip().endswith(" " + VDSO)]
                if lines:
                    lo, hi = (int(x, 16) for x in lines[0].split()[0].split("-"))
                    with open("/proc/self/mem", "rb") as mem:
                        mem.seek(lo)
                        image = ElfImage.from_bytes(mem.read(hi - lo), VDSO)
            except Exception:  # noqa: BLE001 - no vDSO symbols is fine
                image = None
            _VDSO.append(image)
        return _VDSO[0]
