"""Browser mode: the Gaussians in the form viser's add_gaussian_splats sends to the page.

The browser draws them with its own GPU at any frame rate, but with one colour per Gaussian (the DC
term of the SH: no view-dependent colour) and from a budget of the most visible Gaussians, since each
costs 32 bytes on the wire and the page's sort grows with the count.
"""

from __future__ import annotations

import numpy as np
import torch

from ..loading import LoadedModel, activated_gaussians, visibility_score
from ..rasterize.projection import SH_C0


@torch.no_grad()
def browser_splats(model: LoadedModel, budget: int, scaling_modifier: float = 1.0):
    """(centers (M,3) f32, covariances (M,3,3) f32, rgbs (M,3) f32 in [0,1], opacities (M,1) f32), M <= budget.

    The `budget` Gaussians with the highest visibility_score are kept when there are more.
    """
    means, quats, scales, opacities, sh = activated_gaussians(model)
    n = means.shape[0]
    budget = max(0, int(budget))
    if n > budget:
        keep = torch.topk(visibility_score(opacities, scales), budget).indices
        means, quats, scales, opacities, sh = means[keep], quats[keep], scales[keep], opacities[keep], sh[keep]
    w, x, y, z = quats.unbind(-1)
    R = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    M = R * (scales * float(scaling_modifier))[:, None, :]  # R diag(s)
    cov = M @ M.transpose(1, 2)
    rgb = (sh[:, 0, :] * SH_C0 + 0.5).clamp(0, 1)

    def np32(t):
        return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

    return np32(means), np32(cov), np32(rgb), np32(opacities[:, None])


__all__ = ["browser_splats"]
