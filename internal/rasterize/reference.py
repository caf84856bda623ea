"""Stage 2 in pure PyTorch: tile binning, per-tile depth order, alpha compositing (docs/rasterizer.md).

This is the oracle every other backend is tested against, so it favours plain, checkable tensor code
over speed: every Gaussian of a tile is evaluated at every pixel of that tile, and the early stop at
T < 1e-4 is expressed as a mask over the running transmittance. Autograd gives the gradients.

Memory stays bounded on real scenes: tiles are processed in batches of at most `max_elements`
pixel-Gaussian pairs, and while gradients are needed each batch runs under activation checkpointing,
so only its (small) gathered inputs are kept and the batch is recomputed in the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import tile_bounds

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int):
    """Per-tile lists of Gaussians of one camera, each in depth order (ties by index).

    Returns (gauss_ids (M,) int64 sorted by (tile, depth, index), tile_offsets (n_tiles+1,) int64).
    """
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    ids = torch.nonzero(radii > 0, as_tuple=False)[:, 0]
    x0, x1, y0, y1 = tile_bounds(means2d[ids], radii[ids], width, height, tile_size)
    w = x1 - x0
    counts = w * (y1 - y0)
    pair_gauss = torch.repeat_interleave(ids, counts)
    local = torch.arange(pair_gauss.numel(), device=ids.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    w_rep = torch.repeat_interleave(w, counts)
    tile = (torch.repeat_interleave(y0, counts) + local // w_rep) * tiles_x + torch.repeat_interleave(x0, counts) + local % w_rep
    # Depth order with ties broken by index: ids are ascending, so a stable sort on depth keeps that;
    # a second stable sort on the tile id then groups by tile and keeps the depth order inside.
    order = torch.sort(depths.detach()[pair_gauss], stable=True).indices
    order = order[torch.sort(tile[order], stable=True).indices]
    per_tile = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=ids.device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    return pair_gauss[order], offsets


def _composite_batch(px: Tensor, py: Tensor, pix_ok: Tensor, valid: Tensor, mx: Tensor, my: Tensor,
                     ca: Tensor, cb: Tensor, cc: Tensor, op: Tensor, feat: Tensor):
    """Composite a batch of B tiles: pixels (B,P), Gaussians (B,K) in depth order, features (B,K,D)."""
    dx = mx[:, None, :] - px[:, :, None]  # (B,P,K)
    dy = my[:, None, :] - py[:, :, None]
    power = -0.5 * (ca[:, None, :] * dx * dx + cc[:, None, :] * dy * dy) - cb[:, None, :] * dx * dy
    alpha = torch.clamp(op[:, None, :] * torch.exp(power), max=ALPHA_MAX)
    keep = (power <= 0) & (alpha >= ALPHA_MIN) & valid[:, None, :] & pix_ok[:, :, None]
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    t_after = torch.cumprod(one_minus, dim=-1)
    # The Gaussian whose contribution would push T below 1e-4 is left out, and so is every later one;
    # T only decreases, so this mask is a prefix of each pixel's list.
    include = (t_after >= T_MIN).detach()
    t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
    weights = torch.where(include, alpha * t_before, torch.zeros_like(alpha))
    render = torch.einsum("bpk,bkd->bpd", weights, feat)
    t_final = torch.where(include, one_minus, torch.ones_like(one_minus)).prod(dim=-1)
    return render, 1.0 - t_final


def composite(
    means2d: Tensor,
    conics: Tensor,
    features: Tensor,
    opacities: Tensor,
    depths: Tensor,
    radii: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    max_elements: int = 1 << 23,
):
    """Alpha-composite projected Gaussians.

    Args:
        means2d (C,N,2), conics (C,N,3), features (C,N,D), opacities (C,N) or (N,), depths (C,N),
        radii (C,N) int (0 = culled).
    Returns:
        render (C,H,W,D) = sum_i f_i alpha_i T_i, alpha (C,H,W,1) = 1 - T_final.
    """
    C, N = radii.shape
    D = features.shape[-1]
    if opacities.dim() == 1:
        opacities = opacities[None].expand(C, N)
    renders, alphas = [], []
    for c in range(C):
        r, a = _composite_camera(
            means2d[c], conics[c], features[c], opacities[c], depths[c], radii[c], width, height, tile_size, max_elements
        )
        renders.append(r)
        alphas.append(a)
    if C == 0:
        z = means2d.new_zeros((0, height, width, D))
        return z, z[..., :1]
    return torch.stack(renders), torch.stack(alphas)


def _composite_camera(means2d, conics, features, opacities, depths, radii, width, height, tile_size, max_elements):
    D = features.shape[-1]
    dtype, device = means2d.dtype, means2d.device
    tiles_x = (width + tile_size - 1) // tile_size
    gauss_ids, offsets = bin_gaussians(means2d, radii, depths, width, height, tile_size)
    counts = offsets[1:] - offsets[:-1]
    busy = torch.nonzero(counts > 0, as_tuple=False)[:, 0]
    render = means2d.new_zeros((height * width, D))
    alpha = means2d.new_zeros((height * width, 1))
    if busy.numel() == 0:
        return render.reshape(height, width, D), alpha.reshape(height, width, 1)
    P = tile_size * tile_size
    local = torch.arange(P, device=device)
    # Batches of tiles with similar list lengths keep the padding small.
    busy = busy[torch.argsort(counts[busy])]
    busy_counts = counts[busy].tolist()
    idx_chunks, val_chunks, alpha_chunks = [], [], []
    grad_needed = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, features, opacities))
    start = 0
    while start < len(busy_counts):
        kmax = busy_counts[start]
        end = start + 1
        while end < len(busy_counts) and (end - start + 1) * P * busy_counts[end] <= max_elements:
            end += 1
        kmax = busy_counts[end - 1]
        tiles = busy[start:end]
        B = tiles.numel()
        # Padded (B,kmax) list of Gaussian ids in depth order.
        pos = offsets[tiles][:, None] + torch.arange(kmax, device=device)[None]
        valid = torch.arange(kmax, device=device)[None] < counts[tiles][:, None]
        gid = gauss_ids[pos.clamp(max=gauss_ids.numel() - 1)]
        gid = torch.where(valid, gid, torch.zeros_like(gid))
        tx, ty = tiles % tiles_x, tiles // tiles_x
        pcol = tx[:, None] * tile_size + local[None] % tile_size  # (B,P)
        prow = ty[:, None] * tile_size + local[None] // tile_size
        pix_ok = (pcol < width) & (prow < height)
        px = pcol.to(dtype) + 0.5
        py = prow.to(dtype) + 0.5
        args = (
            px, py, pix_ok, valid,
            means2d[gid, 0], means2d[gid, 1], conics[gid, 0], conics[gid, 1], conics[gid, 2],
            opacities[gid], features[gid],
        )
        if grad_needed:
            rb, ab = checkpoint(_composite_batch, *args, use_reentrant=False)
        else:
            rb, ab = _composite_batch(*args)
        lin = (prow * width + pcol)[pix_ok]
        idx_chunks.append(lin)
        val_chunks.append(rb[pix_ok])
        alpha_chunks.append(ab[pix_ok][:, None])
        start = end
    lin = torch.cat(idx_chunks)
    render = render.index_copy(0, lin, torch.cat(val_chunks))
    alpha = alpha.index_copy(0, lin, torch.cat(alpha_chunks))
    return render.reshape(height, width, D), alpha.reshape(height, width, 1)
