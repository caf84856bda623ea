// The photometric training loss of 3DGS, (1 - lambda) L1 + lambda (1 - SSIM), and its gradient with
// respect to the rendered image, in two passes over the image (internal/loss.py wraps it).
//
// Images are (H,W,C) float32, channels interleaved. SSIM is the Gaussian-window SSIM of
// internal/metrics.py (the window taps, C1 and C2 are passed in from there): with the blurred moments
// mu_x, mu_y, e_xx, e_yy, e_xy, S = A1 A2 / (B1 B2), A1 = 2 mu_x mu_y + C1, A2 = 2 (e_xy - mu_x mu_y) + C2,
// B1 = mu_x^2 + mu_y^2 + C1, B2 = (e_xx - mu_x^2) + (e_yy - mu_y^2) + C2, zero padding at the border.
// Under a mask both means run over the kept pixels (all channels), as metrics._masked_mean does.
//
// Pass 1, row by row: the 11x11 blur is separable; each output row sums its 11 input rows (the
// products x^2, y^2, xy formed on the fly), then blurs that row horizontally. In the interleaved layout
// a horizontal tap is a shift by C floats, so both directions are contiguous vector loops over the row's
// W*C values. The row's S and |x - y| are summed, and for the gradient three per-value maps are kept:
//   P_mu = w 2 / (B1 B2) (mu_y (A2 - A1) + mu_x S (B1 - B2)),  P_e2 = -w S / B2,  P_exy = w 2 A1 / (B1 B2)
// (w = the pixel's mask weight; the derivation is in metrics._SSIMMap). Pass 2: the blur is
// self-adjoint, so dSSIM/dx = blur(P_mu) + 2 x blur(P_e2) + y blur(P_exy), blurred the same way.
//
// Every value is computed by the same scalar expression in a fixed order whatever the vector width or
// thread count (no FMA contraction, sums over rows in row order), so all builds and any number of
// threads give the same bits.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace cpu_rasterizer {
namespace {

constexpr int kTaps = 11, kRad = kTaps / 2;

// Rows of scratch, each padded by kRad pixels of zeros on both sides for the horizontal taps.
struct RowScratch {
  int n, pad;
  std::unique_ptr<float[]> buf;
  RowScratch(int quantities, int n_values, int channels)
      : n(n_values), pad(kRad * channels), buf(new float[static_cast<size_t>(quantities) * (n_values + 2 * kRad * channels)]) {
    std::fill(buf.get(), buf.get() + static_cast<size_t>(quantities) * (n + 2 * pad), 0.0f);
  }
  float* row(int q) { return buf.get() + static_cast<size_t>(q) * (n + 2 * pad) + pad; }
};

// out[e] = sum_k g[k] v[e + (k - kRad) C], v zero outside [0, n) (the scratch padding), summed in tap
// order. One pass over the row per tap, through a pointer to the tap's shifted row: indexing v[e + off]
// with int arithmetic made the compiler emulate a gather (it cannot rule out the int wrapping), which
// kept the whole blur near scalar speed; each pass is now a plain contiguous vector loop. Every out[e]
// still sees the same operations in the same order, hence the same bits.
inline void blur_row(const float* __restrict v, float* __restrict out, int n, int C, const float* g) {
  const float* __restrict first = v - static_cast<ptrdiff_t>(kRad) * C;
  const float g0 = g[0];
  for (int e = 0; e < n; ++e) out[e] = g0 * first[e];
  for (int k = 1; k < kTaps; ++k) {
    const float* __restrict vk = v + static_cast<ptrdiff_t>(k - kRad) * C;
    const float gk = g[k];
    for (int e = 0; e < n; ++e) out[e] = out[e] + gk * vk[e];
  }
}

// Sum of a row of values in a fixed order (four interleaved double accumulators).
inline double row_sum(const float* v, int n) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  int e = 0;
  for (; e + 4 <= n; e += 4)
    for (int j = 0; j < 4; ++j) a[j] += v[e + j];
  for (; e < n; ++e) a[0] += v[e];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// The per-value part of pass 1 for one row: the weighted SSIM map s and |x - y| (ad), and with G the three
// gradient maps. A separate function per G with no conditional load or store in the loop, so that the
// compiler vectorises it; the expressions are the same either way, hence the same bits.
template <bool G>
void ssim_pointwise(int n, const float* __restrict mx, const float* __restrict my, const float* __restrict exx,
                    const float* __restrict eyy, const float* __restrict exy, const float* __restrict w,
                    const float* __restrict xi, const float* __restrict yi, float fc1, float fc2, float* __restrict s,
                    float* __restrict ad, float* __restrict pm, float* __restrict pe, float* __restrict px) {
  for (int e = 0; e < n; ++e) {
    const float mxy = mx[e] * my[e], mxx = mx[e] * mx[e], myy = my[e] * my[e];
    const float a1 = 2.0f * mxy + fc1;
    const float a2 = 2.0f * (exy[e] - mxy) + fc2;
    const float b1 = (mxx + myy) + fc1;
    const float b2 = ((exx[e] - mxx) + (eyy[e] - myy)) + fc2;
    const float bb = b1 * b2;
    const float si = (a1 * a2) / bb;
    const float wi = w[e];
    s[e] = wi * si;
    ad[e] = wi * std::fabs(xi[e] - yi[e]);
    if (G) {
      const float gb = wi / bb;
      pm[e] = 2.0f * gb * (my[e] * (a2 - a1) + mx[e] * si * (b1 - b2));
      pe[e] = -(wi * si) / b2;
      px[e] = 2.0f * gb * a1;
    }
  }
}

}  // namespace

// Returns [loss (), l1 (), ssim () as float32 scalars, grad (H,W,C) (empty when !need_grad)]: the
// masked mean L1, the masked mean SSIM, loss = (1 - lam) l1 + lam (1 - ssim), and d loss / d pred.
std::vector<at::Tensor> l1_ssim_loss(const at::Tensor& pred, const at::Tensor& gt, const at::Tensor& mask,
                                     const at::Tensor& window, double c1, double c2, double lam, bool need_grad) {
  for (const at::Tensor* t : {&pred, &gt, &window})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "cpu rasterizer loss: expected contiguous float32 CPU tensors");
  TORCH_CHECK(pred.dim() == 3 && pred.sizes() == gt.sizes(), "cpu rasterizer loss: pred and gt must be (H,W,C) of one shape");
  TORCH_CHECK(window.numel() == kTaps, "cpu rasterizer loss: the SSIM window must have 11 taps");
  const int H = static_cast<int>(pred.size(0)), W = static_cast<int>(pred.size(1)), C = static_cast<int>(pred.size(2));
  const bool masked = mask.defined() && mask.numel() > 0;
  if (masked)
    TORCH_CHECK(mask.device().is_cpu() && mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.dim() == 2 &&
                    mask.size(0) == H && mask.size(1) == W,
                "cpu rasterizer loss: mask must be a contiguous (H,W) bool tensor");
  const int n = W * C;  // values per row
  const float* x = pred.data_ptr<float>();
  const float* y = gt.data_ptr<float>();
  const bool* m = masked ? mask.data_ptr<bool>() : nullptr;
  float g[kTaps];
  std::copy(window.data_ptr<float>(), window.data_ptr<float>() + kTaps, g);
  const float fc1 = static_cast<float>(c1), fc2 = static_cast<float>(c2);

  // Per-pixel weight of row i (1 or 0), expanded to the row's values.
  auto weights = [&](int i, float* w) {
    for (int j = 0; j < W; ++j) {
      const float wj = m[static_cast<int64_t>(i) * W + j] ? 1.0f : 0.0f;
      for (int c = 0; c < C; ++c) w[j * C + c] = wj;
    }
  };

  std::vector<double> ssim_rows(H), l1_rows(H), count_rows(H);
  at::Tensor maps = need_grad ? at::empty({3, H, W, C}, at::kFloat) : at::Tensor();
  float* P = need_grad ? maps.data_ptr<float>() : nullptr;
  const int64_t plane = static_cast<int64_t>(H) * n;

  // Pass 1: SSIM and L1 per row, and the maps of the gradient.
  parallel_range(H, 8, [&](int64_t rb, int64_t re) {
    RowScratch v(5, n, C);
    std::unique_ptr<float[]> tmp(new float[static_cast<size_t>(8) * n]);
    float *mx = tmp.get(), *my = mx + n, *exx = my + n, *eyy = exx + n, *exy = eyy + n, *s = exy + n, *ad = s + n,
          *w = ad + n;
    float *v0 = v.row(0), *v1 = v.row(1), *v2 = v.row(2), *v3 = v.row(3), *v4 = v.row(4);
    if (!masked) std::fill(w, w + n, 1.0f);
    for (int i = static_cast<int>(rb); i < static_cast<int>(re); ++i) {
      std::fill(v0, v0 + n, 0.0f);
      std::fill(v1, v1 + n, 0.0f);
      std::fill(v2, v2 + n, 0.0f);
      std::fill(v3, v3 + n, 0.0f);
      std::fill(v4, v4 + n, 0.0f);
      for (int k = 0; k < kTaps; ++k) {
        const int r = i + k - kRad;
        if (r < 0 || r >= H) continue;
        const float gk = g[k];
        const float* __restrict xr = x + static_cast<int64_t>(r) * n;
        const float* __restrict yr = y + static_cast<int64_t>(r) * n;
        for (int e = 0; e < n; ++e) {
          const float a = xr[e], b = yr[e];
          v0[e] = v0[e] + gk * a;
          v1[e] = v1[e] + gk * b;
          v2[e] = v2[e] + gk * (a * a);
          v3[e] = v3[e] + gk * (b * b);
          v4[e] = v4[e] + gk * (a * b);
        }
      }
      blur_row(v0, mx, n, C, g);
      blur_row(v1, my, n, C, g);
      blur_row(v2, exx, n, C, g);
      blur_row(v3, eyy, n, C, g);
      blur_row(v4, exy, n, C, g);
      if (masked) weights(i, w);  // else w holds ones (set once above)
      const float* __restrict xi = x + static_cast<int64_t>(i) * n;
      const float* __restrict yi = y + static_cast<int64_t>(i) * n;
      float* pm = need_grad ? P + static_cast<int64_t>(i) * n : nullptr;
      if (need_grad)
        ssim_pointwise<true>(n, mx, my, exx, eyy, exy, w, xi, yi, fc1, fc2, s, ad, pm, pm + plane, pm + 2 * plane);
      else
        ssim_pointwise<false>(n, mx, my, exx, eyy, exy, w, xi, yi, fc1, fc2, s, ad, nullptr, nullptr, nullptr);
      ssim_rows[i] = row_sum(s, n);
      l1_rows[i] = row_sum(ad, n);
      count_rows[i] = masked ? row_sum(w, n) : static_cast<double>(n);
    }
  });
  double ssim_sum = 0.0, l1_sum = 0.0, count = 0.0;
  for (int i = 0; i < H; ++i) {
    ssim_sum += ssim_rows[i];
    l1_sum += l1_rows[i];
    count += count_rows[i];
  }
  const double denom = std::max(count, 1.0);
  const double l1v = l1_sum / denom, ssimv = ssim_sum / denom;
  at::Tensor loss = at::full({}, static_cast<float>((1.0 - lam) * l1v + lam * (1.0 - ssimv)), at::kFloat);
  at::Tensor l1_t = at::full({}, static_cast<float>(l1v), at::kFloat);
  at::Tensor ssim_t = at::full({}, static_cast<float>(ssimv), at::kFloat);
  if (!need_grad) return {loss, l1_t, ssim_t, at::Tensor()};

  // Pass 2: d loss / dx = (1 - lam)/N w sign(x - y) - lam/N (blur(P_mu) + 2 x blur(P_e2) + y blur(P_exy)).
  at::Tensor grad = at::empty({H, W, C}, at::kFloat);
  float* gout = grad.data_ptr<float>();
  const float k_l1 = static_cast<float>((1.0 - lam) / denom), k_ssim = static_cast<float>(-lam / denom);
  parallel_range(H, 8, [&](int64_t rb, int64_t re) {
    RowScratch v(3, n, C);
    std::unique_ptr<float[]> tmp(new float[static_cast<size_t>(4) * n]);
    float *bm = tmp.get(), *be = bm + n, *bx = be + n, *w = bx + n;
    float *v0 = v.row(0), *v1 = v.row(1), *v2 = v.row(2);
    if (!masked) std::fill(w, w + n, 1.0f);
    for (int i = static_cast<int>(rb); i < static_cast<int>(re); ++i) {
      std::fill(v0, v0 + n, 0.0f);
      std::fill(v1, v1 + n, 0.0f);
      std::fill(v2, v2 + n, 0.0f);
      for (int k = 0; k < kTaps; ++k) {
        const int r = i + k - kRad;
        if (r < 0 || r >= H) continue;
        const float gk = g[k];
        const float* __restrict pm = P + static_cast<int64_t>(r) * n;
        const float* __restrict pe = pm + plane;
        const float* __restrict px = pe + plane;
        for (int e = 0; e < n; ++e) {
          v0[e] = v0[e] + gk * pm[e];
          v1[e] = v1[e] + gk * pe[e];
          v2[e] = v2[e] + gk * px[e];
        }
      }
      blur_row(v0, bm, n, C, g);
      blur_row(v1, be, n, C, g);
      blur_row(v2, bx, n, C, g);
      if (masked) weights(i, w);  // else w holds ones (set once above)
      const float* __restrict xi = x + static_cast<int64_t>(i) * n;
      const float* __restrict yi = y + static_cast<int64_t>(i) * n;
      const float* __restrict wr = w;
      float* __restrict go = gout + static_cast<int64_t>(i) * n;
      for (int e = 0; e < n; ++e) {
        const float d = xi[e] - yi[e];
        const float sgn = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);  // torch's sign: 0 at 0
        const float wi = wr[e];
        const float dssim = (bm[e] + 2.0f * xi[e] * be[e]) + yi[e] * bx[e];
        go[e] = k_l1 * (wi * sgn) + k_ssim * dssim;
      }
    }
  });
  return {loss, l1_t, ssim_t, grad};
}

}  // namespace cpu_rasterizer
