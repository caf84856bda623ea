"""Cameras: indexing, matrices, centres, scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from internal.data.cameras import Cameras


def cams(n=4):
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("xyz", np.linspace(0, 1, n * 3).reshape(n, 3)).as_matrix()
    T = np.arange(n * 3, dtype=float).reshape(n, 3)
    return Cameras.from_numpy(R, T, [100.0] * n, [110.0] * n, [50.0] * n, [33.0] * n, [100] * n, [66 + k for k in range(n)], list(range(n)))


def test_dtypes_and_len():
    c = cams()
    assert len(c) == 4 and c.R.dtype == torch.float32 and c.width.dtype == torch.int64 and c.appearance_id.dtype == torch.int64


def test_indexing():
    c = cams()
    assert len(c[0]) == 1 and c[-1].height.tolist() == [69] and c[np.int64(2)].height.tolist() == [68]
    assert c[1:3].height.tolist() == [67, 68] and c[[3, 0]].height.tolist() == [69, 66]
    assert c[torch.tensor([True, False, True, False])].height.tolist() == [66, 68]
    assert c[torch.tensor(1)].height.tolist() == [67]
    with pytest.raises(IndexError):
        c[4]


def test_viewmats_ks_centres():
    c = cams()
    V = c.viewmats()
    assert V.shape == (4, 4, 4) and torch.equal(V[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(4, 4))
    C = c.camera_centers()
    # the centre maps to the camera origin
    Ch = torch.cat([C, torch.ones(4, 1)], 1)
    torch.testing.assert_close((V @ Ch[..., None])[:, :3, 0], torch.zeros(4, 3), atol=1e-4, rtol=0)
    K = c.Ks()
    assert K[0].tolist() == [[100.0, 0, 50.0], [0, 110.0, 33.0], [0, 0, 1]]


def test_scaled_and_resized():
    c = cams()
    h = c.scaled(2)
    assert h.fx[0] == 50 and h.cx[0] == 25 and h.cy[0] == 16.5 and h.width.tolist() == [50] * 4 and h.height.tolist() == [33, 33, 34, 34]
    r = c.resized(torch.tensor([50] * 4), torch.tensor([30] * 4))
    assert r.fx[0] == 50 and r.fy[0] == pytest.approx(110 * 30 / 66) and r.cy[1] == pytest.approx(33 * 30 / 67)
    with pytest.raises(ValueError):
        c.scaled(0)


def test_to():
    c = cams().to("meta")
    assert c.R.device.type == "meta" and c.device.type == "meta"
