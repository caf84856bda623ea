"""Gaussian PLY I/O (INRIA layout) and the draw() API."""

import filecmp

import numpy as np
import pytest
import torch

import internal as gs
from internal.rasterize import rasterize
from internal.splats import PlyFormatError, Splats, ply_field_names, read_ply_vertices
from tests.conftest import shared_path

INRIA_PLY = ("gaussians_ply", "kacytran1122_try_iter7000_point_cloud.ply")
DONUT_PLY = ("gaussians_ply", "gshairlod_donut_iter30000_fused_sh0.ply")


def random_splats(n=50, degree=3, seed=0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Splats(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        scales=torch.log(0.05 + 0.1 * torch.rand(n, 3, generator=g)),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=0.1 * torch.randn(n, k - 1, 3, generator=g),
    )


def test_ply_written_by_original_3dgs_round_trips_byte_for_byte(tmp_path):
    src = shared_path(*INRIA_PLY)
    splats = gs.load_from_ply(src)
    assert len(splats) == 9080 and splats.sh_degree == 3
    out = gs.save_ply(splats, tmp_path / "copy.ply")
    assert filecmp.cmp(src, out, shallow=False)


def test_f_rest_is_channel_major(tmp_path):
    s = random_splats(n=3, degree=2)
    v = read_ply_vertices(gs.save_ply(s, tmp_path / "a.ply"))
    # f_rest_{c*8 + k} is channel c of basis k+1.
    assert v["f_rest_0"][1] == pytest.approx(s.shN[1, 0, 0].item())
    assert v["f_rest_8"][1] == pytest.approx(s.shN[1, 0, 1].item())
    assert v["f_rest_17"][2] == pytest.approx(s.shN[2, 1, 2].item())
    assert list(v.dtype.names) == ply_field_names(2)


def test_ascii_ply_loads(tmp_path):
    p = tmp_path / "a.ply"
    p.write_text("ply\nformat ascii 1.0\ncomment hand-made\nelement vertex 1\n" + "".join(f"property float {n}\n" for n in ply_field_names(0))
                 + "end_header\n" + " ".join(str(float(i)) for i in range(17)) + "\n")
    s = gs.load_from_ply(p)
    assert s.means.tolist() == [[0.0, 1.0, 2.0]] and s.quats.tolist() == [[13.0, 14.0, 15.0, 16.0]]


def test_reduced_layout_without_normals_and_f_rest_loads():
    s = gs.load_from_ply(shared_path(*DONUT_PLY))
    assert len(s) == 45624 and s.sh_degree == 0 and s.normals is None
    assert s.shN.shape == (45624, 0, 3) and s.sh.shape == (45624, 1, 3)
    assert torch.isfinite(s.means).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_save_load_round_trip_every_degree(tmp_path, degree):
    s = random_splats(degree=degree)
    t = gs.load_from_ply(gs.save_ply(s, tmp_path / f"d{degree}.ply"))
    assert t.sh_degree == degree
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert torch.equal(getattr(s, name), getattr(t, name)), name


def _write_ply(path, names, rows, fmt="binary_little_endian"):
    header = f"ply\nformat {fmt} 1.0\nelement vertex {len(rows)}\n" + "".join(f"property float {n}\n" for n in names) + "end_header\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(np.asarray(rows, dtype="<f4").tobytes())
    return path


def test_bad_files_give_errors_naming_the_file(tmp_path):
    good = gs.save_ply(random_splats(n=10, degree=1), tmp_path / "good.ply").read_bytes()
    trunc = tmp_path / "truncated.ply"
    trunc.write_bytes(good[: len(good) - 50])
    with pytest.raises(PlyFormatError, match="truncated.ply.*truncated"):
        gs.load_from_ply(trunc)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01 not a ply at all" * 10)
    with pytest.raises(PlyFormatError, match="garbage.ply"):
        gs.load_from_ply(garbage)
    cloud = _write_ply(tmp_path / "cloud.ply", ["x", "y", "z"], [[0, 0, 0]])
    with pytest.raises(PlyFormatError, match="cloud.ply: missing field.*opacity"):
        gs.load_from_ply(cloud)
    names = ply_field_names(0)[:9] + ["f_rest_0", "f_rest_1"] + ply_field_names(0)[9:]
    odd = _write_ply(tmp_path / "odd.ply", names, [[0.0] * len(names)])
    with pytest.raises(PlyFormatError, match="odd.ply: has 2 f_rest"):
        gs.load_from_ply(odd)
    rows = [[0.0] * 17, [0.0] * 17]
    rows[1][ply_field_names(0).index("scale_1")] = float("nan")
    nan = _write_ply(tmp_path / "nan.ply", ply_field_names(0), rows)
    with pytest.raises(PlyFormatError, match="nan.ply: 1 NaN/inf value.*scales.*vertex 1"):
        gs.load_from_ply(nan)
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\n" + "".join(f"property float {n}\n" for n in ply_field_names(0))
                         + "end_header\n" + " ".join(["0.5"] * 17) + "\n")
    with pytest.raises(PlyFormatError, match="ascii.ply: expected 2 vertices.*found 1"):
        gs.load_from_ply(ascii_ply)
    with pytest.raises(FileNotFoundError, match="absent.ply"):
        gs.load_from_ply(tmp_path / "absent.ply")


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    s = random_splats()
    gs.save_ply(s, tmp_path / "x.ply")
    gs.save_ply(s, tmp_path / "x.ply")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ply"]


def _orbit_cameras(n, radius=4.0):
    vms = []
    for i in range(n):
        a = 2 * np.pi * i / n
        eye = np.array([radius * np.cos(a), 0.5, radius * np.sin(a)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0, -1, 0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd])
        vm = np.eye(4)
        vm[:3, :3] = R
        vm[:3, 3] = -R @ eye
        vms.append(vm)
    return torch.tensor(np.stack(vms), dtype=torch.float32)


def test_draw_returns_rgba_uint8_batched_with_per_camera_intrinsics():
    s = random_splats(n=200, degree=3)
    vms = _orbit_cameras(3)
    Ks = torch.tensor([[[60.0, 0, 40], [0, 60, 30], [0, 0, 1]], [[90.0, 0, 40], [0, 90, 30], [0, 0, 1]], [[60.0, 0, 20], [0, 60, 20], [0, 0, 1]]])
    img = gs.draw(s, vms, Ks, 80, 60, backend="torch", device="cpu")
    assert img.shape == (3, 60, 80, 4) and img.dtype == torch.uint8
    assert img[..., 3].float().mean() > 10  # something was drawn
    # Equal to the float render of each camera alone, rounded.
    means, quats, scales, opac, sh = s.activated()
    for c in range(3):
        r = rasterize(means, quats, scales, opac, sh, vms[c : c + 1], Ks[c : c + 1], 80, 60, sh_degree=3, backend="torch")
        ref = (torch.cat([r.colors, r.alphas], -1).clamp(0, 1) * 255 + 0.5).to(torch.uint8)[0]
        assert (img[c].int() - ref.int()).abs().max() <= 1


def test_draw_background_sh_degree_and_single_camera():
    s = random_splats(n=100, degree=2)
    vm, K = _orbit_cameras(1)[0], torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]])
    black = gs.draw(s, vm, K, 64, 64, backend="torch", device="cpu")
    white = gs.draw(s, vm, K, 64, 64, background=(1, 1, 1), backend="torch", device="cpu")
    assert black.shape == (1, 64, 64, 4)
    empty = black[0, ..., 3] == 0
    assert empty.any() and (white[0][empty][:, :3] == 255).all() and (black[0][empty][:, :3] == 0).all()
    assert torch.equal(black[..., 3], white[..., 3])
    d0 = gs.draw(s, vm, K, 64, 64, sh_degree=0, backend="torch", device="cpu")
    assert not torch.equal(d0, black)
    with pytest.raises(ValueError, match="sh_degree=3 but the splats carry SH degree 2"):
        gs.draw(s, vm, K, 64, 64, sh_degree=3, backend="torch", device="cpu")


def test_draw_many_cameras_in_chunks(monkeypatch):
    s = random_splats(n=60, degree=0)
    vms = _orbit_cameras(7)
    K = torch.tensor([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]])
    whole = gs.draw(s, vms, K, 32, 32, backend="torch", device="cpu")
    monkeypatch.setattr(gs, "_PIXELS_PER_CHUNK", 32 * 32 * 2)  # 2 cameras per chunk
    chunked = gs.draw(s, vms, K, 32, 32, backend="torch", device="cpu")
    assert torch.equal(whole, chunked)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_draw_on_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        gs.draw(random_splats(), _orbit_cameras(1), torch.eye(3), 8, 8, device="cuda")


def test_import_internal_stays_light():
    import subprocess
    import sys

    code = "import sys, internal; bad = [m for m in ('lightning', 'viser', 'pytorch_lightning') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(gs.__path__[0] + "/.."))
    assert out.stdout.strip() == "[]"
