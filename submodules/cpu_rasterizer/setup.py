"""Build of the project's C++/OpenMP CPU rasterizer (imported as `cpu_rasterizer._C`).

Install against the already-installed torch (an isolated build would fetch another one):
    pip install --no-build-isolation -c constraints.txt ./submodules/cpu_rasterizer

Environment knobs:
    CPU_RASTERIZER_ARCH  value for -march (default "native": the extension is always compiled on
                         the machine that runs it; set e.g. "x86-64-v3" to build a portable binary)
    CPU_RASTERIZER_DEBUG=1  -O0 -g, for gdb
"""

import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join("csrc", f) for f in ("bindings.cpp", "composite.cpp", "projection.cpp", "sh.cpp")]

arch = os.environ.get("CPU_RASTERIZER_ARCH", "native")
debug = os.environ.get("CPU_RASTERIZER_DEBUG") == "1"
cxx_flags = [
    "-O0" if debug else "-O3",
    "-fopenmp",  # torch's CPU wheel ships GNU OpenMP (libgomp); we share its runtime
    # No FMA contraction: the forward mirrors the torch reference's float32 roundings, and forward
    # and backward must recompute bit-identical alphas. Explicit std::fma is used where torch uses it.
    "-ffp-contract=off",
    "-fno-math-errno",  # lets sqrt/floor/ceil compile to single instructions; no effect on values
    "-Wall",
    "-Wno-unknown-pragmas",
    "-Wno-psabi",  # 64-byte vector arguments on targets without AVX-512: internal functions only
]
if debug:
    cxx_flags.append("-g")
if arch:
    cxx_flags.append(f"-march={arch}")

setup(
    name="cpu_rasterizer",
    version="0.1.0",
    description="C++/OpenMP tile rasterizer for 3D Gaussian Splatting on the CPU, with a hand-written backward",
    packages=["cpu_rasterizer"],
    ext_modules=[
        CppExtension(
            name="cpu_rasterizer._C",
            sources=SOURCES,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    zip_safe=False,
)
