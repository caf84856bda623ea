// View-dependent colours from spherical harmonics (projection.view_colors) and their backward.
//
// colour(c, n) = max(sum_k Y_k(dir) coeff[n,k] + 0.5, 0), dir = normalize(mean_n - campos_c), with the
// real SH basis of the original 3DGS up to degree 3. The forward mirrors the reference's float32
// operation order (projection.eval_sh); the backward gives the gradient to the coefficients and,
// through the direction, to the means (the reference does not detach the direction either).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "parallel.h"

namespace cpu_rasterizer {
namespace {

// The constants of projection.py, rounded to float32 as torch does when it multiplies a float32
// tensor by a Python float.
const float C0 = static_cast<float>(0.28209479177387814);
const float C1 = static_cast<float>(0.4886025119029199);
const float C2[5] = {static_cast<float>(1.0925484305920792), static_cast<float>(-1.0925484305920792),
                     static_cast<float>(0.31539156525252005), static_cast<float>(-1.0925484305920792),
                     static_cast<float>(0.5462742152960396)};
const float C3[7] = {static_cast<float>(-0.5900435899266435), static_cast<float>(2.890611442640554),
                     static_cast<float>(-0.4570457994644658), static_cast<float>(0.3731763325901154),
                     static_cast<float>(-0.4570457994644658), static_cast<float>(1.445305721320277),
                     static_cast<float>(-0.5900435899266435)};

struct Dir {
  float x, y, z;  // normalised
  float norm;     // before the clamp
};

// campos = -R^T t, summed in the order of torch's small batched matmul.
void camera_center(const float* vm, float out[3]) {
  for (int i = 0; i < 3; ++i) out[i] = -((vm[0 * 4 + i] * vm[3] + vm[1 * 4 + i] * vm[7]) + vm[2 * 4 + i] * vm[11]);
}

inline Dir view_dir(const float* mean, const float cp[3]) {
  const float dx = mean[0] - cp[0], dy = mean[1] - cp[1], dz = mean[2] - cp[2];
  Dir d;
  d.norm = std::sqrt(std::fma(dz, dz, std::fma(dy, dy, dx * dx)));  // torch's 3-vector norm: an FMA chain
  const float nc = std::max(d.norm, 1e-12f);
  d.x = dx / nc;
  d.y = dy / nc;
  d.z = dz / nc;
  return d;
}

// The per-basis factors that projection.eval_sh multiplies the coefficients by, computed exactly as
// its intermediate tensors are (e.g. (C3[0] * y) * (3 * xx - yy)); the signs of bases 1 and 3 are
// applied by the subtractions in eval_rgb, as in the reference.
struct ShFactors {
  float f[16];
};

inline ShFactors sh_factors(int degree, const Dir& d) {
  ShFactors F;
  F.f[0] = C0;
  if (degree == 0) return F;
  const float x = d.x, y = d.y, z = d.z;
  F.f[1] = C1 * y;
  F.f[2] = C1 * z;
  F.f[3] = C1 * x;
  if (degree == 1) return F;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  F.f[4] = C2[0] * xy;
  F.f[5] = C2[1] * yz;
  F.f[6] = C2[2] * ((2.0f * zz - xx) - yy);
  F.f[7] = C2[3] * xz;
  F.f[8] = C2[4] * (xx - yy);
  if (degree == 2) return F;
  F.f[9] = (C3[0] * y) * (3.0f * xx - yy);
  F.f[10] = (C3[1] * xy) * z;
  F.f[11] = (C3[2] * y) * ((4.0f * zz - xx) - yy);
  F.f[12] = (C3[3] * z) * ((2.0f * zz - 3.0f * xx) - 3.0f * yy);
  F.f[13] = (C3[4] * x) * ((4.0f * zz - xx) - yy);
  F.f[14] = (C3[5] * z) * (xx - yy);
  F.f[15] = (C3[6] * x) * (xx - 3.0f * yy);
  return F;
}

// One Gaussian's coefficients, read where they are: the DC band (sh0) and the higher bands (shN) are
// separate parameters of the model, so they are not concatenated first (a copy of every coefficient
// per step, and its gradient split again in the backward).
struct Coeffs {
  const float* c0;  // (3,) the DC band
  const float* cN;  // (K-1, 3) bands 1..K-1
  float operator()(int k, int ch) const { return k == 0 ? c0[ch] : cN[3 * (k - 1) + ch]; }
};

// sum_k Y_k(dir) coeff[k] per channel, summed in projection.eval_sh's exact order.
inline void eval_rgb(int degree, const Coeffs& co, const ShFactors& F, float out[3]) {
  for (int ch = 0; ch < 3; ++ch) {
    auto cf = [&](int k) { return co(k, ch); };
    float o = F.f[0] * cf(0);
    if (degree >= 1) o = ((o - F.f[1] * cf(1)) + F.f[2] * cf(2)) - F.f[3] * cf(3);
    if (degree >= 2)
      for (int k = 4; k < 9; ++k) o = o + F.f[k] * cf(k);
    if (degree >= 3)
      for (int k = 9; k < 16; ++k) o = o + F.f[k] * cf(k);
    out[ch] = o;
  }
}

// dY_k/d(x, y, z) of the basis functions (math, for the backward); Y_k = -f[1], -f[3] for k = 1, 3.
inline void basis_grad(int degree, const Dir& d, float dY[16][3]) {
  const float x = d.x, y = d.y, z = d.z;
  const float xx = x * x, yy = y * y, zz = z * z;
  auto set = [&](int k, float gx, float gy, float gz) {
    dY[k][0] = gx;
    dY[k][1] = gy;
    dY[k][2] = gz;
  };
  set(0, 0, 0, 0);
  if (degree >= 1) {
    set(1, 0, -C1, 0);
    set(2, 0, 0, C1);
    set(3, -C1, 0, 0);
  }
  if (degree >= 2) {
    set(4, C2[0] * y, C2[0] * x, 0);
    set(5, 0, C2[1] * z, C2[1] * y);
    set(6, -2 * C2[2] * x, -2 * C2[2] * y, 4 * C2[2] * z);
    set(7, C2[3] * z, 0, C2[3] * x);
    set(8, 2 * C2[4] * x, -2 * C2[4] * y, 0);
  }
  if (degree >= 3) {
    set(9, C3[0] * 6 * x * y, C3[0] * (3 * xx - 3 * yy), 0);
    set(10, C3[1] * y * z, C3[1] * x * z, C3[1] * x * y);
    set(11, C3[2] * -2 * x * y, C3[2] * (4 * zz - xx - 3 * yy), C3[2] * 8 * y * z);
    set(12, C3[3] * -6 * x * z, C3[3] * -6 * y * z, C3[3] * (6 * zz - 3 * xx - 3 * yy));
    set(13, C3[4] * (4 * zz - 3 * xx - yy), C3[4] * -2 * x * y, C3[4] * 8 * x * z);
    set(14, C3[5] * 2 * x * z, C3[5] * -2 * y * z, C3[5] * (xx - yy));
    set(15, C3[6] * (3 * xx - 3 * yy), C3[6] * -6 * x * y, 0);
  }
}

// The coefficients as (N,1,3) sh0 and (N,K-1,3) shN float32 CPU tensors whose last two dimensions are
// packed (channels, then bands); the Gaussian stride is free, so the two halves of one (N,K,3) tensor
// (coeffs[:, :1], coeffs[:, 1:]) are accepted as they are.
struct ShInputs {
  const float* sh0;
  const float* shN;
  int64_t s0, sN;  // floats from one Gaussian to the next
  int64_t K;       // bases in all
  Coeffs at(int64_t n) const { return Coeffs{sh0 + n * s0, shN + n * sN}; }
};

ShInputs check(const at::Tensor& means, const at::Tensor& sh0, const at::Tensor& shN, int64_t degree,
               const at::Tensor& viewmats) {
  for (const at::Tensor* t : {&means, &viewmats})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "cpu rasterizer: expected contiguous float32 CPU tensors");
  for (const at::Tensor* t : {&sh0, &shN})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 3 && t->size(0) == means.size(0) &&
                    t->size(2) == 3 && t->stride(2) == 1 && (t->size(1) <= 1 || t->stride(1) == 3),
                "cpu rasterizer: SH coefficients must be float32 CPU tensors (N,B,3) with packed bands");
  TORCH_CHECK(degree >= 0 && degree <= 3, "sh_degree must be in 0..3");
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be (N,3)");
  TORCH_CHECK(sh0.size(1) == 1 && 1 + shN.size(1) >= (degree + 1) * (degree + 1),
              "SH coefficients must be sh0 (N,1,3) and shN (N,K-1,3) with K >= (sh_degree+1)^2");
  TORCH_CHECK(viewmats.dim() == 3 && viewmats.size(1) == 4 && viewmats.size(2) == 4, "viewmats must be (C,4,4)");
  return ShInputs{sh0.data_ptr<float>(), shN.data_ptr<float>(), sh0.stride(0), shN.stride(0), 1 + shN.size(1)};
}

}  // namespace

// colours (C,N,3)
at::Tensor sh_forward(const at::Tensor& means, const at::Tensor& sh0, const at::Tensor& shN, int64_t degree,
                      const at::Tensor& viewmats) {
  const ShInputs co = check(means, sh0, shN, degree, viewmats);
  const int64_t N = means.size(0), C = viewmats.size(0);
  std::vector<float> cps(3 * C);
  for (int64_t c = 0; c < C; ++c) camera_center(viewmats.data_ptr<float>() + 16 * c, cps.data() + 3 * c);
  at::Tensor colors = at::empty({C, N, 3}, at::kFloat);
  const float* m = means.data_ptr<float>();
  float* out = colors.data_ptr<float>();
  const int deg = static_cast<int>(degree);
  parallel_range(N, 1024, [&](int64_t b, int64_t e) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t n = b; n < e; ++n) {
        const Dir d = view_dir(m + 3 * n, cps.data() + 3 * c);
        float v[3];
        eval_rgb(deg, co.at(n), sh_factors(deg, d), v);
        for (int ch = 0; ch < 3; ++ch) out[(c * N + n) * 3 + ch] = std::max(v[ch] + 0.5f, 0.0f);
      }
  });
  return colors;
}

// Gradients w.r.t. means (N,3), sh0 (N,1,3) and shN (N,K-1,3), from that of the colours (C,N,3).
std::vector<at::Tensor> sh_backward(const at::Tensor& means, const at::Tensor& sh0, const at::Tensor& shN,
                                    int64_t degree, const at::Tensor& viewmats, const at::Tensor& g_colors) {
  const ShInputs co = check(means, sh0, shN, degree, viewmats);
  const int64_t N = means.size(0), C = viewmats.size(0), K = co.K;
  TORCH_CHECK(g_colors.scalar_type() == at::kFloat && g_colors.is_contiguous() && g_colors.numel() == C * N * 3,
              "cpu rasterizer: bad colour gradient");
  std::vector<float> cps(3 * C);
  for (int64_t c = 0; c < C; ++c) camera_center(viewmats.data_ptr<float>() + 16 * c, cps.data() + 3 * c);
  // Each Gaussian's rows are accumulated locally and written once (the coefficients' gradient is the
  // size of the coefficients: a zero-fill first would be a second pass over it).
  at::Tensor g_means = at::empty({N, 3}, at::kFloat);
  at::Tensor g_sh0 = at::empty({N, 1, 3}, at::kFloat);
  at::Tensor g_shN = at::empty({N, K - 1, 3}, at::kFloat);
  const float* m = means.data_ptr<float>();
  const float* gc = g_colors.data_ptr<float>();
  float* o_gm = g_means.data_ptr<float>();
  float* o_g0 = g_sh0.data_ptr<float>();
  float* o_gN = g_shN.data_ptr<float>();
  const int deg = static_cast<int>(degree);
  parallel_range(N, 512, [&](int64_t b, int64_t e) {
    float dY[16][3];
    for (int64_t n = b; n < e; ++n) {
      const Coeffs cn = co.at(n);
      float gcn[16 * 3] = {0};  // the used bases; higher ones (K > (degree+1)^2) get zero
      float gmean[3] = {0, 0, 0};
      for (int64_t c = 0; c < C; ++c) {
        const float* g = gc + (c * N + n) * 3;
        if (g[0] == 0.0f && g[1] == 0.0f && g[2] == 0.0f) continue;
        const Dir d = view_dir(m + 3 * n, cps.data() + 3 * c);
        // clamp_min(0) passes the gradient where the unclamped value is >= 0 (torch's rule).
        const ShFactors F = sh_factors(deg, d);
        float v[3], go[3];
        eval_rgb(deg, cn, F, v);
        for (int ch = 0; ch < 3; ++ch) go[ch] = (v[ch] + 0.5f >= 0.0f) ? g[ch] : 0.0f;
        const int nb = (deg + 1) * (deg + 1);
        basis_grad(deg, d, dY);
        float gdir[3] = {0, 0, 0};
        for (int k = 0; k < nb; ++k) {
          const float Yk = (k == 1 || k == 3) ? -F.f[k] : F.f[k];
          float s = 0.0f;
          for (int ch = 0; ch < 3; ++ch) {
            gcn[3 * k + ch] += Yk * go[ch];
            s += cn(k, ch) * go[ch];
          }
          for (int i = 0; i < 3; ++i) gdir[i] += dY[k][i] * s;
        }
        if (deg == 0) continue;
        // dir = v / max(|v|, 1e-12), v = mean - campos
        if (d.norm > 1e-12f) {
          const float dot = d.x * gdir[0] + d.y * gdir[1] + d.z * gdir[2];
          gmean[0] += (gdir[0] - d.x * dot) / d.norm;
          gmean[1] += (gdir[1] - d.y * dot) / d.norm;
          gmean[2] += (gdir[2] - d.z * dot) / d.norm;
        } else {
          for (int i = 0; i < 3; ++i) gmean[i] += gdir[i] / 1e-12f;
        }
      }
      for (int i = 0; i < 3; ++i) o_gm[3 * n + i] = gmean[i];
      const int nb = 3 * (deg + 1) * (deg + 1);  // >= 3: the DC band's three
      std::copy(gcn, gcn + 3, o_g0 + n * 3);
      float* gN = o_gN + n * (K - 1) * 3;
      std::copy(gcn + 3, gcn + nb, gN);
      std::fill(gN + (nb - 3), gN + (K - 1) * 3, 0.0f);
    }
  });
  return {g_means, g_sh0, g_shN};
}

}  // namespace cpu_rasterizer
