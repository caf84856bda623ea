"""The project's C++/OpenMP CPU rasterizer (docs/rasterizer.md).

The kernels are compiled once per x86-64 micro-architecture level (setup.py); importing this package
picks the best module the CPU supports, as numpy and torch do, so one build runs wherever it is
copied. `_C` is that module: tile compositing with a hand-written backward, and the projection + SH
stage with its backward. Use them through `internal.rasterize` (backend "cpu"), which wraps them in
autograd Functions and checks the inputs.

    cpu_rasterizer.ISA                 the level in use, e.g. "x86-64-v4"
    cpu_rasterizer.available_levels()  the built levels this CPU can run, lowest first
    cpu_rasterizer.load(level)         the module of one level (tests and benchmarks compare them)

Override: CPU_RASTERIZER_ISA=x86-64|x86-64-v3|x86-64-v4|native (or auto) in the environment, for tests
and benchmarks; asking for a level that was not built or that this CPU cannot run is an error that says
which levels can be used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from types import ModuleType

import torch  # noqa: F401  (loads libtorch and its OpenMP runtime before the extension)

_X86_LEVELS = ("x86-64", "x86-64-v3", "x86-64-v4")


class ISAError(RuntimeError):
    """No compiled module of the cpu rasterizer can run here, or the one asked for cannot."""


def _module_name(level: str) -> str:
    return "_C_" + level.replace("-", "_")


def _built(level: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{_module_name(level)}") is not None


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_levels() -> list[str]:
    """The x86-64 levels this CPU and OS support (asked of the baseline module, which runs anywhere)."""
    if not _is_x86():
        return []
    if not _built("x86-64"):
        raise ISAError(
            "the cpu rasterizer's baseline module (cpu_rasterizer._C_x86_64) is missing: reinstall it with "
            "`.venv/bin/pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer` (scripts/setup.sh)"
        )
    return list(importlib.import_module(f"{__name__}._C_x86_64").cpu_levels())


def available_levels() -> list[str]:
    """The built levels this CPU can run, lowest first ("native" is left out: it is only used when asked for)."""
    if not _is_x86():
        return ["generic"] if _built("generic") else []
    cpu = set(cpu_levels())
    return [lv for lv in _X86_LEVELS if lv in cpu and _built(lv)]


def load(level: str) -> ModuleType:
    """The compiled module of `level`, after checking that it was built and that this CPU can run it
    (importing a module compiled for instructions the CPU lacks would kill the process)."""
    if level == "native":
        if not _built("native"):
            raise ISAError("CPU_RASTERIZER_ISA=native, but no -march=native module was built: rebuild with "
                           "CPU_RASTERIZER_LEVELS=x86-64,x86-64-v3,x86-64-v4,native")
    elif level not in available_levels():
        can = ", ".join(available_levels()) or "none"
        built = ", ".join(lv for lv in _X86_LEVELS + ("generic",) if _built(lv)) or "none"
        raise ISAError(
            f"the cpu rasterizer cannot use level {level!r} here (built: {built}; this CPU runs: {can}); "
            "unset CPU_RASTERIZER_ISA or choose one of those"
        )
    return importlib.import_module(f"{__name__}.{_module_name(level)}")


def _select() -> tuple[str, ModuleType]:
    asked = os.environ.get("CPU_RASTERIZER_ISA", "auto").strip() or "auto"
    if asked != "auto":
        return asked, load(asked)
    levels = available_levels()
    if not levels:
        raise ISAError(
            f"no compiled module of the cpu rasterizer can run on this {platform.machine()} CPU "
            f"(it supports {', '.join(cpu_levels()) or 'no known x86-64 level'}); rebuild it on this machine "
            "with scripts/setup.sh"
        )
    return levels[-1], load(levels[-1])


ISA, _C = _select()

__all__ = ["_C", "ISA", "ISAError", "available_levels", "cpu_levels", "load"]
