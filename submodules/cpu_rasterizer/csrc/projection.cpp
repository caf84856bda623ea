// Stage 1 of docs/rasterizer.md on the CPU: Gaussians -> per-camera means2d, conics, depths, radii,
// with a hand-written backward to means, quats and scales.
//
// The forward mirrors internal/rasterize/projection.py operation by operation in float32 (the
// order of every sum, where torch divides by a reciprocal, where its matmuls use FMA), because the
// integer radius and the tile rectangle derived from it are discontinuous: a one-ulp difference can
// move a Gaussian across a tile border. Measured against torch 2.13 (CPU): the einsum giving the
// camera-space point is an FMA chain, the 2x3 / 3x3 batched matmuls are plain sequential sums
// (torch's small-matrix kernel), the 4-vector norm is a sequential sum. Gradients need not be
// bit-identical, and are computed in straightforward float32.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "parallel.h"
#include "simd.h"

namespace cpu_rasterizer {
namespace {

struct Camera {
  float R[3][3], t[3];
  float fx, fy, cx, cy;
  float lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
};

Camera make_camera(const float* viewmat, const float* K, int64_t W, int64_t H) {
  Camera cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i][j] = viewmat[i * 4 + j];
    cam.t[i] = viewmat[i * 4 + 3];
  }
  cam.fx = K[0];
  cam.fy = K[4];
  cam.cx = K[2];
  cam.cy = K[5];
  // `0.5 * width / fx` in torch is `fx.reciprocal() * (0.5 * width)` (Tensor.__rtruediv__).
  const float tan_x = (1.0f / cam.fx) * static_cast<float>(0.5 * W);
  const float tan_y = (1.0f / cam.fy) * static_cast<float>(0.5 * H);
  cam.lim_x_pos = (static_cast<float>(W) - cam.cx) / cam.fx + 0.3f * tan_x;
  cam.lim_x_neg = cam.cx / cam.fx + 0.3f * tan_x;
  cam.lim_y_pos = (static_cast<float>(H) - cam.cy) / cam.fy + 0.3f * tan_y;
  cam.lim_y_neg = cam.cy / cam.fy + 0.3f * tan_y;
  return cam;
}

void check(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& viewmats,
           const at::Tensor& Ks) {
  for (const at::Tensor* t : {&means, &quats, &scales, &viewmats, &Ks})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "cpu rasterizer: expected contiguous float32 CPU tensors");
  const int64_t N = means.size(0), C = viewmats.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be (N,3)");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == N && quats.size(1) == 4, "quats must be (N,4)");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == 3, "scales must be (N,3)");
  TORCH_CHECK(viewmats.dim() == 3 && viewmats.size(1) == 4 && viewmats.size(2) == 4, "viewmats must be (C,4,4)");
  TORCH_CHECK(Ks.dim() == 3 && Ks.size(0) == C && Ks.size(1) == 3 && Ks.size(2) == 3, "Ks must be (C,3,3)");
}

std::vector<Camera> make_cameras(const at::Tensor& viewmats, const at::Tensor& Ks, int64_t W, int64_t H) {
  std::vector<Camera> cams;
  for (int64_t c = 0; c < viewmats.size(0); ++c)
    cams.push_back(make_camera(viewmats.data_ptr<float>() + 16 * c, Ks.data_ptr<float>() + 9 * c, W, H));
  return cams;
}

}  // namespace

// The projection of 16 Gaussians at once, one per lane, with the reference's float32 operations in its
// order (IEEE arithmetic is lane-wise, so every lane is what scalar code in that order would give).
// std::min/max(a, b) are written as the selects they are ((a < b) ? b : a), so NaN lanes behave as in
// scalar code.
namespace {

inline vf16 smax(vf16 a, vf16 b) { return select(a < b, b, a); }  // std::max(a, b)
inline vf16 smin(vf16 a, vf16 b) { return select(b < a, b, a); }  // std::min(a, b)

// clamp_floor (common.h) on lanes: floor, then [0, hi]; NaN gives 0.
inline vi16 clamp_floor16(vf16 v, int32_t hi) {
  const vf16 f = vfloor(v);
  const vf16 c = select(f >= static_cast<float>(hi), splat<vf16>(static_cast<float>(hi)),
                        select(f > 0.0f, f, splat<vf16>(0.0f)));
  return __builtin_convertvector(c, vi16);
}

struct Lanes16 {
  vf16 m[3], q[4], s[3];
};

// Shape of 16 Gaussians: normalised quaternion, rotation, M = R diag(s), Sigma = M M^T.
struct Shape16 {
  vf16 norm;  // |q| before the clamp
  vf16 w, x, y, z;
  vf16 Rq[3][3], M[3][3], S[3][3];
};

inline Shape16 shape16(const Lanes16& in) {
  Shape16 sh;
  vf16& norm = sh.norm;
  vf16(&Rq)[3][3] = sh.Rq;
  vf16(&M)[3][3] = sh.M;
  vf16(&S)[3][3] = sh.S;
  norm = vsqrt(((in.q[0] * in.q[0] + in.q[1] * in.q[1]) + in.q[2] * in.q[2]) + in.q[3] * in.q[3]);
  const vf16 nc = smax(norm, splat<vf16>(1e-12f));
  sh.w = in.q[0] / nc, sh.x = in.q[1] / nc, sh.y = in.q[2] / nc, sh.z = in.q[3] / nc;
  const vf16 w = sh.w, x = sh.x, y = sh.y, z = sh.z;
  Rq[0][0] = 1.0f - 2.0f * (y * y + z * z);
  Rq[0][1] = 2.0f * (x * y - w * z);
  Rq[0][2] = 2.0f * (x * z + w * y);
  Rq[1][0] = 2.0f * (x * y + w * z);
  Rq[1][1] = 1.0f - 2.0f * (x * x + z * z);
  Rq[1][2] = 2.0f * (y * z - w * x);
  Rq[2][0] = 2.0f * (x * z - w * y);
  Rq[2][1] = 2.0f * (y * z + w * x);
  Rq[2][2] = 1.0f - 2.0f * (x * x + y * y);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[i][j] = Rq[i][j] * in.s[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) S[i][j] = (M[i][0] * M[j][0] + M[i][1] * M[j][1]) + M[i][2] * M[j][2];
  return sh;
}

// Camera-space point, Jacobian and 2D covariance/conic of 16 Gaussians in one camera (Sigma = S).
struct Proj16 {
  vf16 zv, zs, u, v, uc, vc;
  vi16 in_range, valid;
  vf16 J00, J02, J11, J12, jw[2][3], T1[2][3];
  vf16 a, b, c, det, ds, con0, con1, con2;
};

inline Proj16 project_camera16(const Camera& cam, const Lanes16& in, const vf16 (&S)[3][3], float near_f, float far_f) {
  Proj16 o;
  vf16 p[3];
  for (int i = 0; i < 3; ++i)
    p[i] = fma(splat<vf16>(cam.R[i][2]), in.m[2], fma(splat<vf16>(cam.R[i][1]), in.m[1], cam.R[i][0] * in.m[0])) +
           cam.t[i];
  const vf16 zv = p[2];
  const vi16 in_range = (zv > near_f) & (zv < far_f);
  const vf16 zs = select(in_range, zv, splat<vf16>(1.0f));
  const vf16 u = p[0] / zs, v = p[1] / zs;
  const vf16 uc = smin(smax(u, splat<vf16>(-cam.lim_x_neg)), splat<vf16>(cam.lim_x_pos));
  const vf16 vc = smin(smax(v, splat<vf16>(-cam.lim_y_neg)), splat<vf16>(cam.lim_y_pos));
  const vf16 tx = zs * uc, ty = zs * vc, zz = zs * zs;
  const vf16 J00 = cam.fx / zs, J02 = (-cam.fx * tx) / zz, J11 = cam.fy / zs, J12 = (-cam.fy * ty) / zz;
  vf16 jw[2][3], T1[2][3];
  for (int j = 0; j < 3; ++j) {
    jw[0][j] = J00 * cam.R[0][j] + J02 * cam.R[2][j];
    jw[1][j] = J11 * cam.R[1][j] + J12 * cam.R[2][j];
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) T1[i][j] = (jw[i][0] * S[0][j] + jw[i][1] * S[1][j]) + jw[i][2] * S[2][j];
  const vf16 cov00 = (T1[0][0] * jw[0][0] + T1[0][1] * jw[0][1]) + T1[0][2] * jw[0][2];
  const vf16 cov01 = (T1[0][0] * jw[1][0] + T1[0][1] * jw[1][1]) + T1[0][2] * jw[1][2];
  const vf16 cov11 = (T1[1][0] * jw[1][0] + T1[1][1] * jw[1][1]) + T1[1][2] * jw[1][2];
  const vf16 a = cov00 + 0.3f, b = cov01, c = cov11 + 0.3f;
  const vf16 det = a * c - b * b;
  const vi16 valid = in_range & (det > 0.0f);
  const vf16 ds = select(valid, det, splat<vf16>(1.0f));
  const vf16 con0 = c / ds, con1 = -b / ds, con2 = a / ds;
  o.zv = zv, o.zs = zs, o.u = u, o.v = v, o.uc = uc, o.vc = vc, o.in_range = in_range, o.valid = valid;
  o.J00 = J00, o.J02 = J02, o.J11 = J11, o.J12 = J12;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) o.jw[i][j] = jw[i][j], o.T1[i][j] = T1[i][j];
  o.a = a, o.b = b, o.c = c, o.det = det, o.ds = ds, o.con0 = con0, o.con1 = con1, o.con2 = con2;
  return o;
}

void project16(const Lanes16& in, const std::vector<Camera>& cams, float near_f, float far_f, int64_t W, int64_t H,
               int32_t tiles_x, int32_t tiles_y, int64_t N, int64_t n0, int cnt, float* o_m, float* o_c, float* o_d,
               int32_t* o_r) {
  const Shape16 sh = shape16(in);
  const float max_radius = static_cast<float>(4 * std::max(W, H) + 4 * kTile);
  for (size_t ci = 0; ci < cams.size(); ++ci) {
    const Camera& cam = cams[ci];
    const Proj16 o = project_camera16(cam, in, sh.S, near_f, far_f);
    const vf16 &zv = o.zv, &u = o.u, &v = o.v, &a = o.a, &c = o.c, &det = o.det;
    const vf16 &con0 = o.con0, &con1 = o.con1, &con2 = o.con2;
    const vi16& valid = o.valid;
    const vf16 mx = cam.fx * u + cam.cx, my = cam.fy * v + cam.cy;
    const vf16 mid = 0.5f * (a + c);
    const vf16 lam = mid + vsqrt(smax(mid * mid - det, splat<vf16>(0.1f)));
    vf16 radius = vceil(3.0f * vsqrt(lam));
    radius = select(valid & ((radius - radius) == 0.0f), radius, splat<vf16>(0.0f));  // finite and valid
    radius = smin(radius, splat<vf16>(max_radius));
    vi16 ri = __builtin_convertvector(radius, vi16);
    // Tile rect (common.h tile_rect) on lanes; culled when empty.
    const vf16 rf = __builtin_convertvector(ri, vf16);
    const float ts = static_cast<float>(kTile);
    const vi16 x0 = clamp_floor16((mx - rf) / ts, tiles_x), x1 = clamp_floor16((mx + rf + (ts - 1.0f)) / ts, tiles_x);
    const vi16 y0 = clamp_floor16((my - rf) / ts, tiles_y), y1 = clamp_floor16((my + rf + (ts - 1.0f)) / ts, tiles_y);
    ri = select((ri > 0) & (x1 > x0) & (y1 > y0), ri, isplat<vi16>(0));
    for (int l = 0; l < cnt; ++l) {
      const int64_t k = static_cast<int64_t>(ci) * N + n0 + l;
      o_m[2 * k] = mx[l];
      o_m[2 * k + 1] = my[l];
      o_c[3 * k] = con0[l];
      o_c[3 * k + 1] = con1[l];
      o_c[3 * k + 2] = con2[l];
      o_d[k] = zv[l];
      o_r[k] = ri[l];
    }
  }
}


// The backward of 16 Gaussians at once, one per lane (it replaced a scalar loop, whose results it gives
// bit for bit where the target has FMA): the projection is recomputed as project16 computes it, then the
// gradient of every step, summed over the cameras. A camera that sends a lane no gradient is masked out
// of that lane's sums; a lane no camera sends a gradient gets exact zeros.
void project_backward16(const Lanes16& in, const std::vector<Camera>& cams, float near_f, float far_f,
                        const float* gm2, const float* gcn, const float* gdp, int64_t N, int64_t n0, int cnt,
                        float* o_gm, float* o_gq, float* o_gs) {
  const vf16 zero = splat<vf16>(0.0f);
  const Shape16 sh = shape16(in);
  const vf16 &norm = sh.norm, &w = sh.w, &x = sh.x, &y = sh.y, &z = sh.z;
  const vf16(&Rq)[3][3] = sh.Rq;
  const vf16(&M)[3][3] = sh.M;
  const vf16(&S)[3][3] = sh.S;
  vf16 gSigma[3][3], gmean[3] = {zero, zero, zero};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) gSigma[i][j] = zero;
  vi16 any_grad = isplat<vi16>(0);
  for (size_t ci = 0; ci < cams.size(); ++ci) {
    const Camera& cam = cams[ci];
    vf16 gx, gy, gA, gB, gC, gz;
    for (int l = 0; l < 16; ++l) {
      const int64_t k = static_cast<int64_t>(ci) * N + n0 + std::min(l, cnt - 1);
      gx[l] = gm2[2 * k], gy[l] = gm2[2 * k + 1];
      gA[l] = gcn[3 * k], gB[l] = gcn[3 * k + 1], gC[l] = gcn[3 * k + 2];
      gz[l] = gdp[k];
    }
    const vi16 act = (gx != 0.0f) | (gy != 0.0f) | (gA != 0.0f) | (gB != 0.0f) | (gC != 0.0f) | (gz != 0.0f);
    if (!any(act)) continue;
    any_grad |= act;
    // The projection, as project16 computes it (project_camera16).
    const Proj16 o = project_camera16(cam, in, S, near_f, far_f);
    const vf16 &zs = o.zs, &u = o.u, &v = o.v, &uc = o.uc, &vc = o.vc;
    const vi16 &in_range = o.in_range, &valid = o.valid;
    const vf16 &J00 = o.J00, &J02 = o.J02, &J11 = o.J11, &J12 = o.J12;
    const vf16(&jw)[2][3] = o.jw;
    const vf16(&T1)[2][3] = o.T1;
    const vf16 &a = o.a, &b = o.b, &c = o.c, &ds = o.ds, &con0 = o.con0, &con1 = o.con1, &con2 = o.con2;
    // The gradient, back through each step of the projection.
    vf16 g_a = gC / ds, g_b = -gB / ds, g_c = gA / ds;
    const vf16 g_det = -((gA * con0 + gB * con1) + gC * con2) / ds;
    g_a = select(valid, g_a + g_det * c, g_a);
    g_c = select(valid, g_c + g_det * a, g_c);
    g_b = select(valid, g_b + (-2.0f * b) * g_det, g_b);
    const vf16 G[2][2] = {{g_a, 0.5f * g_b}, {0.5f * g_b, g_c}};
    vf16 g_jw[2][3], Gjw[2][3];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) g_jw[i][j] = 2.0f * (G[i][0] * T1[0][j] + G[i][1] * T1[1][j]);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) Gjw[i][j] = G[i][0] * jw[0][j] + G[i][1] * jw[1][j];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        gSigma[i][j] = select(act, gSigma[i][j] + (jw[0][i] * Gjw[0][j] + jw[1][i] * Gjw[1][j]), gSigma[i][j]);
    vf16 gJ00 = zero, gJ02 = zero, gJ11 = zero, gJ12 = zero;
    for (int j = 0; j < 3; ++j) {
      gJ00 += g_jw[0][j] * cam.R[0][j];
      gJ02 += g_jw[0][j] * cam.R[2][j];
      gJ11 += g_jw[1][j] * cam.R[1][j];
      gJ12 += g_jw[1][j] * cam.R[2][j];
    }
    vf16 g_zs = ((((-J00) / zs * gJ00) - J11 / zs * gJ11) - 2.0f * J02 / zs * gJ02) - 2.0f * J12 / zs * gJ12;
    const vf16 g_tx = -cam.fx / (zs * zs) * gJ02;
    const vf16 g_ty = -cam.fy / (zs * zs) * gJ12;
    g_zs += uc * g_tx + vc * g_ty;
    vf16 g_u = cam.fx * gx, g_v = cam.fy * gy;
    g_u = select((u > -cam.lim_x_neg) & (u < cam.lim_x_pos), g_u + zs * g_tx, g_u);
    g_v = select((v > -cam.lim_y_neg) & (v < cam.lim_y_pos), g_v + zs * g_ty, g_v);
    const vf16 g_p0 = g_u / zs, g_p1 = g_v / zs;
    g_zs -= (u * g_u + v * g_v) / zs;
    const vf16 g_p2 = gz + select(in_range, g_zs, zero);
    for (int j = 0; j < 3; ++j)
      gmean[j] = select(act, gmean[j] + ((cam.R[0][j] * g_p0 + cam.R[1][j] * g_p1) + cam.R[2][j] * g_p2), gmean[j]);
  }
  // Sigma = M M^T: dL/dM = 2 gSigma M (gSigma symmetric); M = Rq diag(scale).
  vf16 gR[3][3], gs[3] = {zero, zero, zero};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const vf16 gM = 2.0f * ((gSigma[i][0] * M[0][j] + gSigma[i][1] * M[1][j]) + gSigma[i][2] * M[2][j]);
      gR[i][j] = gM * in.s[j];
      gs[j] += gM * Rq[i][j];
    }
  vf16 gq[4];
  gq[0] = 2.0f * (((((-z * gR[0][1] + y * gR[0][2]) + z * gR[1][0]) - x * gR[1][2]) - y * gR[2][0]) + x * gR[2][1]);
  gq[1] = 2.0f * (((((((y * gR[0][1] + z * gR[0][2]) + y * gR[1][0]) - 2.0f * x * gR[1][1]) - w * gR[1][2]) +
                    z * gR[2][0]) + w * gR[2][1]) - 2.0f * x * gR[2][2]);
  gq[2] = 2.0f * (((((((-2.0f * y * gR[0][0] + x * gR[0][1]) + w * gR[0][2]) + x * gR[1][0]) + z * gR[1][2]) -
                    w * gR[2][0]) + z * gR[2][1]) - 2.0f * y * gR[2][2]);
  gq[3] = 2.0f * (((((((-2.0f * z * gR[0][0] - w * gR[0][1]) + x * gR[0][2]) + w * gR[1][0]) - 2.0f * z * gR[1][1]) +
                    y * gR[1][2]) + x * gR[2][0]) + y * gR[2][1]);
  const vf16 qn[4] = {w, x, y, z};
  const vf16 dot = ((w * gq[0] + x * gq[1]) + y * gq[2]) + z * gq[3];
  const vi16 big = norm > 1e-12f;
  vf16 oq[4];
  for (int i = 0; i < 4; ++i) oq[i] = select(any_grad, select(big, (gq[i] - qn[i] * dot) / norm, gq[i] / 1e-12f), zero);
  for (int j = 0; j < 3; ++j) {
    gs[j] = select(any_grad, gs[j], zero);
    gmean[j] = select(any_grad, gmean[j], zero);
  }
  for (int l = 0; l < cnt; ++l) {
    const int64_t n = n0 + l;
    for (int j = 0; j < 3; ++j) o_gm[3 * n + j] = gmean[j][l], o_gs[3 * n + j] = gs[j][l];
    for (int i = 0; i < 4; ++i) o_gq[4 * n + i] = oq[i][l];
  }
}
}  // namespace

// Returns means2d (C,N,2), conics (C,N,3), depths (C,N), radii (C,N) int32.
std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                        const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width,
                                        int64_t height, double near_plane, double far_plane, int64_t tile_size) {
  check(means, quats, scales, viewmats, Ks);
  TORCH_CHECK(tile_size == kTile, "cpu rasterizer: tile_size must be 16");
  const int64_t N = means.size(0), C = viewmats.size(0);
  const std::vector<Camera> cams = make_cameras(viewmats, Ks, width, height);
  const int32_t tiles_x = static_cast<int32_t>((width + kTile - 1) / kTile);
  const int32_t tiles_y = static_cast<int32_t>((height + kTile - 1) / kTile);
  // torch compares a float32 tensor with a Python float after casting the float to float32.
  const float near_f = static_cast<float>(near_plane), far_f = static_cast<float>(far_plane);
  at::Tensor means2d = at::empty({C, N, 2}, at::kFloat);
  at::Tensor conics = at::empty({C, N, 3}, at::kFloat);
  at::Tensor depths = at::empty({C, N}, at::kFloat);
  at::Tensor radii = at::empty({C, N}, at::kInt);
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* sc = scales.data_ptr<float>();
  float* o_m = means2d.data_ptr<float>();
  float* o_c = conics.data_ptr<float>();
  float* o_d = depths.data_ptr<float>();
  int32_t* o_r = radii.data_ptr<int32_t>();
  const int64_t blocks = (N + 15) / 16;
  parallel_range(blocks, 256, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t n0 = blk * 16;
      const int cnt = static_cast<int>(std::min<int64_t>(16, N - n0));
      Lanes16 in;
      for (int l = 0; l < 16; ++l) {
        const int64_t n = n0 + std::min(l, cnt - 1);  // spare lanes repeat the last Gaussian, unused
        for (int i = 0; i < 3; ++i) in.m[i][l] = m[3 * n + i], in.s[i][l] = sc[3 * n + i];
        for (int i = 0; i < 4; ++i) in.q[i][l] = q[4 * n + i];
      }
      project16(in, cams, near_f, far_f, width, height, tiles_x, tiles_y, N, n0, cnt, o_m, o_c, o_d, o_r);
    }
  });
  return {means2d, conics, depths, radii};
}

// Gradients w.r.t. means (N,3), quats (N,4), scales (N,3) from those of means2d, conics and depths.
// Follows the reference's autograd graph, including its safe values for culled entries (zero
// gradient through z where out of range, through det where not valid), so it agrees with torch for
// any incoming gradient, not only the zeros the compositing gives culled Gaussians.
std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                         const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width,
                                         int64_t height, double near_plane, double far_plane, int64_t tile_size,
                                         const at::Tensor& g_means2d, const at::Tensor& g_conics,
                                         const at::Tensor& g_depths) {
  check(means, quats, scales, viewmats, Ks);
  const int64_t N = means.size(0), C = viewmats.size(0);
  for (const at::Tensor* t : {&g_means2d, &g_conics, &g_depths})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "cpu rasterizer: bad gradient tensor");
  TORCH_CHECK(g_means2d.numel() == C * N * 2 && g_conics.numel() == C * N * 3 && g_depths.numel() == C * N,
              "cpu rasterizer: gradient shapes do not match");
  const std::vector<Camera> cams = make_cameras(viewmats, Ks, width, height);
  const float near_f = static_cast<float>(near_plane), far_f = static_cast<float>(far_plane);
  // Every element is written below (zeros where no gradient arrives), so no zero-fill first.
  at::Tensor g_means = at::empty({N, 3}, at::kFloat);
  at::Tensor g_quats = at::empty({N, 4}, at::kFloat);
  at::Tensor g_scales = at::empty({N, 3}, at::kFloat);
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* sc = scales.data_ptr<float>();
  const float* gm2 = g_means2d.data_ptr<float>();
  const float* gcn = g_conics.data_ptr<float>();
  const float* gdp = g_depths.data_ptr<float>();
  float* o_gm = g_means.data_ptr<float>();
  float* o_gq = g_quats.data_ptr<float>();
  float* o_gs = g_scales.data_ptr<float>();
  const int64_t blocks = (N + 15) / 16;
  parallel_range(blocks, 64, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t n0 = blk * 16;
      const int cnt = static_cast<int>(std::min<int64_t>(16, N - n0));
      Lanes16 in;
      for (int l = 0; l < 16; ++l) {
        const int64_t n = n0 + std::min(l, cnt - 1);  // spare lanes repeat the last Gaussian, unused
        for (int i = 0; i < 3; ++i) in.m[i][l] = m[3 * n + i], in.s[i][l] = sc[3 * n + i];
        for (int i = 0; i < 4; ++i) in.q[i][l] = q[4 * n + i];
      }
      project_backward16(in, cams, near_f, far_f, gm2, gcn, gdp, N, n0, cnt, o_gm, o_gq, o_gs);
    }
  });
  return {g_means, g_quats, g_scales};
}

}  // namespace cpu_rasterizer
