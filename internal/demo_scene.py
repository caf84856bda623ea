"""A small synthetic scene, written in both Blender (NeRF-synthetic) and COLMAP text formats.

The ground truth is ray-cast analytically here, in numpy, independently of the Gaussian rasterizer:
a checkerboard plinth carrying a sphere, a rotated box, a cylinder and a torus, each with a procedural
texture (checkers, stripes, bands, smooth colour gradients), Lambertian shading from one fixed
directional light with hard shadows baked in. Colour is view-independent, so a surface point has one
colour in every view; the COLMAP points3D carry exactly that colour, which is what makes the tests able
to check the geometry (projecting the points must land on pixels of their colour).

Conventions (the project's, see DESIGN.md):
- World is +Z up. Cameras sit on an upper spherical cap around the origin and look at it.
- Intrinsics K = [[fx,0,cx],[0,fy,cy],[0,0,1]] with cx = W/2, cy = H/2; pixel (col j, row i) has its
  centre at (j + 0.5, i + 0.5). Each pixel is the mean of ss x ss stratified samples inside it (box filter),
  so edges are antialiased and a point projects onto the pixel whose footprint contains it.
- COLMAP: world-to-camera in OpenCV axes (x right, y down, z forward), quaternion qw qx qy qz.
- Blender: `transform_matrix` is camera-to-world in OpenGL axes (x right, y up, z backward), i.e. the
  OpenCV camera-to-world with its y and z columns negated; fx = 0.5 W / tan(0.5 camera_angle_x).
- Split: the views are ordered along a spiral; view i is a test view when i % test_every == 0. COLMAP
  images are named so that sorted order is view order, hence the usual "every 8th image" hold-out of
  COLMAP scenes selects exactly the Blender test views.

Usage: ``python -m internal.demo_scene OUT_DIR`` (numpy and pillow only; a few seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------------------------
# Scene constants. Objects live within radius ~1.1 of the origin (inside the [-1.3, 1.3]^3 box that the
# Blender recipe of 3DGS fills with random initial points).

LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])  # towards the light
AMBIENT, DIFFUSE = 0.32, 0.72
PLINTH_TOP = -0.3
CAMERA_RADIUS = 3.2
CAMERA_ELEVATION_DEG = (12.0, 65.0)
CAMERA_ANGLE_X = 0.75  # radians, ~43 degrees horizontal field of view
BACKDROP_RADIUS = 6.0  # COLMAP only: an emissive textured sphere around everything
T_MIN = 1e-4
_INF = np.inf


def _hsv(h, s, v):
    """Vectorised HSV -> RGB, all in [0, 1]; returns (..., 3)."""
    h = np.mod(h, 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2.0) - 1))
    z = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    r = np.choose(sector, [c, x, z, z, x, c])
    g = np.choose(sector, [x, c, c, x, z, z])
    b = np.choose(sector, [z, z, x, c, c, x])
    m = v - c
    return np.stack([r + m, g + m, b + m], -1)


def _mix(a, b, w):
    """Per-point blend of two colours a, b ((3,) or (N,3)) with weight w (N,) in [0, 1]."""
    w = np.asarray(w, dtype=float)[..., None]
    return np.asarray(a) * (1 - w) + np.asarray(b) * w


def _checker(u, v):
    return (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2 == 1


def _safe_div(a, d):
    d = np.where(np.abs(d) < 1e-12, np.where(d < 0, -1e-12, 1e-12), d)
    return a / d


def _matmul3(p, A):
    """p (N, 3) @ A (3, 3) as three broadcast multiply-adds: BLAS threads buy nothing on a 3x3 and were
    measured to triple the run time when the two cores are shared with another process."""
    return p[:, 0:1] * A[0] + p[:, 1:2] * A[1] + p[:, 2:3] * A[2]


# ----------------------------------------------------------------------------------------------------
# Shapes. Each has intersect(o, d, tmin) -> t (inf on a miss), normal(p), albedo(p) and
# sample(n, rng) -> points uniform over its area. o, d, p are (N, 3) world arrays; d is unit length.


class Sphere:
    def __init__(self, center, radius, albedo=None):
        self.c = np.asarray(center, float)
        self.r = float(radius)
        self._albedo = albedo

    def intersect(self, o, d, tmin=T_MIN):
        oc = o - self.c
        b = np.einsum("ij,ij->i", oc, d)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - self.r * self.r)
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0, t1 = -b - sq, -b + sq
        t = np.where(t0 > tmin, t0, np.where(t1 > tmin, t1, _INF))
        return np.where(disc >= 0, t, _INF)

    def normal(self, p):
        return (p - self.c) / self.r

    def albedo(self, p):
        return self._albedo(self, p)

    def sample(self, n, rng):
        v = rng.normal(size=(n, 3))
        return self.c + self.r * v / np.linalg.norm(v, axis=1, keepdims=True)

    def area(self):
        return 4 * math.pi * self.r**2

    def lat_long(self, p):
        q = (p - self.c) / self.r
        u = (np.arctan2(q[:, 1], q[:, 0]) / (2 * math.pi)) % 1.0
        v = np.arccos(np.clip(q[:, 2], -1, 1)) / math.pi  # 0 at the top pole
        return u, v


class Box:
    """Oriented box: centre, half extents, rotation about +Z by `yaw` radians."""

    def __init__(self, center, half, yaw=0.0, albedo=None):
        self.c = np.asarray(center, float)
        self.h = np.asarray(half, float)
        cs, sn = math.cos(yaw), math.sin(yaw)
        self.M = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1.0]])  # local -> world (columns = axes)
        self._albedo = albedo

    def to_local(self, p):
        return _matmul3(p - self.c, self.M)

    def intersect(self, o, d, tmin=T_MIN):
        ol, dl = self.to_local(o), _matmul3(d, self.M)
        tn, tf = np.full(len(o), -_INF), np.full(len(o), _INF)
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):  # slabs, one axis at a time (1-D arrays are faster than (N, 3) reductions)
                inv = 1.0 / dl[:, a]
                t1, t2 = (-self.h[a] - ol[:, a]) * inv, (self.h[a] - ol[:, a]) * inv
                np.maximum(tn, np.minimum(t1, t2), out=tn)
                np.minimum(tf, np.maximum(t1, t2), out=tf)
        t = np.where(tn > tmin, tn, tf)
        return np.where((tn <= tf) & (tf > tmin), t, _INF)

    def face(self, p):
        """Face index 0..5 (+x,-x,+y,-y,+z,-z) and the local point."""
        pl = self.to_local(p)
        rel = pl / self.h
        axis = np.abs(rel).argmax(1)
        neg = rel[np.arange(len(p)), axis] < 0
        return axis * 2 + neg, pl

    def normal(self, p):
        f, _ = self.face(p)
        nl = np.zeros((len(p), 3))
        nl[np.arange(len(p)), f // 2] = np.where(f % 2 == 1, -1.0, 1.0)
        return _matmul3(nl, self.M.T)

    def albedo(self, p):
        return self._albedo(self, p)

    def area(self):
        hx, hy, hz = self.h
        return 8 * (hx * hy + hy * hz + hx * hz)

    def sample(self, n, rng):
        hx, hy, hz = self.h
        areas = np.array([hy * hz, hy * hz, hx * hz, hx * hz, hx * hy, hx * hy])
        f = rng.choice(6, size=n, p=areas / areas.sum())
        pl = rng.uniform(-1, 1, size=(n, 3)) * self.h
        axis = f // 2
        pl[np.arange(n), axis] = np.where(f % 2 == 1, -1, 1) * self.h[axis]
        return _matmul3(pl, self.M.T) + self.c


class Cylinder:
    """Upright (+Z) capped cylinder."""

    def __init__(self, center_xy, radius, z0, z1, albedo=None):
        self.cxy = np.asarray(center_xy, float)
        self.r, self.z0, self.z1 = float(radius), float(z0), float(z1)
        self._albedo = albedo

    def intersect(self, o, d, tmin=T_MIN):
        ox, oy = o[:, 0] - self.cxy[0], o[:, 1] - self.cxy[1]
        dx, dy = d[:, 0], d[:, 1]
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - self.r**2
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0))
        best = np.full(len(o), _INF)
        for sgn in (-1.0, 1.0):
            t = _safe_div(-b + sgn * sq, a)
            z = o[:, 2] + t * d[:, 2]
            ok = (disc >= 0) & (a > 1e-12) & (t > tmin) & (z >= self.z0) & (z <= self.z1)
            best = np.where(ok & (t < best), t, best)
        for zc in (self.z0, self.z1):
            t = _safe_div(zc - o[:, 2], d[:, 2])
            x, y = ox + t * dx, oy + t * dy
            ok = (t > tmin) & (x * x + y * y <= self.r**2)
            best = np.where(ok & (t < best), t, best)
        return best

    def part(self, p):
        """0 = side, 1 = bottom cap, 2 = top cap."""
        rxy = np.hypot(p[:, 0] - self.cxy[0], p[:, 1] - self.cxy[1])
        d_side = np.abs(rxy - self.r)
        d_bot, d_top = np.abs(p[:, 2] - self.z0), np.abs(p[:, 2] - self.z1)
        return np.stack([d_side, d_bot, d_top], 1).argmin(1)

    def normal(self, p):
        part = self.part(p)
        n = np.zeros((len(p), 3))
        n[:, 0], n[:, 1] = p[:, 0] - self.cxy[0], p[:, 1] - self.cxy[1]
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        n[part == 1] = (0, 0, -1)
        n[part == 2] = (0, 0, 1)
        return n

    def albedo(self, p):
        return self._albedo(self, p)

    def area(self):
        return 2 * math.pi * self.r * (self.z1 - self.z0) + 2 * math.pi * self.r**2

    def sample(self, n, rng):
        side = 2 * math.pi * self.r * (self.z1 - self.z0)
        cap = math.pi * self.r**2
        part = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
        phi = rng.uniform(0, 2 * math.pi, n)
        rad = np.where(part == 0, self.r, self.r * np.sqrt(rng.uniform(0, 1, n)))
        z = np.where(part == 0, rng.uniform(self.z0, self.z1, n), np.where(part == 1, self.z0, self.z1))
        return np.stack([self.cxy[0] + rad * np.cos(phi), self.cxy[1] + rad * np.sin(phi), z], 1)


class Torus:
    """Torus around a +Z axis; intersected by sphere tracing its distance function, only for the rays
    that enter its bounding sphere (a few percent of them), which keeps it cheap in numpy."""

    def __init__(self, center, R, r, albedo=None):
        self.c = np.asarray(center, float)
        self.R, self.r = float(R), float(r)
        self.bound = Sphere(self.c, self.R + self.r + 1e-3)
        self._albedo = albedo

    def sdf(self, q):
        return np.hypot(np.hypot(q[:, 0], q[:, 1]) - self.R, q[:, 2]) - self.r

    def intersect(self, o, d, tmin=T_MIN):
        oc = o - self.c
        b = np.einsum("ij,ij->i", oc, d)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - self.bound.r**2)
        sq = np.sqrt(np.maximum(disc, 0.0))
        t_in, t_out = np.maximum(-b - sq, tmin), -b + sq
        out = np.full(len(o), _INF)
        idx = np.nonzero((disc > 0) & (t_out > tmin))[0]
        t, t_end = t_in[idx], t_out[idx]
        q0, dd = oc[idx], d[idx]
        for _ in range(200):
            if len(idx) == 0:
                break
            dist = self.sdf(q0 + t[:, None] * dd)
            hit = dist < 2e-6
            gone = t > t_end
            out[idx[hit]] = t[hit]
            keep = ~(hit | gone)
            idx, t, t_end, q0, dd, dist = idx[keep], t[keep], t_end[keep], q0[keep], dd[keep], dist[keep]
            t = t + dist
        return out

    def angles(self, p):
        q = p - self.c
        u = np.arctan2(q[:, 1], q[:, 0])  # around the main axis
        v = np.arctan2(q[:, 2], np.hypot(q[:, 0], q[:, 1]) - self.R)  # around the tube
        return u, v

    def normal(self, p):
        q = p - self.c
        rxy = np.maximum(np.hypot(q[:, 0], q[:, 1]), 1e-12)
        ring = np.stack([q[:, 0] / rxy * self.R, q[:, 1] / rxy * self.R, np.zeros(len(p))], 1)
        n = q - ring
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def albedo(self, p):
        return self._albedo(self, p)

    def area(self):
        return 4 * math.pi**2 * self.R * self.r

    def sample(self, n, rng):
        pts = []
        while sum(len(x) for x in pts) < n:  # rejection sampling: area element ~ (R + r cos v)
            u = rng.uniform(0, 2 * math.pi, 2 * n)
            v = rng.uniform(0, 2 * math.pi, 2 * n)
            keep = rng.uniform(0, self.R + self.r, 2 * n) < self.R + self.r * np.cos(v)
            u, v = u[keep], v[keep]
            rr = self.R + self.r * np.cos(v)
            pts.append(np.stack([rr * np.cos(u), rr * np.sin(u), self.r * np.sin(v)], 1) + self.c)
        return np.concatenate(pts)[:n]


# ----------------------------------------------------------------------------------------------------
# Procedural textures (albedo in [0, 1]). Periods are chosen so that at ~200 px a texture cell spans
# about 6-15 pixels: sharp enough that PSNR measures detail, coarse enough to be learnable.


def _plinth_albedo(box, p):
    f, pl = box.face(p)
    top = _checker(pl[:, 0] / box.h[0] * 4, pl[:, 1] / box.h[1] * 4)  # 8 x 8 board
    # A gentle diagonal gradient across the board keeps the squares from being all alike.
    g = np.clip((pl[:, 0] + pl[:, 1]) / (4 * box.h[0]) + 0.5, 0, 1)
    light = _mix([0.93, 0.88, 0.74], [0.98, 0.80, 0.62], g)
    dark = _mix([0.10, 0.33, 0.38], [0.22, 0.16, 0.42], g)
    col = np.where(top[:, None], dark, light)
    side = _hsv(0.05 + 0.12 * (pl[:, 0] + pl[:, 1]) / (2 * box.h[0]), 0.65, 0.85)
    stripes = (np.floor((pl[:, 0] - pl[:, 1]) * 10) % 2 == 0)[:, None]
    side = np.where(stripes, side, side * 0.55)
    col = np.where((f == 4)[:, None], col, side)
    return col


def _sphere_albedo(sph, p):
    u, v = sph.lat_long(p)
    ck = _checker(u * 16, v * 8)
    warm = _hsv(0.0 + 0.14 * v, 0.85, 0.95)  # red at the top to yellow at the bottom
    cool = _mix([0.85, 0.92, 1.0], [0.35, 0.55, 0.95], v)
    return np.where(ck[:, None], warm, cool)


_BOX_FACE_HUES = np.array([0.58, 0.33, 0.75, 0.12, 0.95, 0.45])


def _box_albedo(box, p):
    f, pl = box.face(p)
    # Face-local (s, t) coordinates in [-1, 1] from the two axes that are not the face normal.
    axis = f // 2
    a1, a2 = (axis + 1) % 3, (axis + 2) % 3
    n = np.arange(len(p))
    s = pl[n, a1] / box.h[a1]
    t = pl[n, a2] / box.h[a2]
    stripe = np.floor((s + t) * 3.0) % 2 == 0  # diagonal stripes, ~6 per face
    base = _hsv(_BOX_FACE_HUES[f], 0.75, 0.9)
    pale = _mix(base, [1.0, 1.0, 1.0], 0.7)
    edge = np.maximum(np.abs(s), np.abs(t)) > 0.88  # dark frame around each face
    col = np.where(stripe[:, None], base, pale)
    return np.where(edge[:, None], base * 0.35, col)


def _cylinder_albedo(cyl, p):
    part = cyl.part(p)
    phi = np.arctan2(p[:, 1] - cyl.cxy[1], p[:, 0] - cyl.cxy[0])
    h = (p[:, 2] - cyl.z0) / (cyl.z1 - cyl.z0)
    stripe = np.floor(phi / (2 * math.pi) * 14) % 2 == 0
    side = np.where(stripe[:, None], _mix([0.10, 0.55, 0.25], [0.55, 0.90, 0.35], h),
                    _mix([0.95, 0.95, 0.90], [0.30, 0.35, 0.80], h))
    ring = (np.floor(h * 6) % 2 == 0) & (np.floor(h * 6) % 3 == 0)  # two dark bands
    side = np.where(ring[:, None], side * 0.45, side)
    sector = np.floor(phi / (2 * math.pi) * 8) % 2 == 0
    cap = np.where(sector[:, None], np.array([0.95, 0.45, 0.15]), np.array([0.98, 0.92, 0.55]))
    return np.where((part == 0)[:, None], side, cap)


def _torus_albedo(tor, p):
    u, v = tor.angles(p)
    col = _hsv(u / (2 * math.pi), 0.8, 0.95)  # a rainbow around the ring
    band = np.floor(v / (2 * math.pi) * 8) % 2 == 0
    return np.where(band[:, None], col, col * 0.45 + 0.05)


def _backdrop_colour(p):
    """Emissive backdrop of the COLMAP scene: sky-like gradient with a soft checker of 24 x 12 cells."""
    q = p / np.linalg.norm(p, axis=1, keepdims=True)
    u = (np.arctan2(q[:, 1], q[:, 0]) / (2 * math.pi)) % 1.0
    elev = np.arcsin(np.clip(q[:, 2], -1, 1)) / (math.pi / 2)  # -1..1
    sky = _mix([0.80, 0.86, 0.95], [0.25, 0.42, 0.75], np.clip(elev, 0, 1))
    ground = _mix([0.55, 0.48, 0.40], [0.30, 0.25, 0.20], np.clip(-elev, 0, 1))
    col = np.where((elev >= 0)[:, None], sky, ground)
    # Sky: cells in longitude/elevation. Ground: cells in the sphere's xy projection, which (unlike
    # longitude) has no pole where cells would shrink into a sub-pixel fan below the plinth.
    ck = np.where(elev >= 0, _checker(u * 24, elev * 6), _checker(q[:, 0] * 4, q[:, 1] * 4))
    tint = _hsv(u, 0.35, 1.0)
    return np.where(ck[:, None], col * 0.8 + 0.2 * tint, col * 0.92)


def build_scene():
    """The object list (index = object id). All rest on the plinth's top at z = PLINTH_TOP."""
    z = PLINTH_TOP
    return [
        Box((0.0, 0.0, z - 0.05), (0.75, 0.75, 0.05), 0.0, _plinth_albedo),  # 0: checkerboard plinth
        Sphere((-0.36, -0.36, z + 0.34), 0.34, _sphere_albedo),  # 1
        Box((0.36, -0.26, z + 0.25), (0.2, 0.2, 0.25), math.radians(25), _box_albedo),  # 2
        Cylinder((0.36, 0.38), 0.15, z, z + 0.72, _cylinder_albedo),  # 3
        Torus((-0.3, 0.36, z + 0.1), 0.25, 0.1, _torus_albedo),  # 4
    ]


# ----------------------------------------------------------------------------------------------------
# Ray casting and shading.


def _nearest_hit(objects, o, d, tmin=T_MIN):
    t_best = np.full(len(o), _INF)
    obj = np.full(len(o), -1)
    for k, s in enumerate(objects):
        t = s.intersect(o, d, tmin)
        closer = t < t_best
        t_best[closer], obj[closer] = t[closer], k
    return t_best, obj


def _occluded(objects, o, d):
    blocked = np.zeros(len(o), bool)
    for s in objects:
        idx = np.nonzero(~blocked)[0]
        blocked[idx] |= np.isfinite(s.intersect(o[idx], d[idx]))
    return blocked


def shade(objects, p, obj):
    """Radiance (N, 3) in [0, 1] of surface points p (N, 3) on objects obj (N,): albedo times
    (ambient + diffuse * N.L * unshadowed). A pure function of the point, hence view-independent."""
    col = np.zeros((len(p), 3))
    nrm = np.zeros((len(p), 3))
    for k, s in enumerate(objects):
        m = obj == k
        if m.any():
            col[m] = s.albedo(p[m])
            nrm[m] = s.normal(p[m])
    ndl = nrm[:, 0] * LIGHT_DIR[0] + nrm[:, 1] * LIGHT_DIR[1] + nrm[:, 2] * LIGHT_DIR[2]
    lit = ndl > 0
    idx = np.nonzero(lit)[0]
    o = p[idx] + 1e-4 * nrm[idx]
    shadow = _occluded(objects, o, np.broadcast_to(LIGHT_DIR, o.shape).copy())
    vis = np.zeros(len(p))
    vis[idx[~shadow]] = 1.0
    return np.clip(col * (AMBIENT + DIFFUSE * np.maximum(ndl, 0) * vis)[:, None], 0, 1)


def camera_poses(n_views, seed=0):
    """OpenCV camera-to-world (n, 4, 4): a golden-angle spiral over the cap of elevations
    CAMERA_ELEVATION_DEG at distance CAMERA_RADIUS, each looking at the origin with +Z up."""
    rng = np.random.default_rng(seed)
    e0, e1 = np.radians(CAMERA_ELEVATION_DEG)
    i = np.arange(n_views) + 0.5
    sin_e = np.sin(e0) + (np.sin(e1) - np.sin(e0)) * i / n_views  # uniform in area over the cap
    elev = np.arcsin(sin_e)
    azim = i * math.pi * (3 - math.sqrt(5)) + rng.uniform(0, 2 * math.pi)
    centres = CAMERA_RADIUS * np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), sin_e], 1)
    poses = np.zeros((n_views, 4, 4))
    for k, c in enumerate(centres):
        fwd = -c / np.linalg.norm(c)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        poses[k, :3, 0], poses[k, :3, 1], poses[k, :3, 2], poses[k, :3, 3] = right, down, fwd, c
        poses[k, 3, 3] = 1.0
    return poses


def render_view(objects, c2w, fx, fy, cx, cy, width, height, ss=2, backdrop=True):
    """Ray-cast one view. Returns (rgba_straight (H,W,4), rgb_with_backdrop (H,W,3) or None), float in
    [0, 1]. alpha = the fraction of the ss*ss samples that hit an object; rgba's colour is the mean over
    those samples (straight alpha, as NeRF-synthetic PNGs store it)."""
    offs = (np.arange(ss) + 0.5) / ss  # stratified sample positions inside a pixel [j, j+1)
    u = (np.arange(width)[None, :, None, None] + offs[None, None, None, :])
    v = (np.arange(height)[:, None, None, None] + offs[None, None, :, None])
    u, v = np.broadcast_arrays(u, v)  # (H, W, ss, ss)
    dirs_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).reshape(-1, 3)
    d = _matmul3(dirs_cam, c2w[:3, :3].T)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    t, obj = _nearest_hit(objects, o, d)
    hit = obj >= 0
    col = np.zeros((len(d), 3))
    col[hit] = shade(objects, o[hit] + t[hit, None] * d[hit], obj[hit])
    n = ss * ss
    hitf = hit.reshape(height, width, n).astype(float)
    premul = col.reshape(height, width, n, 3).sum(2) / n
    alpha = hitf.mean(2)
    rgb = np.where(alpha[..., None] > 0, premul / np.maximum(alpha, 1e-12)[..., None], 0.0)
    rgba = np.concatenate([np.clip(rgb, 0, 1), alpha[..., None]], -1)
    full = None
    if backdrop:
        bd = np.zeros((len(d), 3))
        miss = ~hit
        tb = Sphere((0, 0, 0), BACKDROP_RADIUS).intersect(o[miss], d[miss])
        bd[miss] = _backdrop_colour(o[miss] + tb[:, None] * d[miss])
        full = np.clip(premul + bd.reshape(height, width, n, 3).sum(2) / n, 0, 1)
    return rgba, full


# ----------------------------------------------------------------------------------------------------
# Sparse points for COLMAP: surface samples with their exact colour, and tracks of the views that see
# them (in the frame, and the first surface along the ray from the camera).


def _sample_points(objects, n_points, rng, c2w, fx, fy, cx, cy, width, height):
    """Surface points and their object ids (len(objects) = the backdrop). Objects: uniform over area,
    half the budget shared by area and half equally so that small objects get enough points. Backdrop:
    a fifth of the budget, cast through random image positions of random views, so that its points lie
    where the views see it (most of the sphere is never in frame)."""
    areas = np.array([s.area() for s in objects])
    share = 0.5 * areas / areas.sum() + 0.5 / len(objects)
    n_obj = int(n_points * 0.8)
    counts = np.maximum((share * n_obj).astype(int), 1)
    pts, ids = [], []
    for k, (s, c) in enumerate(zip(objects, counts)):
        pts.append(s.sample(int(c), rng))
        ids.append(np.full(int(c), k))
    nb, got = n_points - n_obj, 0
    backdrop = Sphere((0, 0, 0), BACKDROP_RADIUS)
    while got < nb:
        m = 4 * (nb - got)
        view = rng.integers(0, len(c2w), m)
        dc = np.stack([(rng.uniform(0, width, m) - cx) / fx, (rng.uniform(0, height, m) - cy) / fy,
                       np.ones(m)], 1)
        d = np.einsum("nij,nj->ni", c2w[view, :3, :3], dc)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = c2w[view, :3, 3]
        _, obj = _nearest_hit(objects, o, d)
        miss = np.nonzero(obj < 0)[0][: nb - got]
        pts.append(o[miss] + backdrop.intersect(o[miss], d[miss])[:, None] * d[miss])
        ids.append(np.full(len(miss), len(objects)))
        got += len(miss)
    return np.concatenate(pts), np.concatenate(ids)


def _observations(objects, pts, ids, w2c, fx, fy, cx, cy, width, height):
    """For one camera: indices of the points it sees (in frame, and the first surface along the ray
    from its centre, the backdrop counting as object len(objects)) and their pixel coordinates."""
    pc = _matmul3(pts, w2c[:3, :3].T) + w2c[:3, 3]
    z = pc[:, 2]
    x = fx * pc[:, 0] / np.maximum(z, 1e-9) + cx
    y = fy * pc[:, 1] / np.maximum(z, 1e-9) + cy
    inside = (z > 1e-3) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    idx = np.nonzero(inside)[0]
    centre = -w2c[:3, :3].T @ w2c[:3, 3]
    vec = pts[idx] - centre
    dist = np.linalg.norm(vec, axis=1)
    d = vec / dist[:, None]
    o = np.broadcast_to(centre, d.shape)
    t, obj = _nearest_hit(objects, o, d)
    t = np.where(obj < 0, Sphere((0, 0, 0), BACKDROP_RADIUS).intersect(o, d), t)
    obj = np.where(obj < 0, len(objects), obj)
    vis = (obj == ids[idx]) & (np.abs(t - dist) < 1e-6 * BACKDROP_RADIUS * 10)
    keep = idx[vis]
    return keep, np.stack([x[keep], y[keep]], 1)


def _rotmat_to_qvec(R):
    """Rotation matrix -> unit quaternion (qw, qx, qy, qz) with qw >= 0."""
    m = R
    tr = np.trace(m)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


# ----------------------------------------------------------------------------------------------------
# Writers.


def _to_u8(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_blender(root, names, c2w_cv, rgba, test_mask):
    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    os.makedirs(os.path.join(root, "test"), exist_ok=True)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes -> OpenGL camera axes
    frames = {"train": [], "test": []}
    for k, name in enumerate(names):
        split = "test" if test_mask[k] else "train"
        stem = f"r_{len(frames[split])}"
        Image.fromarray(_to_u8(rgba[k]), "RGBA").save(os.path.join(root, split, stem + ".png"))
        frames[split].append({"file_path": f"./{split}/{stem}",
                              "transform_matrix": (c2w_cv[k] @ flip).tolist()})
    paths = {}
    for split, fr in (("train", frames["train"]), ("test", frames["test"]), ("val", frames["test"])):
        path = os.path.join(root, f"transforms_{split}.json")
        with open(path, "w") as f:
            json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": fr}, f, indent=2)
        paths[f"transforms_{split}"] = path
    return paths


def _write_colmap(root, names, c2w_cv, full, objects, fx, fy, cx, cy, width, height, n_points, rng):
    img_dir = os.path.join(root, "images")
    sparse = os.path.join(root, "sparse", "0")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(sparse, exist_ok=True)
    for name, im in zip(names, full):
        Image.fromarray(_to_u8(im), "RGB").save(os.path.join(img_dir, name))

    pts, ids = _sample_points(objects, n_points, rng, c2w_cv, fx, fy, cx, cy, width, height)
    w2c = np.linalg.inv(c2w_cv)
    obs = [_observations(objects, pts, ids, w2c[k], fx, fy, cx, cy, width, height)
           for k in range(len(names))]
    tracks = [[] for _ in range(len(pts))]
    for k, (idx, _) in enumerate(obs):
        for j, p in enumerate(idx):
            tracks[p].append((k + 1, j))
    # Keep points seen by at least two views (as triangulation would); ids are 1-based, consecutive.
    kept = [p for p in range(len(pts)) if len(tracks[p]) >= 2]
    pid = np.zeros(len(pts), dtype=np.int64) - 1
    pid[kept] = np.arange(1, len(kept) + 1)
    obj_pts = ids < len(objects)
    colour = np.zeros((len(pts), 3))
    colour[obj_pts] = shade(objects, pts[obj_pts], ids[obj_pts])
    colour[~obj_pts] = _backdrop_colour(pts[~obj_pts])
    rgb8 = _to_u8(colour)

    with open(os.path.join(sparse, "cameras.txt"), "w") as f:
        f.write("# Camera list with one line of data per camera:\n")
        f.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        f.write("# Number of cameras: 1\n")
        f.write(f"1 PINHOLE {width} {height} {fx:.12g} {fy:.12g} {cx:.12g} {cy:.12g}\n")

    n_obs = [int(sum(pid[p] > 0 for p in idx)) for idx, _ in obs]
    with open(os.path.join(sparse, "images.txt"), "w") as f:
        f.write("# Image list with two lines of data per image:\n")
        f.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
        f.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        f.write(f"# Number of images: {len(names)}, mean observations per image: "
                f"{np.mean(n_obs) if n_obs else 0:.6g}\n")
        for k, name in enumerate(names):
            q = _rotmat_to_qvec(w2c[k, :3, :3])
            t = w2c[k, :3, 3]
            f.write(f"{k + 1} " + " ".join(f"{x:.12g}" for x in (*q, *t)) + f" 1 {name}\n")
            idx, xy = obs[k]
            # Every observation keeps its index j (tracks refer to it); those of dropped points read -1.
            f.write(" ".join(f"{x:.6f} {y:.6f} {pid[p]}" for p, (x, y) in zip(idx, xy)) + "\n")

    mean_track = np.mean([len(tracks[p]) for p in kept]) if kept else 0.0
    with open(os.path.join(sparse, "points3D.txt"), "w") as f:
        f.write("# 3D point list with one line of data per point:\n")
        f.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        f.write(f"# Number of points: {len(kept)}, mean track length: {mean_track:.6g}\n")
        for p in kept:
            x, y, z = pts[p]
            r, g, b = rgb8[p]
            track = " ".join(f"{i} {j}" for i, j in tracks[p])
            f.write(f"{pid[p]} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0 {track}\n")
    return {"colmap_images": img_dir, "colmap_sparse": sparse}, len(kept)


_README_HEAD = """\
Demo scene of the Gaussian Splatting trainer: a checkerboard plinth with a textured sphere, box,
cylinder and torus, ray-cast analytically by internal/demo_scene.py (not by our rasterizer), with
Lambertian shading and hard shadows from one fixed light baked into view-independent colours.

"""
_README_BLENDER = """\
  blender/  NeRF-synthetic layout: transforms_{{train,val,test}}.json (val = test), RGBA PNGs whose alpha
            is pixel coverage (transparent background). camera_angle_x = {angle}.
"""
_README_COLMAP = """\
  colmap/   images/*.png (RGB, the same views in front of an emissive textured backdrop sphere of radius
            {backdrop}) and sparse/0/{{cameras,images,points3D}}.txt: one PINHOLE camera, poses
            world-to-camera (OpenCV axes), {n_pts} surface points with exact colours and tracks.
"""
_README_VIEWS = """
Views: {n} at {w}x{h}, on a spiral over elevations {e0:.0f}..{e1:.0f} degrees at distance {rad} from the origin,
each pixel the mean of {ss}x{ss} samples. View i is a test view when i % {every} == 0 (COLMAP images are
named in view order, so "every {every}th image" selects the same {n_test} test views as the Blender split).
Generated with seed {seed}.
"""


def generate_demo_scene(out_dir, *, width=200, height=200, n_views=56, test_every=8, ss=2,
                        n_points=5000, seed=0, formats=("blender", "colmap")):
    """Write the demo scene under out_dir and return a dict of the paths written.

    n_views cameras in all; view i is a test view when i % test_every == 0 (for COLMAP, test views are
    the ones loaders hold out with the usual every-`test_every`-th rule). ss: supersamples per pixel side.
    n_points: surface samples drawn for COLMAP's points3D (those seen by >= 2 views are kept).
    """
    formats = tuple(formats)
    unknown = set(formats) - {"blender", "colmap"}
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected 'blender' and/or 'colmap'")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    objects = build_scene()
    fx = 0.5 * width / math.tan(0.5 * CAMERA_ANGLE_X)
    fy = fx  # square pixels; Blender's format only carries camera_angle_x
    cx, cy = width / 2.0, height / 2.0
    c2w = camera_poses(n_views, seed)
    names = [f"{k:05d}.png" for k in range(n_views)]
    test_mask = np.arange(n_views) % test_every == 0

    rgba, full = [], []
    for k in range(n_views):
        a, b = render_view(objects, c2w[k], fx, fy, cx, cy, width, height, ss, "colmap" in formats)
        rgba.append(a)
        full.append(b)

    paths = {"root": os.path.abspath(out_dir)}
    if "blender" in formats:
        root = os.path.join(out_dir, "blender")
        paths["blender"] = os.path.abspath(root)
        paths.update(_write_blender(root, names, c2w, rgba, test_mask))
    if "colmap" in formats:
        root = os.path.join(out_dir, "colmap")
        paths["colmap"] = os.path.abspath(root)
        colmap_paths, n_kept = _write_colmap(root, names, c2w, full, objects, fx, fy, cx, cy, width,
                                             height, n_points, rng)
        paths.update(colmap_paths)
    readme = os.path.join(out_dir, "README.txt")
    with open(readme, "w") as f:
        f.write(_README_HEAD)
        if "blender" in formats:
            f.write(_README_BLENDER.format(angle=CAMERA_ANGLE_X))
        if "colmap" in formats:
            f.write(_README_COLMAP.format(backdrop=BACKDROP_RADIUS, n_pts=n_kept))
        f.write(_README_VIEWS.format(n=n_views, w=width, h=height, e0=CAMERA_ELEVATION_DEG[0],
                                     e1=CAMERA_ELEVATION_DEG[1], rad=CAMERA_RADIUS, ss=ss,
                                     every=test_every, n_test=int(test_mask.sum()), seed=seed))
    paths["readme"] = readme
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m internal.demo_scene", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--height", type=int, default=200)
    ap.add_argument("--n-views", type=int, default=56)
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--ss", type=int, default=2, help="supersamples per pixel side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", nargs="+", default=["blender", "colmap"], choices=["blender", "colmap"])
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_demo_scene(args.out_dir, width=args.width, height=args.height, n_views=args.n_views,
                                test_every=args.test_every, ss=args.ss, seed=args.seed, formats=args.formats)
    print(f"demo scene written in {time.perf_counter() - t0:.1f} s:")
    for fmt in ("blender", "colmap"):
        if fmt in paths:
            print(f"  {fmt:8s} {paths[fmt]}")
    print(f"  readme   {paths['readme']}")


if __name__ == "__main__":
    main()
