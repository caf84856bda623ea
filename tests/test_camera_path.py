"""Camera-path JSON (internal/camera_path.py): round trips, bad files, the spline's properties, mp4 output."""

import json
import math

import numpy as np
import pytest

from internal.camera_path import (
    CameraPath, CameraPathError, CameraPose, interpolate, quat_to_rotmat, rotmat_to_quat, sample, slerp, write_video,
)


def rot(axis, angle):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def pose(R, t, fov=50.0, time=None):
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, t
    return CameraPose(c2w, fov, time)


def random_keys(n, seed=0, times=None):
    rng = np.random.default_rng(seed)
    return [pose(rot(rng.normal(size=3), rng.uniform(0.2, 2.5)), rng.normal(size=3) * 2, 40 + 10 * i,
                 None if times is None else times[i]) for i in range(n)]


def test_quaternion_round_trip_and_slerp_geodesic():
    rng = np.random.default_rng(1)
    for _ in range(50):
        R = rot(rng.normal(size=3), rng.uniform(0, math.pi))
        np.testing.assert_allclose(quat_to_rotmat(rotmat_to_quat(R)), R, atol=1e-12)
    # slerp halfway between identity and a 120 degree turn is the 60 degree turn about the same axis
    q0, q1 = rotmat_to_quat(np.eye(3)), rotmat_to_quat(rot([1, 2, 3], math.radians(120)))
    np.testing.assert_allclose(quat_to_rotmat(slerp(q0, q1, 0.5)), rot([1, 2, 3], math.radians(60)), atol=1e-12)
    # ... and takes the short way when the second quaternion is given with the other sign
    np.testing.assert_allclose(quat_to_rotmat(slerp(q0, -q1, 0.5)), rot([1, 2, 3], math.radians(60)), atol=1e-12)


def test_save_load_round_trip(tmp_path):
    path = CameraPath(keyframes=random_keys(4, times=[0, 1, 2.5, 4]), fps=24, seconds=4, width=320, height=240,
                      loop=False)
    f = path.save(tmp_path / "path.json")
    data = json.loads(f.read_text())
    assert data["format"] == "splat-lightning-camera-path" and data["version"] == 1
    back = CameraPath.load(f)
    assert (back.fps, back.seconds, back.width, back.height, back.loop) == (24, 4, 320, 240, False)
    for a, b in zip(path.keyframes, back.keyframes):
        np.testing.assert_allclose(a.c2w, b.c2w)
        assert (a.fov_y_deg, a.time) == (b.fov_y_deg, b.time)
    c1, f1 = interpolate(path)
    c2, f2 = interpolate(back)
    np.testing.assert_allclose(c1, c2)
    np.testing.assert_allclose(f1, f2)
    assert len(c1) == 24 * 4


def test_frames_are_used_as_is(tmp_path):
    keys = random_keys(5)
    c2ws = np.stack([k.c2w for k in keys])
    path = CameraPath.from_frames(c2ws, np.radians([30, 35, 40, 45, 50]), fps=10, width=64, height=48)
    back = CameraPath.load(path.save(tmp_path / "frames.json"))
    c, fov = interpolate(back, num_frames=99)  # an explicit list wins over a frame count
    np.testing.assert_allclose(c, c2ws)
    np.testing.assert_allclose(np.degrees(fov), [30, 35, 40, 45, 50])


def test_interpolation_passes_through_keyframes_and_is_c1():
    times = [0.0, 1.0, 3.0, 3.5, 6.0]
    keys = random_keys(5, seed=3, times=times)
    path = CameraPath(keyframes=keys, seconds=6.0)
    c2w, fov = sample(path, np.array(times))
    for k, c, f in zip(keys, c2w, fov):
        np.testing.assert_allclose(c, k.c2w, atol=1e-9)
        assert f == pytest.approx(math.radians(k.fov_y_deg))
    # Every frame is a proper rotation.
    c2w, _ = sample(path, np.linspace(0, 6, 301))
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    assert np.allclose(np.linalg.det(R), 1.0)
    # C1 at the inner knots: one-sided velocities (position and rotation) agree; they would not for a
    # piecewise-linear path (checked below as a control).
    eps = 1e-5
    for tk in times[1:-1]:
        (a, b, c), _ = sample(path, np.array([tk - eps, tk, tk + eps]))
        left, right = (b - a) / eps, (c - b) / eps
        assert np.abs(left[:3, 3] - right[:3, 3]).max() < 1e-3 * max(1.0, np.abs(left[:3, 3]).max())
        assert np.abs(left[:3, :3] - right[:3, :3]).max() < 1e-3 * max(1.0, np.abs(left[:3, :3]).max())
        lin_left = (keys[times.index(tk)].c2w[:3, 3] - keys[times.index(tk) - 1].c2w[:3, 3])
        lin_right = (keys[times.index(tk) + 1].c2w[:3, 3] - keys[times.index(tk)].c2w[:3, 3])
        assert np.abs(lin_left / (tk - times[times.index(tk) - 1]) - lin_right / (times[times.index(tk) + 1] - tk)).max() > 1e-2


def test_two_keyframes_slerp_and_evenly_spaced_default():
    a = pose(np.eye(3), [0, 0, 0], 30)
    b = pose(rot([0, 1, 0], math.radians(90)), [2, 0, 0], 60)
    path = CameraPath(keyframes=[a, b], fps=5, seconds=2)  # no times: 0 and 2 s
    c2w, fov = interpolate(path)
    assert len(c2w) == 10
    mid, mfov = sample(path, np.array([1.0]))
    np.testing.assert_allclose(mid[0, :3, :3], rot([0, 1, 0], math.radians(45)), atol=1e-12)
    np.testing.assert_allclose(mid[0, :3, 3], [1, 0, 0], atol=1e-12)  # Hermite with chord tangents: linear
    assert mfov[0] == pytest.approx(math.radians(45))
    np.testing.assert_allclose(c2w[0], a.c2w, atol=1e-12)
    np.testing.assert_allclose(c2w[-1], b.c2w, atol=1e-12)


def test_loop_closes_smoothly():
    keys = random_keys(4, seed=7)
    path = CameraPath(keyframes=keys, fps=10, seconds=4, loop=True)
    np.testing.assert_allclose(path.keyframe_times(), [0, 1, 2, 3])
    c2w, _ = interpolate(path)
    assert len(c2w) == 40
    np.testing.assert_allclose(c2w[0], keys[0].c2w, atol=1e-9)
    # Approaching the end of the period comes back to the first keyframe, smoothly across the seam.
    eps = 1e-5
    (a,), _ = sample(path, np.array([4.0 - eps]))
    (b,), _ = sample(path, np.array([0.0]))
    (c,), _ = sample(path, np.array([eps]))
    np.testing.assert_allclose(a, b, atol=1e-3)
    left, right = (b - a) / eps, (c - b) / eps
    assert np.abs(left - right).max() < 1e-3 * max(1.0, np.abs(left).max())
    # Without loop the path would end at the last keyframe instead.
    open_path = CameraPath(keyframes=keys, fps=10, seconds=4)
    np.testing.assert_allclose(interpolate(open_path)[0][-1], keys[-1].c2w, atol=1e-9)


def test_single_keyframe_holds_still():
    k = random_keys(1)[0]
    c2w, fov = interpolate(CameraPath(keyframes=[k], fps=4, seconds=1))
    assert len(c2w) == 4
    np.testing.assert_allclose(c2w, np.broadcast_to(k.c2w, (4, 4, 4)))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="something-else"), "not a camera-path file"),
    (lambda d: d.update(version=99), "newer than this program"),
    (lambda d: d.update(fps=0), "fps must be positive"),
    (lambda d: d.update(fps="fast"), "\"fps\" must be a number"),
    (lambda d: d.update(width=12.5), "whole number"),
    (lambda d: d.update(keyframes=[], frames=None), "no keyframes"),
    (lambda d: d["keyframes"][1].update(c2w=[[1, 0, 0], [0, 1, 0]]), "keyframes[1]: \"c2w\" must be a 4x4"),
    (lambda d: d["keyframes"][0]["c2w"][0].__setitem__(0, 2.0), "not a rotation"),
    (lambda d: d["keyframes"][0].update(fov_y_deg=190), "fov_y_deg must be in (0, 180)"),
    (lambda d: d["keyframes"][0].update(time=0.0), "either every keyframe has a \"time\" or none"),
    (lambda d: [k.update(time=t) for k, t in zip(d["keyframes"], [0, 2, 1])], "must increase strictly"),
    (lambda d: [k.update(time=t) for k, t in zip(d["keyframes"], [0, 2, 9])], "must lie in [0, seconds]"),
    (lambda d: d.update(loop="yes"), "\"loop\" must be true or false"),
])
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, mutate, message):
    data = CameraPath(keyframes=random_keys(3), seconds=3).to_dict()
    mutate(data)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(CameraPathError) as err:
        CameraPath.load(f)
    text = str(err.value)
    assert str(f) in text and message in text and "\n" not in text


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(CameraPathError, match="no such camera-path file"):
        CameraPath.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CameraPathError, match="not valid JSON"):
        CameraPath.load(tmp_path / "x.json")


def test_write_video_h264(tmp_path):
    import imageio_ffmpeg

    rng = np.random.default_rng(0)
    frames = []
    for i in range(12):
        f = np.zeros((37, 50, 3), np.uint8)  # odd height: padded to 38
        f[:, : 4 * (i + 1)] = (240, 128, 0)
        f += rng.integers(0, 3, f.shape, dtype=np.uint8)
        frames.append(f)
    out = write_video(iter(frames), tmp_path / "sub" / "video.mp4", fps=12)
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (50, 38) and meta["codec"] == "h264" and meta["fps"] == pytest.approx(12)
    decoded = [np.frombuffer(b, np.uint8).reshape(38, 50, 3) for b in reader]
    assert len(decoded) == 12
    # The orange bar grows frame by frame: the decoded frames are the ones written (within H.264 error).
    for i in (0, 5, 11):
        assert np.abs(decoded[i][:37].astype(int) - frames[i].astype(int)).mean() < 6


def test_write_video_refuses_mixed_sizes_and_leaves_no_file(tmp_path):
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 18, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1 is 18x16"):
        write_video(frames, tmp_path / "v.mp4", fps=5)
    assert list(tmp_path.iterdir()) == []
