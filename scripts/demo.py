"""The README's first command: the demo job.

Until training lands this renders a small procedural set of Gaussians from an orbit of cameras with
the public draw() API and saves a contact sheet, so that the whole path (setup, native build,
rendering) is exercised on a fresh machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import internal as gs  # noqa: E402
from internal.splats import Splats  # noqa: E402


def helix_splats(n=4000) -> Splats:
    t = torch.linspace(0, 6 * np.pi, n)
    means = torch.stack([torch.cos(t), torch.linspace(-1, 1, n), torch.sin(t)], -1) * torch.tensor([0.8, 1.0, 0.8])
    rgb = torch.stack([0.5 + 0.5 * torch.cos(t), 0.5 + 0.5 * torch.sin(t), torch.linspace(0, 1, n)], -1)
    return Splats(
        means=means, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), scales=torch.full((n, 3), np.log(0.03)),
        opacities=torch.full((n,), 2.0), sh0=((rgb - 0.5) / 0.28209479177387814)[:, None], shN=torch.zeros(n, 0, 3),
    )


def orbit(n, radius=3.5):
    out = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        eye = np.array([radius * np.cos(a), -1.0, radius * np.sin(a)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0, 1, 0]); right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd]); vm = np.eye(4); vm[:3, :3] = R; vm[:3, 3] = -R @ eye
        out.append(vm)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def main():
    out_dir = Path("outputs/demo"); out_dir.mkdir(parents=True, exist_ok=True)
    splats = helix_splats()
    K = torch.tensor([[200.0, 0, 128], [0, 200, 128], [0, 0, 1]])
    t0 = time.time()
    imgs = gs.draw(splats, orbit(8), K, 256, 256, background=(1, 1, 1), device="cpu")
    sheet = torch.cat([torch.cat(list(imgs[:4, ..., :3]), 1), torch.cat(list(imgs[4:, ..., :3]), 1)], 0)
    Image.fromarray(sheet.numpy()).save(out_dir / "contact_sheet.png")
    gs.save_ply(splats, out_dir / "helix.ply")
    print(f"rendered 8 views in {time.time() - t0:.2f} s -> {out_dir / 'contact_sheet.png'} (splats: {out_dir / 'helix.ply'})")


if __name__ == "__main__":
    main()
