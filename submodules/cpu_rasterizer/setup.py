"""Build of the project's C++/OpenMP CPU rasterizer.

Install against the already-installed torch (an isolated build would fetch another one):
    pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer

One build runs on every x86-64 CPU it is copied to (a venv, a wheel, a container image): the same
sources are compiled once per x86-64 micro-architecture level, each into its own module, and
`cpu_rasterizer` imports the best one the CPU supports (see cpu_rasterizer/__init__.py):

    cpu_rasterizer._C_x86_64      baseline x86-64 (SSE2): runs everywhere, slow (no FMA, 4-lane vectors)
    cpu_rasterizer._C_x86_64_v3   AVX2 + FMA + BMI/F16C (Intel Haswell 2013+, AMD Zen 2017+)
    cpu_rasterizer._C_x86_64_v4   AVX-512 F/BW/CD/DQ/VL (Intel Skylake-SP 2017+, AMD Zen 4 2022+)

On other architectures one module, `cpu_rasterizer._C_generic`, is built with the compiler's defaults.

Environment knobs:
    CPU_RASTERIZER_LEVELS   comma-separated levels to build (default: x86-64,x86-64-v3,x86-64-v4);
                            "native" adds a -march=native module that is only ever used when asked for
                            with CPU_RASTERIZER_ISA=native (for benchmarks against the portable levels).
                            The baseline is always built: it is what the loader asks about the CPU.
    CPU_RASTERIZER_DEBUG=1  -O0 -g, for gdb
"""

import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

SOURCES = [os.path.join("csrc", f) for f in ("bindings.cpp", "composite.cpp", "projection.cpp", "sh.cpp", "loss.cpp")]
X86_LEVELS = ("x86-64", "x86-64-v3", "x86-64-v4")


def module_name(level: str) -> str:
    return "_C_" + level.replace("-", "_")


debug = os.environ.get("CPU_RASTERIZER_DEBUG") == "1"
common_flags = [
    "-O0" if debug else "-O3",
    "-fopenmp",  # torch's CPU wheel ships GNU OpenMP (libgomp); we share its runtime
    # No FMA contraction: the forward mirrors the torch reference's float32 roundings, and forward
    # and backward must recompute bit-identical alphas. Explicit std::fma is used where torch uses it.
    "-ffp-contract=off",
    "-fno-math-errno",  # lets sqrt/floor/ceil compile to single instructions; no effect on values
    "-Wall",
    "-Wno-unknown-pragmas",
    "-Wno-psabi",  # 64-byte vector arguments on targets without AVX-512: internal functions only
] + (["-g"] if debug else [])

if platform.machine().lower() in ("x86_64", "amd64"):
    asked = [s.strip() for s in os.environ.get("CPU_RASTERIZER_LEVELS", ",".join(X86_LEVELS)).split(",") if s.strip()]
    unknown = [s for s in asked if s not in X86_LEVELS + ("native",)]
    if unknown:
        raise SystemExit(f"CPU_RASTERIZER_LEVELS: unknown level(s) {unknown}; choose from {', '.join(X86_LEVELS)}, native")
    levels = ["x86-64"] + [s for s in X86_LEVELS[1:] + ("native",) if s in asked]
    # -mtune=generic for the portable levels: a binary built on one machine is tuned for none in particular.
    variants = [(module_name(lv), [f"-march={lv}"] + ([] if lv == "native" else ["-mtune=generic"])) for lv in levels]
else:
    variants = [("_C_generic", [])]

setup(
    name="cpu_rasterizer",
    version="0.2.0",
    description="C++/OpenMP tile rasterizer for 3D Gaussian Splatting on the CPU, with a hand-written backward",
    packages=["cpu_rasterizer"],
    ext_modules=[
        CppExtension(
            name=f"cpu_rasterizer.{name}",
            sources=SOURCES,
            extra_compile_args={"cxx": common_flags + flags},
            extra_link_args=["-fopenmp"],
        )
        for name, flags in variants
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    zip_safe=False,
)
