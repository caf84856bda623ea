// The per-tile compositing kernels of stage 2 (docs/rasterizer.md), forward and backward.
//
// A 16x16 tile is 32 *units* of 8 pixels (each row is two halves; unit u = 16 h + i is half h of
// row i). The tile's depth-ordered Gaussian list is processed in batches. For each Gaussian of a
// batch, one vector computation over the tile's 16 rows gives the set of units its footprint (the
// pixels where its alpha can reach 1/255) touches, as a 32-bit mask; from those masks every unit
// gets the list of the batch's Gaussians it must composite. Each unit then walks its own list with
// its state (transmittance, accumulated features, last contributor) in registers. A Gaussian left
// out of a unit's list provably has alpha < 1/255 on all its pixels, which the exact per-pixel test
// would reject anyway: the footprints change speed, never results.
//
// Everything here is plain C++ on raw pointers (no ATen), so it also builds in a standalone benchmark.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common.h"
#include "simd.h"

namespace cpu_rasterizer {

constexpr int kMaxD = 32;    // feature channels handled by the generic (runtime-D) kernels
constexpr int kHead = 12;    // floats per packed record before the features (see pack_record)
constexpr int kUnits = 32;   // 8-pixel units per tile
constexpr int kBatch = 128;  // Gaussians per batch: unit lists and backward sums stay in L1/L2

// ---------------------------------------------------------------------------------------------
// Packed record of one visible Gaussian, computed once per camera:
//   [0..5]  mx, my, conic a, b, c, opacity (as given)
//   [6]     ey: half-height of the footprint in pixels; < 0: never reaches 1/255; +inf: unbounded
//   [7..10] k2ta, det, 1/a, b/a: the footprint's row equation (below); k2ta = +inf: unbounded
//   [12..]  the D features
//
// Footprint. alpha = min(0.99, o exp(P)) >= 1/255 needs P >= -tau, tau = ln(255 o). With
// Q = [[a, b], [b, c]] and d = mean - pixel, P = -d^T Q d / 2, so the pixel lies in the ellipse
// d^T Q d <= 2 tau: rows |dy| <= sqrt(2 tau a / det), and on a row, dx = mx - px within
// (-b dy +- sqrt(2 tau a - det dy^2)) / a. The float evaluation of P errs by a few ulps of
// a dx^2 + c dy^2 + 2|b dx dy| <= 2 kappa d^T Q d (kappa: condition number of Q), which widening tau
// relatively (and absolutely, for exp's own rounding) covers; 2 tau a is widened by a further 1e-5
// for the float32 row arithmetic in unit_mask. Ill-conditioned or indefinite conics get no bound
// (every pixel of the tile is evaluated).
struct Footprint {
  enum Kind { kNever, kUnbounded, kBounded } kind;
  double two_tau, det;  // the widened 2 tau and det(Q) (kBounded only)
  double ex, ey;        // half-width and half-height of the ellipse in pixels, with slack (kBounded only)
};

inline Footprint footprint(const float* conic, float opacity) {
  Footprint f{Footprint::kUnbounded, 0.0, 0.0, 0.0, 0.0};
  if (!(opacity >= kAlphaMin)) {  // exp(P) <= 1: alpha < 1/255 everywhere (also catches NaN)
    f.kind = Footprint::kNever;
    return f;
  }
  const double da = conic[0], db = conic[1], dc = conic[2];
  const double det = da * dc - db * db;
  if (!(da > 0.0 && dc > 0.0 && det > 0.0) || !std::isfinite(det)) return f;
  const double mid = 0.5 * (da + dc);
  const double lmax = mid + std::sqrt(std::max(0.0, mid * mid - det)), lmin = det / lmax;
  const double kappa = lmax / lmin;
  if (!(kappa < 1e4)) return f;
  const double eps = 1.0 / (1 << 20);  // 16 ulps of float32, generous
  // logf errs by ~1e-7 of a value below 6: far inside the 1e-5 slack.
  const double tau = (static_cast<double>(std::log(255.0f * opacity)) + 1e-5) / (1.0 - 4.0 * eps * kappa);
  const double two_tau = 2.0 * std::max(tau, 0.0) * (1.0 + 1e-6);
  const double ey = std::sqrt(two_tau * da / det) * (1.0 + 1e-4) + 1e-3;
  if (!std::isfinite(ey) || !(ey < 1e7)) return f;
  f.kind = Footprint::kBounded;
  f.two_tau = two_tau;
  f.det = det;
  f.ex = std::sqrt(two_tau * dc / det) * (1.0 + 1e-4) + 1e-3;  // (binning only; +inf or NaN: no cut in x)
  f.ey = ey;
  return f;
}

// The footprint fields of a packed record, g[6..11] (see above), for a Gaussian with conic (a, b, .).
constexpr int kFootFields = 6;
inline void footprint_fields(float* out, const Footprint& f, float a, float b) {
  const float inf = std::numeric_limits<float>::infinity();
  out[0] = f.kind == Footprint::kNever ? -1.0f : inf;
  out[1] = inf;
  out[2] = out[3] = out[4] = out[5] = 0.0f;
  if (f.kind != Footprint::kBounded) return;
  const double da = a, db = b;
  out[0] = static_cast<float>(f.ey);
  out[1] = static_cast<float>(f.two_tau * da * (1.0 + 1e-5));
  out[2] = static_cast<float>(f.det);
  out[3] = static_cast<float>(1.0 / da);
  out[4] = static_cast<float>(db / da);
}

// A packed record from the inputs and the footprint fields computed at binning (footprint_fields).
inline void pack_record(float* g, const float* mean2d, const float* conic, float opacity, const float* foot,
                        const float* features, int D) {
  g[0] = mean2d[0];
  g[1] = mean2d[1];
  g[2] = conic[0];
  g[3] = conic[1];
  g[4] = conic[2];
  g[5] = opacity;
  for (int i = 0; i < kFootFields; ++i) g[6 + i] = foot[i];
  for (int d = 0; d < D; ++d) g[kHead + d] = features[d];
}

// The tiles of `rect` (a Gaussian's radius rectangle, tile_rect) that its footprint can reach: the
// rectangle cut to the tiles that overlap the footprint's bounding box (empty when alpha < 1/255
// everywhere; the whole rectangle when the footprint is unbounded). A tile left out has no pixel with
// alpha >= 1/255, where the kernels would find no unit to composite. On a trained lego scene the box
// keeps ~0.6 of the radius square's tiles, so every later pass walks ~0.6 of the (tile, Gaussian) pairs,
// and no result changes.
inline Rect footprint_tiles(Rect rect, const float* mean2d, const Footprint& f) {
  if (f.kind == Footprint::kNever) return Rect{rect.x0, rect.x0, rect.y0, rect.y0};
  if (f.kind == Footprint::kUnbounded) return rect;
  // Tile t spans pixels [16 t, 16 t + 16): it overlaps [m - e, m + e] when 16 t <= m + e and 16 t + 16 > m - e.
  const auto lo = [](double v) { return std::floor(v / kTile); };
  const auto hi = [](double v) { return std::floor(v / kTile) + 1.0; };
  const double mx = mean2d[0], my = mean2d[1];
  const auto clip = [](double v, int32_t a, int32_t b) { return static_cast<int32_t>(std::min<double>(b, std::max<double>(a, v))); };
  Rect r;
  const bool cut_x = f.ex < 1e7;
  r.x0 = cut_x ? clip(lo(mx - f.ex), rect.x0, rect.x1) : rect.x0;
  r.x1 = cut_x ? clip(hi(mx + f.ex), r.x0, rect.x1) : rect.x1;
  r.y0 = clip(lo(my - f.ey), rect.y0, rect.y1);
  r.y1 = clip(hi(my + f.ey), r.y0, rect.y1);
  return r;
}

struct TileGeometry {
  int px0, py0, cols, rows;  // origin and the part inside the image
};

inline TileGeometry tile_geometry(int64_t t, int tiles_x, int W, int H) {
  TileGeometry tg;
  tg.px0 = static_cast<int>(t % tiles_x) * kTile;
  tg.py0 = static_cast<int>(t / tiles_x) * kTile;
  tg.cols = std::min(kTile, W - tg.px0);
  tg.rows = std::min(kTile, H - tg.py0);
  return tg;
}

// The units of the tile that a Gaussian's footprint touches (bit u for unit u = 16 h + i).
// Computed for the 16 rows at once, without branches per row: a per-row square root feeding
// per-row branches would stall the core on every misprediction.
inline uint32_t unit_mask(const float* g, const TileGeometry& tg) {
  const double ey = g[6];
  if (ey < 0.0) return 0;
  const double my = g[1];
  const double lo = std::ceil(my - ey - tg.py0 - 0.5), hi = std::floor(my + ey - tg.py0 - 0.5) + 1.0;
  const int r0 = static_cast<int>(std::max(0.0, std::min<double>(tg.rows, lo)));
  const int r1 = static_cast<int>(std::max<double>(r0, std::min<double>(tg.rows, hi)));
  if (r0 >= r1) return 0;
  const uint32_t rows = ((1u << r1) - 1u) & ~((1u << r0) - 1u);
  const int last_col = tg.cols - 1;
  uint32_t in0 = rows, in1 = tg.cols > 8 ? rows : 0u;
  if (std::isfinite(g[7])) {
    // Row i: dy = my - (py0 + i + 0.5) in float32, as the kernels compute it. On the row the pixel
    // centres px0 + j + 0.5 reached are those with j in [m - s, m + s], s = sqrt(2 tau a - det dy^2) / a,
    // m = mx - px0 - 0.5 + (b/a) dy. The float32 arithmetic errs by ~1e-7 of its terms; the range is
    // widened by 1e-3 px + 1e-6 relative (and 2 tau a by 1e-5 at packing).
    const float cx = static_cast<float>(static_cast<double>(g[0]) - (tg.px0 + 0.5));
    vf16 py;
    for (int i = 0; i < kTile; ++i) py[i] = static_cast<float>(tg.py0 + i) + 0.5f;
    const vf16 dy = g[1] - py;
    const vf16 disc = g[7] - g[8] * (dy * dy);
    const vf16 s = vsqrt(vmax(disc, splat<vf16>(0.0f))) * g[9];
    const vf16 m = cx + g[10] * dy;
    const vf16 slack = 1e-3f + 1e-6f * (vmax(m, -m) + s);
    const vf16 lo_j = m - s - slack, hi_j = m + s + slack;
    const vi16 ok = disc >= 0.0f;
    // A half [j_a, j_b] is touched when the interval overlaps it (conservative by < 1 px at most).
    in0 &= bitmask(ok & (lo_j <= static_cast<float>(std::min(7, last_col))) & (hi_j >= 0.0f));
    in1 &= bitmask(ok & (lo_j <= static_cast<float>(last_col)) & (hi_j >= 8.0f));
  }
  return in0 | (in1 << 16);
}

// One Gaussian of the current batch, as the unit loops read it. The power's column terms (a*dx)*dx and
// b*dx depend only on the pixel column, so they are computed once per tile (both halves) in set().
struct BatchGauss {
  vf8 a_dx2[2], b_dx[2];
  float mx, my, a, b, c, o;
  int32_t index;      // position in the tile list
  const float* feat;  // D features

  void set(const float* g, int32_t j, const TileGeometry& tg) {
    mx = g[0], my = g[1], a = g[2], b = g[3], c = g[4], o = g[5];
    index = j;
    feat = g + kHead;
    vf16 px;
    for (int l = 0; l < 16; ++l) px[l] = static_cast<float>(tg.px0 + l) + 0.5f;
    const vf16 dx = mx - px;
    const vf16 adx2 = (a * dx) * dx, bdx = b * dx;  // the reference's left-to-right order
    a_dx2[0] = __builtin_shufflevector(adx2, adx2, 0, 1, 2, 3, 4, 5, 6, 7);
    a_dx2[1] = __builtin_shufflevector(adx2, adx2, 8, 9, 10, 11, 12, 13, 14, 15);
    b_dx[0] = __builtin_shufflevector(bdx, bdx, 0, 1, 2, 3, 4, 5, 6, 7);
    b_dx[1] = __builtin_shufflevector(bdx, bdx, 8, 9, 10, 11, 12, 13, 14, 15);
  }
};

// Unit lists of a batch: lists[u][0 .. lens[u]) are the batch positions k (ascending) whose mask
// has bit u. Row kUnits is a spare, always empty.
struct UnitLists {
  alignas(64) int32_t lists[kUnits + 1][kBatch + 16];
  int lens[kUnits + 1];

  void build(const uint32_t* masks, int nb) {
#if defined(__AVX512F__)
    alignas(64) uint32_t m[kBatch];
    std::memcpy(m, masks, sizeof(uint32_t) * nb);
    std::fill(m + nb, m + ((nb + 15) & ~15), 0u);
    for (int u = 0; u < kUnits; ++u) {
      const __m512i bit = _mm512_set1_epi32(static_cast<int>(1u << u));
      int len = 0;
      for (int k0 = 0; k0 < nb; k0 += 16) {
        const __mmask16 hit = _mm512_test_epi32_mask(_mm512_load_si512(m + k0), bit);
        const __m512i ks = _mm512_add_epi32(_mm512_set1_epi32(k0),
                                            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
        // Compress in a register, then a full store (compress-to-memory is microcoded and slow on
        // some CPUs); the 16 spare entries per list absorb the overhang.
        _mm512_storeu_si512(lists[u] + len, _mm512_maskz_compress_epi32(hit, ks));
        len += __builtin_popcount(hit);
      }
      lens[u] = len;
    }
#else
    std::fill(lens, lens + kUnits, 0);
    for (int k = 0; k < nb; ++k)
      for (uint32_t b = masks[k]; b != 0; b &= b - 1) {
        const int u = __builtin_ctz(b);
        lists[u][lens[u]++] = k;
      }
#endif
    lens[kUnits] = 0;
  }
};

// Power and alpha of Gaussian G on the 8 pixels at (px, py). Forward and backward must take
// bit-identical decisions (skip / include / stop), so both use this one function. The float
// operations mirror reference._composite_batch: power = -0.5 * (a*dx*dx + c*dy*dy) - b*dx*dy,
// alpha = min(0.99, o * exp(power)), with dx = mx - px, dy = my - py.
struct Eval {
  vf8 dx, power, e, raw, alpha;  // raw = o*exp(power) before the 0.99 clamp
  float dy;
};

template <bool kNeedDx>
inline Eval eval_unit(const BatchGauss& G, const vf8& px, float py, int h) {
  Eval r;
  if (kNeedDx) r.dx = G.mx - px;
  r.dy = G.my - py;
  const float cyy = (G.c * r.dy) * r.dy;
  r.power = -0.5f * (G.a_dx2[h] + cyy) - G.b_dx[h] * r.dy;
  r.e = vexp(r.power);
  r.raw = G.o * r.e;
  r.alpha = min_fast(r.raw, kAlphaMax);  // raw is never NaN where power <= 0 (opacity NaN is never binned)
  return r;
}

inline int unit_row(int u) { return u & 15; }
inline int unit_col0(int u) { return 8 * (u >> 4); }
inline vf8 unit_px(const TileGeometry& tg, int u) {
  vf8 px;
  for (int l = 0; l < 8; ++l) px[l] = static_cast<float>(tg.px0 + unit_col0(u) + l) + 0.5f;
  return px;
}
inline float unit_py(const TileGeometry& tg, int u) { return static_cast<float>(tg.py0 + unit_row(u)) + 0.5f; }

// ---------------------------------------------------------------------------------------------
// Forward of one tile. DC > 0: compile-time channel count; DC == 0: runtime D <= kMaxD.
template <int DC>
struct ForwardTile {
  static constexpr int DS = DC > 0 ? DC : kMaxD;
  alignas(64) BatchGauss gl[kBatch];
  alignas(64) float T[kUnits][8];
  alignas(64) float acc[kUnits][DS][8];
  alignas(64) int32_t last[kUnits][8];
  alignas(64) int32_t active[kUnits][8];  // all ones while the pixel takes contributions
  uint32_t alive;                         // units with an active pixel
  uint32_t masks[kBatch];
  UnitLists ul;

  // Composites unit u's list of the current batch, front to back. Per Gaussian and pixel, exactly
  // docs/rasterizer.md stage 2: skip if power > 0 or alpha < 1/255; stop (leaving this Gaussian out) once
  // T (1 - alpha) < 1e-4; else accumulate f alpha T and T *= 1 - alpha.
  void run_unit(int u, int nd, const TileGeometry& tg) {
    const vf8 px = unit_px(tg, u);
    const float py = unit_py(tg, u);
    const int n = ul.lens[u];
#if defined(__AVX512F__) && defined(__AVX512VL__)
    // The same steps with AVX-512 mask registers: the loop is bound by the latency of its dependency
    // chain (exp -> alpha -> T), and masks avoid the vector <-> mask conversions of the generic form.
    __m256 t = _mm256_loadu_ps(T[u]);
    __m256i lst = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(last[u]));
    const __m256i act_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(active[u]));
    __mmask8 act = _mm256_test_epi32_mask(act_v, act_v);
    __m256 ac[DS];
    for (int d = 0; d < nd; ++d) ac[d] = _mm256_loadu_ps(acc[u][d]);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int e = 0; e < n; ++e) {
      const BatchGauss& G = gl[ul.lists[u][e]];
      const Eval ev = eval_unit<false>(G, px, py, u >> 4);
      const __m256 alpha = (__m256)ev.alpha;
      const __mmask8 keep = _mm256_mask_cmp_ps_mask(act & _mm256_cmp_ps_mask((__m256)ev.power, _mm256_setzero_ps(), _CMP_LE_OQ),
                                                    alpha, _mm256_set1_ps(kAlphaMin), _CMP_GE_OQ);
      const __m256 t_next = _mm256_mul_ps(t, _mm256_sub_ps(one, alpha));
      const __mmask8 stop = _mm256_mask_cmp_ps_mask(keep, t_next, _mm256_set1_ps(kTMin), _CMP_LT_OQ);
      const __mmask8 take = keep & ~stop;
      const __m256 w = _mm256_mul_ps(alpha, t);
      for (int d = 0; d < nd; ++d)
        ac[d] = _mm256_mask_add_ps(ac[d], take, ac[d], _mm256_mul_ps(_mm256_set1_ps(G.feat[d]), w));
      t = _mm256_mask_mov_ps(t, take, t_next);
      lst = _mm256_mask_mov_epi32(lst, take, _mm256_set1_epi32(G.index + 1));
      act &= ~stop;
      if (act == 0) {
        alive &= ~(1u << u);
        break;
      }
    }
    _mm256_storeu_ps(T[u], t);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(last[u]), lst);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(active[u]), _mm256_maskz_mov_epi32(act, _mm256_set1_epi32(-1)));
    for (int d = 0; d < nd; ++d) _mm256_storeu_ps(acc[u][d], ac[d]);
#else
    vf8 t = load<vf8>(T[u]);
    vi8 lst = load<vi8>(last[u]), act = load<vi8>(active[u]);
    vf8 ac[DS];
    for (int d = 0; d < nd; ++d) ac[d] = load<vf8>(acc[u][d]);
    for (int e = 0; e < n; ++e) {
      const BatchGauss& G = gl[ul.lists[u][e]];
      const Eval ev = eval_unit<false>(G, px, py, u >> 4);
      const vi8 keep = act & (ev.power <= 0.0f) & (ev.alpha >= kAlphaMin);
      const vf8 t_next = t * (1.0f - ev.alpha);
      const vi8 stop = keep & (t_next < kTMin);  // this Gaussian and all later ones are left out
      const vi8 take = keep & ~stop;
      const vf8 w = ev.alpha * t;
      for (int d = 0; d < nd; ++d) ac[d] += select(take, G.feat[d] * w, splat<vf8>(0.0f));
      t = select(take, t_next, t);
      lst = select(take, isplat<vi8>(G.index + 1), lst);
      act &= ~stop;  // unconditionally: a branch on "some pixel stopped" would mispredict often
      if (!any(act)) {
        alive &= ~(1u << u);
        break;
      }
    }
    store(T[u], t);
    store(last[u], lst);
    store(active[u], act);
    for (int d = 0; d < nd; ++d) store(acc[u][d], ac[d]);
#endif
  }

  void run(const float* packed, int D, const int32_t* list, int64_t count, const TileGeometry& tg, int W,
           float* render, float* alpha_out, int32_t* last_out, float* tfinal_out) {
    const int nd = DC > 0 ? DC : D;
    const int stride = kHead + nd;
    // Pixels outside the image are never active (and never written out).
    std::fill(&T[0][0], &T[0][0] + kUnits * 8, 1.0f);
    std::fill(&acc[0][0][0], &acc[0][0][0] + kUnits * DS * 8, 0.0f);
    std::fill(&last[0][0], &last[0][0] + kUnits * 8, 0);
    std::fill(&active[0][0], &active[0][0] + kUnits * 8, 0);
    alive = 0;
    for (int i = 0; i < tg.rows; ++i)
      for (int jx = 0; jx < tg.cols; ++jx) {
        const int u = 16 * (jx >> 3) + i;
        active[u][jx & 7] = -1;
        alive |= 1u << u;
      }
    for (int64_t base = 0; base < count && alive != 0; base += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, count - base));
      for (int k = 0; k < nb; ++k) {
        const int64_t j = base + k;
        if (j + 8 < count) {  // records are read in rank order, but sparsely: fetch ahead
          const float* pf = packed + static_cast<int64_t>(list[j + 8]) * stride;
          __builtin_prefetch(pf);
          __builtin_prefetch(pf + stride - 1);
        }
        const float* g = packed + static_cast<int64_t>(list[j]) * stride;
        gl[k].set(g, static_cast<int32_t>(j), tg);
        masks[k] = unit_mask(g, tg) & alive;
      }
      ul.build(masks, nb);
      for (uint32_t b = alive; b != 0; b &= b - 1) {
        const int u = __builtin_ctz(b);
        if (ul.lens[u] > 0) run_unit(u, nd, tg);
      }
    }
    for (int i = 0; i < tg.rows; ++i) {
      const int64_t row = int64_t(tg.py0 + i) * W + tg.px0;
      for (int jx = 0; jx < tg.cols; ++jx) {
        const int u = 16 * (jx >> 3) + i, l = jx & 7;
        const int64_t p = row + jx;
        for (int d = 0; d < nd; ++d) render[p * nd + d] = acc[u][d][l];
        alpha_out[p] = 1.0f - T[u][l];
        tfinal_out[p] = T[u][l];
        last_out[p] = last[u][l];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Backward of one tile: per pixel, back to front from its last contributor.
//
// With T_i the transmittance before Gaussian i, the output colour is C = sum_i f_i a_i T_i and
// alpha = 1 - T_F. For an included Gaussian i (derivation from these sums):
//   dL/da_i = T_i (g.f_i - G_i) + g_alpha T_F / (1 - a_i),
//   G_i = g . sum_{j>i} f_j a_j prod_{i<k<j} (1 - a_k), which obeys G_{i-1} = a_i g.f_i + (1 - a_i) G_i,
// so one running scalar per pixel carries every channel. Then through a = min(0.99, o exp(P)):
// dP = dL/da * a and dL/do = dL/da * exp(P) where the clamp is inactive (zero where it is, as for
// torch.clamp), and through P to the mean (dx = mx - px) and the conic:
//   dP/dmx = -(a dx) - b dy, dP/dmy = -(c dy) - b dx, dP/da = -dx^2/2, dP/db = -dx dy, dP/dc = -dy^2/2.
//
// Batches run from the tile list's end to its start, and each unit walks its list backwards. A
// Gaussian's per-unit gradient vectors are summed into sums[k] (one 8-lane vector per quantity), and
// reduced to scalars once per batch into the Gaussian's (tile, Gaussian) slot:
// slots[j * (6 + D) + ...] = (d mx, d my, d a, d b, d c, d o, d f_0 .. d f_{D-1}).
template <int DC>
struct BackwardTile {
  static constexpr int DS = DC > 0 ? DC : kMaxD;
  static constexpr int NQ = 6 + DS;
  alignas(64) BatchGauss gl[kBatch];
  alignas(64) float T[kUnits][8];
  alignas(64) float G[kUnits][8];
  alignas(64) float gaTF[kUnits][8];
  alignas(64) float gr[kUnits][DS][8];
  alignas(64) int32_t last[kUnits][8];
  alignas(64) int32_t unit_max[kUnits];  // largest last contributor of the unit
  uint32_t masks[kBatch];
  UnitLists ul;
  alignas(64) vf8 sums[kBatch][NQ];

  void run_unit(int u, int nd, const TileGeometry& tg) {
    const vf8 px = unit_px(tg, u);
    const float py = unit_py(tg, u);
#if defined(__AVX512F__) && defined(__AVX512VL__)
    // The same steps as the generic form below, with AVX-512 mask registers (see ForwardTile).
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_loadu_ps(T[u]), gacc = _mm256_loadu_ps(G[u]);
    const __m256 ga = _mm256_loadu_ps(gaTF[u]);
    const __m256i lst = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(last[u]));
    __m256 g[DS];
    for (int d = 0; d < nd; ++d) g[d] = _mm256_loadu_ps(gr[u][d]);
    for (int e = ul.lens[u] - 1; e >= 0; --e) {
      const int k = ul.lists[u][e];
      const BatchGauss& Gs = gl[k];
      const Eval ev = eval_unit<true>(Gs, px, py, u >> 4);
      const __m256 alpha = (__m256)ev.alpha;
      const __mmask8 inc = _mm256_mask_cmp_ps_mask(
          _mm256_cmpgt_epi32_mask(lst, _mm256_set1_epi32(Gs.index)) &
              _mm256_cmp_ps_mask((__m256)ev.power, zero, _CMP_LE_OQ),
          alpha, _mm256_set1_ps(kAlphaMin), _CMP_GE_OQ);
      const __m256 om = _mm256_sub_ps(one, alpha);
      const __m256 inv = _mm256_div_ps(one, om);
      const __m256 ti = _mm256_mul_ps(t, inv);  // transmittance before this Gaussian
      __m256 gf = _mm256_mul_ps(g[0], _mm256_set1_ps(Gs.feat[0]));
      for (int d = 1; d < nd; ++d) gf = _mm256_add_ps(gf, _mm256_mul_ps(g[d], _mm256_set1_ps(Gs.feat[d])));
      const __m256 dal = _mm256_add_ps(_mm256_mul_ps(ti, _mm256_sub_ps(gf, gacc)), _mm256_mul_ps(ga, inv));
      const __mmask8 unclamped = _mm256_mask_cmp_ps_mask(inc, (__m256)ev.raw, _mm256_set1_ps(kAlphaMax), _CMP_LE_OQ);
      const __m256 dP = _mm256_maskz_mul_ps(unclamped, dal, alpha);
      const __m256 dx = (__m256)ev.dx, dy = _mm256_set1_ps(ev.dy);
      const __m256 ga_ = _mm256_set1_ps(Gs.a), gb_ = _mm256_set1_ps(Gs.b), gc_ = _mm256_set1_ps(Gs.c);
      const __m256 half = _mm256_set1_ps(-0.5f);
      __m256* s = reinterpret_cast<__m256*>(sums[k]);
      s[0] = _mm256_add_ps(s[0], _mm256_mul_ps(dP, _mm256_sub_ps(_mm256_sub_ps(zero, _mm256_mul_ps(ga_, dx)), _mm256_mul_ps(gb_, dy))));
      s[1] = _mm256_add_ps(s[1], _mm256_mul_ps(dP, _mm256_sub_ps(_mm256_sub_ps(zero, _mm256_mul_ps(gc_, dy)), _mm256_mul_ps(gb_, dx))));
      s[2] = _mm256_add_ps(s[2], _mm256_mul_ps(dP, _mm256_mul_ps(half, _mm256_mul_ps(dx, dx))));
      s[3] = _mm256_add_ps(s[3], _mm256_mul_ps(dP, _mm256_sub_ps(zero, _mm256_mul_ps(dx, dy))));
      s[4] = _mm256_add_ps(s[4], _mm256_mul_ps(dP, _mm256_mul_ps(half, _mm256_mul_ps(dy, dy))));
      s[5] = _mm256_add_ps(s[5], _mm256_maskz_mul_ps(unclamped, dal, (__m256)ev.e));
      const __m256 w = _mm256_maskz_mul_ps(inc, alpha, ti);
      for (int d = 0; d < nd; ++d) s[6 + d] = _mm256_add_ps(s[6 + d], _mm256_mul_ps(g[d], w));
      gacc = _mm256_mask_mov_ps(gacc, inc, _mm256_add_ps(_mm256_mul_ps(alpha, gf), _mm256_mul_ps(om, gacc)));
      t = _mm256_mask_mov_ps(t, inc, ti);
    }
    _mm256_storeu_ps(T[u], t);
    _mm256_storeu_ps(G[u], gacc);
#else
    const vf8 zero = splat<vf8>(0.0f);
    vf8 t = load<vf8>(T[u]), gacc = load<vf8>(G[u]);
    const vf8 ga = load<vf8>(gaTF[u]);
    const vi8 lst = load<vi8>(last[u]);
    vf8 g[DS];
    for (int d = 0; d < nd; ++d) g[d] = load<vf8>(gr[u][d]);
    for (int e = ul.lens[u] - 1; e >= 0; --e) {
      const int k = ul.lists[u][e];
      const BatchGauss& Gs = gl[k];
      const Eval ev = eval_unit<true>(Gs, px, py, u >> 4);
      const vi8 inc = (lst > Gs.index) & (ev.power <= 0.0f) & (ev.alpha >= kAlphaMin);
      const vf8 om = 1.0f - ev.alpha;
      const vf8 inv = 1.0f / om;
      const vf8 ti = t * inv;  // transmittance before this Gaussian
      vf8 gf = g[0] * Gs.feat[0];
      for (int d = 1; d < nd; ++d) gf += g[d] * Gs.feat[d];
      const vf8 dal = ti * (gf - gacc) + ga * inv;
      const vi8 unclamped = inc & (ev.raw <= kAlphaMax);
      const vf8 dP = select(unclamped, dal * ev.alpha, zero);
      vf8* s = sums[k];
      s[0] += dP * (-(Gs.a * ev.dx) - Gs.b * ev.dy);
      s[1] += dP * (-(Gs.c * ev.dy) - Gs.b * ev.dx);
      s[2] += dP * (-0.5f * (ev.dx * ev.dx));
      s[3] += dP * (-(ev.dx * ev.dy));
      s[4] += dP * (-0.5f * (ev.dy * ev.dy));
      s[5] += select(unclamped, dal * ev.e, zero);
      const vf8 w = select(inc, ev.alpha * ti, zero);
      for (int d = 0; d < nd; ++d) s[6 + d] += g[d] * w;
      gacc = select(inc, ev.alpha * gf + om * gacc, gacc);
      t = select(inc, ti, t);
    }
    store(T[u], t);
    store(G[u], gacc);
#endif
  }

  void run(const float* packed, int D, const int32_t* list, int64_t count, const TileGeometry& tg, int W,
           const float* g_render, const float* g_alpha, const int32_t* last_in, const float* tfinal_in,
           float* slots) {
    const int nd = DC > 0 ? DC : D;
    const int stride = kHead + nd;
    const int nq = 6 + nd;
    // Pixels outside the image keep T = 1, no contributor and zero gradients.
    std::fill(&T[0][0], &T[0][0] + kUnits * 8, 1.0f);
    std::fill(&G[0][0], &G[0][0] + kUnits * 8, 0.0f);
    std::fill(&gaTF[0][0], &gaTF[0][0] + kUnits * 8, 0.0f);
    std::fill(&gr[0][0][0], &gr[0][0][0] + kUnits * DS * 8, 0.0f);
    std::fill(&last[0][0], &last[0][0] + kUnits * 8, 0);
    for (int i = 0; i < tg.rows; ++i)
      for (int jx = 0; jx < tg.cols; ++jx) {
        const int u = 16 * (jx >> 3) + i, l = jx & 7;
        const int64_t p = int64_t(tg.py0 + i) * W + tg.px0 + jx;
        T[u][l] = tfinal_in[p];
        gaTF[u][l] = g_alpha[p] * tfinal_in[p];
        last[u][l] = last_in[p];
        for (int d = 0; d < nd; ++d) gr[u][d][l] = g_render[p * nd + d];
      }
    int32_t tile_max = 0;
    for (int u = 0; u < kUnits; ++u) {
      unit_max[u] = 0;
      for (int l = 0; l < 8; ++l) unit_max[u] = std::max(unit_max[u], last[u][l]);
      tile_max = std::max(tile_max, unit_max[u]);
    }
    // Gaussians after the last contributor of every pixel get no gradient from this tile.
    std::fill(slots + static_cast<int64_t>(tile_max) * nq, slots + count * nq, 0.0f);
    const int64_t first_base = tile_max > 0 ? (static_cast<int64_t>(tile_max) - 1) / kBatch * kBatch : -1;
    for (int64_t base = first_base; base >= 0; base -= kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, tile_max - base));
      for (int k = 0; k < nb; ++k) {
        const int64_t j = base + k;
        if (j + 8 < tile_max) {
          const float* pf = packed + static_cast<int64_t>(list[j + 8]) * stride;
          __builtin_prefetch(pf);
          __builtin_prefetch(pf + stride - 1);
        }
        const float* g = packed + static_cast<int64_t>(list[j]) * stride;
        gl[k].set(g, static_cast<int32_t>(j), tg);
        // only units with a pixel whose last contributor comes after this Gaussian
        const vi16 jj = isplat<vi16>(static_cast<int32_t>(j));
        const uint32_t want = bitmask(load<vi16>(unit_max) > jj) | (bitmask(load<vi16>(unit_max + 16) > jj) << 16);
        masks[k] = unit_mask(g, tg) & want;
        if (masks[k] != 0)
          for (int q = 0; q < nq; ++q) sums[k][q] = splat<vf8>(0.0f);
      }
      ul.build(masks, nb);
      for (int u = 0; u < kUnits; ++u)
        if (ul.lens[u] > 0) run_unit(u, nd, tg);
      for (int k = 0; k < nb; ++k) {
        float* out = slots + (base + k) * nq;
        if (masks[k] == 0)
          std::fill(out, out + nq, 0.0f);
        else
          for (int q = 0; q < nq; ++q) out[q] = reduce_add(sums[k][q]);
      }
    }
  }
};

}  // namespace cpu_rasterizer
