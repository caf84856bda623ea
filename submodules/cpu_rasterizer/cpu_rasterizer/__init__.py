"""The project's C++/OpenMP CPU rasterizer (docs/rasterizer.md).

`cpu_rasterizer._C` holds the compiled kernels: tile compositing with a hand-written backward, and
the projection + SH stage with its backward. Use them through `internal.rasterize` (backend "cpu"),
which wraps them in autograd Functions and checks the inputs.
"""

import torch  # noqa: F401  (loads libtorch and its OpenMP runtime before the extension)

from . import _C  # noqa: E402

__all__ = ["_C"]
