// Stage 2 of docs/rasterizer.md on the CPU: per-camera tile binning, per-tile depth order, and alpha
// compositing of 16x16 tiles, with a hand-written backward.
//
// Layout of the work, per camera:
//   1. bin:      the visible Gaussians (radius > 0, non-empty tile rect) are sorted once by depth
//                (stable LSD radix sort on the float bits, so ties keep ascending index order), and
//                then scattered into per-tile lists in that order. Each tile list is therefore in
//                (depth, index) order without a per-tile sort, and holds *ranks* in the depth-sorted
//                array, so a tile walks the packed Gaussian parameters forwards in memory.
//   2. pack:     the parameters each tile needs are copied into one contiguous record per rank.
//   3. composite: OpenMP over tiles (dynamic schedule, longest lists first). Inside a tile the
//                loop runs over the tile's Gaussians front to back and, for each, over the tile rows
//                its ellipse can reach; a row of 16 pixels is one 16-lane vector (simd.h).
// The backward replays each pixel back to front from its last contributor, recovering the
// transmittance by division (T_i = T_{i+1} / (1 - alpha_i)), as in the 3DGS paper. A tile writes the
// gradient of each of its Gaussians into that (tile, Gaussian) pair's own slot; a second pass sums
// each Gaussian's slots in tile order. No atomics, no per-thread buffers, and the result does not
// depend on the number of threads.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common.h"
#include "simd.h"

namespace cpu_rasterizer {
namespace {

constexpr int kMaxD = 32;  // feature channels handled by the generic (runtime-D) kernels
constexpr int kHead = 8;   // floats per packed record before the features (see pack_gaussians)

// Maps a float depth to an unsigned key with the same order (negative values flipped), so an
// integer radix sort sorts depths. -0 becomes +0 (torch treats them as equal); NaN goes last, as in
// torch.sort.
inline uint32_t depth_key(float d) {
  if (std::isnan(d)) return 0xFFFFFFFFu;
  d = d + 0.0f;
  uint32_t u;
  std::memcpy(&u, &d, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Stable LSD radix sort of `vals` by `keys` (11-bit digits, 3 passes, a pass is skipped when every
// key has the same digit). Stability gives the reference's tie order: vals arrive in index order.
void radix_sort(std::vector<uint32_t>& keys, std::vector<int32_t>& vals) {
  const size_t n = keys.size();
  std::vector<uint32_t> k2(n);
  std::vector<int32_t> v2(n);
  for (int shift = 0; shift < 32; shift += 11) {
    const uint32_t mask = 0x7FFu;
    std::vector<int64_t> count(2049, 0);
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & mask) + 1];
    bool trivial = false;
    for (int b = 1; b <= 2048; ++b)
      if (count[b] == static_cast<int64_t>(n)) trivial = true;
    if (trivial) continue;
    for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const int64_t pos = count[(keys[i] >> shift) & mask]++;
      k2[pos] = keys[i];
      v2[pos] = vals[i];
    }
    keys.swap(k2);
    vals.swap(v2);
  }
}

// Inputs of one camera, as raw pointers into contiguous float32 / int32 tensors.
struct CameraInputs {
  const float* means2d;    // (N,2)
  const float* conics;     // (N,3)
  const float* features;   // (N,D)
  const float* opacities;  // (N,)
  const float* depths;     // (N,)
  const int32_t* radii;    // (N,)
  int64_t N;
  int D;
};

// The binning of one camera. The tensors are kept by the autograd Function for the backward.
struct Binning {
  at::Tensor tile_offsets;  // (n_tiles+1,) int64: tile t's list is isect[tile_offsets[t] : tile_offsets[t+1]]
  at::Tensor isect;         // (K,) int32: ranks (positions in depth order), tile-major, depth order inside
  at::Tensor vis_ids;       // (V,) int32: Gaussian index of each rank
  at::Tensor vis_start;     // (V+1,) int64: rank r's (tile, Gaussian) pairs are entries [vis_start[r], vis_start[r+1])
  at::Tensor entry_pos;     // (K,) int32: for each such pair (rank-major, tiles row-major), its position in isect
};

Binning bin_camera(const CameraInputs& in, int32_t tiles_x, int32_t tiles_y) {
  const int64_t N = in.N;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  // Tile rects of every Gaussian (empty when culled).
  std::vector<Rect> rects(N);
  parallel_range(N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const int32_t r = in.radii[n];
      if (r <= 0) {
        rects[n] = Rect{0, 0, 0, 0};
        continue;
      }
      rects[n] = tile_rect(in.means2d[2 * n], in.means2d[2 * n + 1], r, tiles_x, tiles_y);
    }
  });
  // Visible Gaussians in index order, then stable-sorted by depth.
  std::vector<int32_t> order;
  std::vector<uint32_t> keys;
  for (int64_t n = 0; n < N; ++n) {
    if (rects[n].area() > 0) {
      order.push_back(static_cast<int32_t>(n));
      keys.push_back(depth_key(in.depths[n]));
    }
  }
  radix_sort(keys, order);
  const int64_t V = static_cast<int64_t>(order.size());

  Binning b;
  b.vis_ids = at::empty({V}, at::kInt);
  b.vis_start = at::empty({V + 1}, at::kLong);
  int32_t* vis_ids = b.vis_ids.data_ptr<int32_t>();
  int64_t* vis_start = b.vis_start.data_ptr<int64_t>();
  std::copy(order.begin(), order.end(), vis_ids);
  vis_start[0] = 0;
  for (int64_t r = 0; r < V; ++r) vis_start[r + 1] = vis_start[r] + rects[vis_ids[r]].area();
  const int64_t K = vis_start[V];
  TORCH_CHECK(K < std::numeric_limits<int32_t>::max(), "cpu rasterizer: too many tile-Gaussian pairs (", K, ")");

  // Scatter into tile lists. Each thread takes a contiguous range of ranks and counts per tile;
  // thread k's slots in a tile come after threads 0..k-1's, so every list stays in rank order.
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), V / 2048)));
  std::vector<int64_t> counts(static_cast<size_t>(nt) * n_tiles, 0);
  auto rank_range = [&](int k, int64_t& rb, int64_t& re) {
    rb = chunk_begin(V, nt, k);
    re = chunk_begin(V, nt, k + 1);
  };
#pragma omp parallel for num_threads(nt) schedule(static, 1)
  for (int k = 0; k < nt; ++k) {
    int64_t rb, re;
    rank_range(k, rb, re);
    int64_t* cnt = counts.data() + static_cast<size_t>(k) * n_tiles;
    for (int64_t r = rb; r < re; ++r) {
      const Rect& t = rects[vis_ids[r]];
      for (int32_t ty = t.y0; ty < t.y1; ++ty)
        for (int32_t tx = t.x0; tx < t.x1; ++tx) ++cnt[int64_t(ty) * tiles_x + tx];
    }
  }
  b.tile_offsets = at::empty({n_tiles + 1}, at::kLong);
  int64_t* offsets = b.tile_offsets.data_ptr<int64_t>();
  offsets[0] = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    int64_t cursor = offsets[t];
    for (int k = 0; k < nt; ++k) {
      int64_t& c = counts[static_cast<size_t>(k) * n_tiles + t];
      const int64_t here = c;
      c = cursor;  // becomes thread k's write cursor in tile t
      cursor += here;
    }
    offsets[t + 1] = cursor;
  }
  b.isect = at::empty({K}, at::kInt);
  b.entry_pos = at::empty({K}, at::kInt);
  int32_t* isect = b.isect.data_ptr<int32_t>();
  int32_t* entry_pos = b.entry_pos.data_ptr<int32_t>();
#pragma omp parallel for num_threads(nt) schedule(static, 1)
  for (int k = 0; k < nt; ++k) {
    int64_t rb, re;
    rank_range(k, rb, re);
    int64_t* cursor = counts.data() + static_cast<size_t>(k) * n_tiles;
    for (int64_t r = rb; r < re; ++r) {
      const Rect& t = rects[vis_ids[r]];
      int64_t e = vis_start[r];
      for (int32_t ty = t.y0; ty < t.y1; ++ty)
        for (int32_t tx = t.x0; tx < t.x1; ++tx) {
          const int64_t pos = cursor[int64_t(ty) * tiles_x + tx]++;
          isect[pos] = static_cast<int32_t>(r);
          entry_pos[e++] = static_cast<int32_t>(pos);
        }
    }
  }
  return b;
}

// Half-extents (in pixels, x and y) of the region where a Gaussian can reach alpha >= 1/255, with
// margins that cover float rounding; +inf when no safe bound exists (the tile loops then visit every
// row, and the exact per-pixel tests decide). Used only to skip rows and tiles whose pixels would
// all fail those tests anyway, so it changes speed, never results.
//
// alpha = min(0.99, o exp(P)) >= 1/255 needs P >= -tau, tau = ln(255 o). With Q the conic,
// P = -d^T Q d / 2, so d lies in the ellipse d^T Q d <= 2 tau, whose half-extent in y is
// sqrt(2 tau (Q^-1)_yy) = sqrt(2 tau a / det). The float evaluation of P errs by at most a few ulps
// of a dx^2 + c dy^2 + 2|b dx dy| <= 2 (a dx^2 + c dy^2) <= 2 kappa d^T Q d (kappa = condition number
// of Q), hence the relative widening of tau below; very ill-conditioned conics get no bound.
inline void alpha_extent(float a, float b, float c, float opacity, float& ext_x, float& ext_y) {
  const float inf = std::numeric_limits<float>::infinity();
  ext_x = ext_y = inf;
  if (!(opacity >= kAlphaMin)) {  // never reaches 1/255 (exp(P) <= 1), also catches NaN
    ext_x = ext_y = -1.0f;
    return;
  }
  const double da = a, db = b, dc = c;
  const double det = da * dc - db * db;
  if (!(da > 0.0 && dc > 0.0 && det > 0.0) || !std::isfinite(det)) return;
  const double mid = 0.5 * (da + dc);
  const double disc = std::sqrt(std::max(0.0, mid * mid - det));
  const double lmax = mid + disc, lmin = det / lmax;
  const double kappa = lmax / lmin;
  if (!(kappa < 1e4)) return;
  const double eps = 1.0 / (1 << 20);  // 16 ulps of float32, generous
  const double tau = (std::log(255.0 * static_cast<double>(opacity)) + 1e-5) / (1.0 - 4.0 * eps * kappa);
  const double ex = std::sqrt(2.0 * std::max(tau, 0.0) * dc / det) * (1.0 + 1e-4) + 1e-3;
  const double ey = std::sqrt(2.0 * std::max(tau, 0.0) * da / det) * (1.0 + 1e-4) + 1e-3;
  if (std::isfinite(ex) && std::isfinite(ey)) {
    ext_x = static_cast<float>(ex);
    ext_y = static_cast<float>(ey);
  }
}

// Packed per-rank record: mx, my, conic a, b, c, opacity, ext_x, ext_y, then D features.
std::vector<float> pack_gaussians(const CameraInputs& in, const int32_t* vis_ids, int64_t V) {
  const int stride = kHead + in.D;
  std::vector<float> packed(static_cast<size_t>(V) * stride);
  parallel_range(V, 2048, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = vis_ids[r];
      float* g = packed.data() + r * stride;
      g[0] = in.means2d[2 * n];
      g[1] = in.means2d[2 * n + 1];
      g[2] = in.conics[3 * n];
      g[3] = in.conics[3 * n + 1];
      g[4] = in.conics[3 * n + 2];
      g[5] = in.opacities[n];
      alpha_extent(g[2], g[3], g[4], g[5], g[6], g[7]);
      for (int d = 0; d < in.D; ++d) g[kHead + d] = in.features[n * in.D + d];
    }
  });
  return packed;
}

// The rows [r0, r1) of a tile (origin px0, py0; `rows` x `cols` pixels inside the image) that a
// Gaussian's alpha extent reaches; empty when the extent misses the tile's columns.
inline void row_range(const float* g, int px0, int py0, int cols, int rows, int& r0, int& r1) {
  const double mx = g[0], my = g[1], ex = g[6], ey = g[7];
  // Pixel centres are px0 + j + 0.5 (j < cols) and py0 + i + 0.5 (i < rows).
  if (ey < 0.0 || !(mx + ex >= px0 + 0.5) || !(mx - ex <= px0 + cols - 0.5)) {
    r0 = r1 = 0;
    return;
  }
  const double lo = std::ceil(my - ey - py0 - 0.5), hi = std::floor(my + ey - py0 - 0.5) + 1.0;
  r0 = static_cast<int>(std::max(0.0, std::min<double>(rows, lo)));
  r1 = static_cast<int>(std::max<double>(r0, std::min<double>(rows, hi)));
}

// The vector part shared by forward and backward: power and alpha of one Gaussian on one row.
// Forward and backward must take bit-identical decisions (skip / include / stop), so both call
// this one function; its float operations mirror the reference (reference._composite_batch):
//   power = -0.5 * (a*dx*dx + c*dy*dy) - b*dx*dy, alpha = min(0.99, o*exp(power)).
struct RowEval {
  vf dx;
  float dy;
  vf power, e, raw, alpha;  // raw = o*exp(power) before the 0.99 clamp
};

inline RowEval eval_row(const float* g, const vf& pxv, float py) {
  RowEval r;
  const float a = g[2], b = g[3], c = g[4], o = g[5];
  r.dx = g[0] - pxv;
  r.dy = g[1] - py;
  const float cyy = (c * r.dy) * r.dy;
  r.power = -0.5f * ((a * r.dx) * r.dx + cyy) - (b * r.dx) * r.dy;
  r.e = vexp(r.power);
  r.raw = o * r.e;
  r.alpha = vmin(r.raw, vsplat(kAlphaMax));
  return r;
}

inline vf lane_centres(int px0) {
  vf v;
  for (int j = 0; j < kLanes; ++j) v[j] = static_cast<float>(px0 + j) + 0.5f;
  return v;
}
inline vi lane_index() {
  vi v;
  for (int j = 0; j < kLanes; ++j) v[j] = j;
  return v;
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

// ---------------------------------------------------------------------------------------------
// Forward of one tile. DC > 0: compile-time channel count; DC == 0: runtime D <= kMaxD.
template <int DC>
void forward_tile(const float* packed, int D, const int32_t* list, int64_t count, const TileGeometry& tg, int W,
                  float* render, float* alpha_out, int32_t* last_out, float* tfinal_out) {
  constexpr int DS = DC > 0 ? DC : kMaxD;
  const int nd = DC > 0 ? DC : D;
  const int stride = kHead + nd;
  vf T[kTile], acc[kTile][DS];
  vi last[kTile], active[kTile];
  bool live[kTile];
  const vf pxv = lane_centres(tg.px0);
  const vi lane_ok = lane_index() < tg.cols;
  int live_rows = tg.rows;
  for (int i = 0; i < kTile; ++i) {
    T[i] = vsplat(1.0f);
    for (int d = 0; d < nd; ++d) acc[i][d] = vsplat(0.0f);
    last[i] = isplat(0);
    active[i] = lane_ok;
    live[i] = i < tg.rows;
  }
  for (int64_t j = 0; j < count && live_rows > 0; ++j) {
    const float* g = packed + static_cast<int64_t>(list[j]) * stride;
    int r0, r1;
    row_range(g, tg.px0, tg.py0, tg.cols, tg.rows, r0, r1);
    const vi next = isplat(static_cast<int32_t>(j + 1));
    for (int i = r0; i < r1; ++i) {
      if (!live[i]) continue;
      const RowEval ev = eval_row(g, pxv, static_cast<float>(tg.py0 + i) + 0.5f);
      const vi keep = active[i] & (ev.power <= 0.0f) & (ev.alpha >= kAlphaMin);
      if (!any(keep)) continue;
      const vf t_next = T[i] * (1.0f - ev.alpha);
      const vi stop = keep & (t_next < kTMin);  // this Gaussian and all later ones are left out
      const vi take = keep & ~stop;
      const vf w = ev.alpha * T[i];
      for (int d = 0; d < nd; ++d) acc[i][d] += vselect(take, g[kHead + d] * w, vsplat(0.0f));
      T[i] = vselect(take, t_next, T[i]);
      last[i] = iselect(take, next, last[i]);
      if (any(stop)) {
        active[i] &= ~stop;
        if (!any(active[i])) {
          live[i] = false;
          --live_rows;
        }
      }
    }
  }
  for (int i = 0; i < tg.rows; ++i) {
    const int64_t row = int64_t(tg.py0 + i) * W + tg.px0;
    for (int jx = 0; jx < tg.cols; ++jx) {
      const int64_t p = row + jx;
      for (int d = 0; d < nd; ++d) render[p * nd + d] = acc[i][d][jx];
      alpha_out[p] = 1.0f - T[i][jx];
      tfinal_out[p] = T[i][jx];
      last_out[p] = last[i][jx];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward of one tile: per pixel, back to front from its last contributor.
//
// With T_i the transmittance before Gaussian i, the output colour is C = sum_i f_i a_i T_i and
// alpha = 1 - T_F. For an included Gaussian i (derivation from these sums):
//   dL/da_i = T_i (g.f_i - G_i) + g_alpha T_F / (1 - a_i),
//   G_i = g . sum_{j>i} f_j a_j prod_{i<k<j} (1 - a_k), which obeys G_{i-1} = a_i g.f_i + (1 - a_i) G_i,
// so one running scalar per pixel carries every channel. Then through a = min(0.99, o exp(P)):
// dP = dL/da * a and dL/do = dL/da * exp(P) where the clamp is inactive (zero where it is, as for
// torch.clamp), and through P to the mean (dx = mx - px) and the conic.
//
// Each Gaussian's gradient over the tile goes to its slot: slots[j * (6 + D) + ...] =
// (d mx, d my, d a, d b, d c, d o, d f_0 .. d f_{D-1}).
template <int DC>
void backward_tile(const float* packed, int D, const int32_t* list, int64_t count, const TileGeometry& tg, int W,
                   const float* g_render, const float* g_alpha, const int32_t* last_in, const float* tfinal_in,
                   float* slots) {
  constexpr int DS = DC > 0 ? DC : kMaxD;
  const int nd = DC > 0 ? DC : D;
  const int stride = kHead + nd;
  const int sstride = 6 + nd;
  vf T[kTile], G[kTile], gaTF[kTile], gr[kTile][DS];
  vi last[kTile];
  int row_max[kTile];
  const vf pxv = lane_centres(tg.px0);
  int tile_max = 0;
  for (int i = 0; i < kTile; ++i) {
    T[i] = vsplat(1.0f);
    G[i] = vsplat(0.0f);
    gaTF[i] = vsplat(0.0f);
    last[i] = isplat(0);
    for (int d = 0; d < nd; ++d) gr[i][d] = vsplat(0.0f);
    row_max[i] = 0;
    if (i >= tg.rows) continue;
    const int64_t row = int64_t(tg.py0 + i) * W + tg.px0;
    for (int jx = 0; jx < tg.cols; ++jx) {
      const int64_t p = row + jx;
      T[i][jx] = tfinal_in[p];
      gaTF[i][jx] = g_alpha[p] * tfinal_in[p];
      last[i][jx] = last_in[p];
      for (int d = 0; d < nd; ++d) gr[i][d][jx] = g_render[p * nd + d];
    }
    row_max[i] = reduce_max(last[i]);
    tile_max = std::max(tile_max, row_max[i]);
  }
  // Gaussians after the last contributor of every pixel get no gradient from this tile.
  std::fill(slots + static_cast<int64_t>(tile_max) * sstride, slots + count * sstride, 0.0f);
  const vf zero = vsplat(0.0f);
  for (int64_t j = tile_max - 1; j >= 0; --j) {
    const float* g = packed + static_cast<int64_t>(list[j]) * stride;
    float* out = slots + j * sstride;
    int r0, r1;
    row_range(g, tg.px0, tg.py0, tg.cols, tg.rows, r0, r1);
    const float ca = g[2], cb = g[3], cc = g[4];
    const vi jv = isplat(static_cast<int32_t>(j));
    vf s_mx = zero, s_my = zero, s_a = zero, s_b = zero, s_c = zero, s_o = zero, s_f[DS];
    for (int d = 0; d < nd; ++d) s_f[d] = zero;
    bool touched = false;
    for (int i = r0; i < r1; ++i) {
      if (j >= row_max[i]) continue;
      const RowEval ev = eval_row(g, pxv, static_cast<float>(tg.py0 + i) + 0.5f);
      const vi inc = (last[i] > jv) & (ev.power <= 0.0f) & (ev.alpha >= kAlphaMin);
      if (!any(inc)) continue;
      touched = true;
      const vf om = 1.0f - ev.alpha;
      const vf inv = 1.0f / om;
      const vf Ti = T[i] * inv;  // transmittance before this Gaussian
      vf gf = gr[i][0] * g[kHead];
      for (int d = 1; d < nd; ++d) gf += gr[i][d] * g[kHead + d];
      const vf dal = Ti * (gf - G[i]) + gaTF[i] * inv;
      const vi unclamped = inc & (ev.raw <= kAlphaMax);
      const vf dP = vselect(unclamped, dal * ev.alpha, zero);
      s_o += vselect(unclamped, dal * ev.e, zero);
      const vf dxdy = ev.dx * ev.dy;
      s_mx += dP * (-(ca * ev.dx) - cb * ev.dy);
      s_my += dP * (-(cc * ev.dy) - cb * ev.dx);
      s_a += dP * (-0.5f * (ev.dx * ev.dx));
      s_b += dP * (-dxdy);
      s_c += dP * (-0.5f * (ev.dy * ev.dy));
      const vf w = vselect(inc, ev.alpha * Ti, zero);
      for (int d = 0; d < nd; ++d) s_f[d] += gr[i][d] * w;
      G[i] = vselect(inc, ev.alpha * gf + om * G[i], G[i]);
      T[i] = vselect(inc, Ti, T[i]);
    }
    if (!touched) {
      std::fill(out, out + sstride, 0.0f);
      continue;
    }
    out[0] = reduce_add(s_mx);
    out[1] = reduce_add(s_my);
    out[2] = reduce_add(s_a);
    out[3] = reduce_add(s_b);
    out[4] = reduce_add(s_c);
    out[5] = reduce_add(s_o);
    for (int d = 0; d < nd; ++d) out[6 + d] = reduce_add(s_f[d]);
  }
}

// Tiles with work, longest lists first: with a dynamic schedule the long tiles start early and the
// short ones fill the gaps at the end.
std::vector<int64_t> tile_order(const int64_t* offsets, int64_t n_tiles) {
  std::vector<int64_t> order;
  order.reserve(n_tiles);
  for (int64_t t = 0; t < n_tiles; ++t)
    if (offsets[t + 1] > offsets[t]) order.push_back(t);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return offsets[x + 1] - offsets[x] > offsets[y + 1] - offsets[y];
  });
  return order;
}

template <typename F>
void for_each_tile(const std::vector<int64_t>& order, const F& f) {
  const int64_t n = static_cast<int64_t>(order.size());
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n)));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t k = 0; k < n; ++k) f(order[k]);
}

CameraInputs camera_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& features,
                           const at::Tensor& opacities, const at::Tensor& depths, const at::Tensor& radii, int64_t c) {
  CameraInputs in;
  in.N = means2d.size(1);
  in.D = static_cast<int>(features.size(2));
  in.means2d = means2d.data_ptr<float>() + c * in.N * 2;
  in.conics = conics.data_ptr<float>() + c * in.N * 3;
  in.features = features.data_ptr<float>() + c * in.N * in.D;
  in.opacities = opacities.data_ptr<float>() + (opacities.dim() == 2 ? c * in.N : 0);
  in.depths = depths.data_ptr<float>() + c * in.N;
  in.radii = radii.data_ptr<int32_t>() + c * in.N;
  return in;
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& features,
                  const at::Tensor& opacities, const at::Tensor& depths, const at::Tensor& radii, int64_t width,
                  int64_t height, int64_t tile_size) {
  // native.py gives clear ValueErrors first; these checks guard direct calls into the extension.
  TORCH_CHECK(tile_size == kTile, "cpu rasterizer: tile_size must be 16, got ", tile_size);
  TORCH_CHECK(width > 0 && height > 0, "cpu rasterizer: width and height must be positive");
  for (const at::Tensor* t : {&means2d, &conics, &features, &opacities, &depths})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "cpu rasterizer: expected contiguous float32 CPU tensors");
  TORCH_CHECK(radii.device().is_cpu() && radii.scalar_type() == at::kInt && radii.is_contiguous(),
              "cpu rasterizer: radii must be a contiguous int32 CPU tensor");
  const int64_t C = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be (C,N,2)");
  TORCH_CHECK(conics.dim() == 3 && conics.size(0) == C && conics.size(1) == N && conics.size(2) == 3,
              "conics must be (C,N,3)");
  TORCH_CHECK(features.dim() == 3 && features.size(0) == C && features.size(1) == N, "features must be (C,N,D)");
  TORCH_CHECK(features.size(2) >= 1 && features.size(2) <= kMaxD, "features must have 1..", kMaxD, " channels");
  TORCH_CHECK((opacities.dim() == 1 && opacities.size(0) == N) ||
                  (opacities.dim() == 2 && opacities.size(0) == C && opacities.size(1) == N),
              "opacities must be (N,) or (C,N)");
  TORCH_CHECK(depths.dim() == 2 && depths.size(0) == C && depths.size(1) == N, "depths must be (C,N)");
  TORCH_CHECK(radii.dim() == 2 && radii.size(0) == C && radii.size(1) == N, "radii must be (C,N)");
}

template <typename F>
void dispatch_channels(int D, const F& f) {
  switch (D) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    default: f(std::integral_constant<int, 0>()); break;
  }
}

}  // namespace

// Returns [render (C,H,W,D), alpha (C,H,W,1), last (C,H,W) int32, t_final (C,H,W), then per camera
// tile_offsets, isect, vis_ids, vis_start, entry_pos] - everything the backward needs.
std::vector<at::Tensor> composite_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& features, const at::Tensor& opacities,
                                          const at::Tensor& depths, const at::Tensor& radii, int64_t width,
                                          int64_t height, int64_t tile_size) {
  check_inputs(means2d, conics, features, opacities, depths, radii, width, height, tile_size);
  const int64_t C = means2d.size(0);
  const int D = static_cast<int>(features.size(2));
  const int W = static_cast<int>(width), H = static_cast<int>(height);
  const int32_t tiles_x = (W + kTile - 1) / kTile, tiles_y = (H + kTile - 1) / kTile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  // Pixels that no tile touches keep the empty result: render 0, alpha 0, T 1, no contributor.
  at::Tensor render = at::zeros({C, H, W, D}, at::kFloat);
  at::Tensor alpha = at::zeros({C, H, W, 1}, at::kFloat);
  at::Tensor last = at::zeros({C, H, W}, at::kInt);
  at::Tensor tfinal = at::ones({C, H, W}, at::kFloat);
  std::vector<at::Tensor> out = {render, alpha, last, tfinal};
  for (int64_t c = 0; c < C; ++c) {
    const CameraInputs in = camera_inputs(means2d, conics, features, opacities, depths, radii, c);
    Binning b = bin_camera(in, tiles_x, tiles_y);
    const int64_t V = b.vis_ids.size(0);
    const std::vector<float> packed = pack_gaussians(in, b.vis_ids.data_ptr<int32_t>(), V);
    const int64_t* offsets = b.tile_offsets.data_ptr<int64_t>();
    const int32_t* isect = b.isect.data_ptr<int32_t>();
    const int64_t pix = int64_t(H) * W;
    float* r_c = render.data_ptr<float>() + c * pix * D;
    float* a_c = alpha.data_ptr<float>() + c * pix;
    int32_t* l_c = last.data_ptr<int32_t>() + c * pix;
    float* t_c = tfinal.data_ptr<float>() + c * pix;
    const std::vector<int64_t> order = tile_order(offsets, n_tiles);
    dispatch_channels(D, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      for_each_tile(order, [&](int64_t t) {
        const TileGeometry tg = tile_geometry(t, tiles_x, W, H);
        forward_tile<DC>(packed.data(), D, isect + offsets[t], offsets[t + 1] - offsets[t], tg, W, r_c, a_c, l_c,
                         t_c);
      });
    });
    out.push_back(b.tile_offsets);
    out.push_back(b.isect);
    out.push_back(b.vis_ids);
    out.push_back(b.vis_start);
    out.push_back(b.entry_pos);
  }
  return out;
}

// Gradients w.r.t. means2d (C,N,2), conics (C,N,3), features (C,N,D) and opacities (shape of the
// input: (N,) sums over cameras). `state` is composite_forward's output from index 2 on.
std::vector<at::Tensor> composite_backward(const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& features, const at::Tensor& opacities,
                                           const at::Tensor& depths, const at::Tensor& radii, int64_t width,
                                           int64_t height, int64_t tile_size, const std::vector<at::Tensor>& state,
                                           const at::Tensor& g_render, const at::Tensor& g_alpha) {
  check_inputs(means2d, conics, features, opacities, depths, radii, width, height, tile_size);
  const int64_t C = means2d.size(0), N = means2d.size(1);
  const int D = static_cast<int>(features.size(2));
  const int W = static_cast<int>(width), H = static_cast<int>(height);
  const int32_t tiles_x = (W + kTile - 1) / kTile, tiles_y = (H + kTile - 1) / kTile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  TORCH_CHECK(static_cast<int64_t>(state.size()) == 2 + 5 * C, "cpu rasterizer: bad saved state");
  TORCH_CHECK(g_render.is_contiguous() && g_render.scalar_type() == at::kFloat &&
                  g_render.sizes() == at::IntArrayRef({C, H, W, D}),
              "cpu rasterizer: grad of render must be a contiguous float32 (C,H,W,D) tensor");
  TORCH_CHECK(g_alpha.is_contiguous() && g_alpha.scalar_type() == at::kFloat && g_alpha.numel() == C * H * W,
              "cpu rasterizer: grad of alpha must be a contiguous float32 (C,H,W,1) tensor");
  const at::Tensor& last = state[0];
  const at::Tensor& tfinal = state[1];
  at::Tensor g_means2d = at::zeros({C, N, 2}, at::kFloat);
  at::Tensor g_conics = at::zeros({C, N, 3}, at::kFloat);
  at::Tensor g_features = at::zeros({C, N, D}, at::kFloat);
  at::Tensor g_opacities = at::zeros(opacities.sizes(), at::kFloat);
  const int sstride = 6 + D;
  int64_t k_max = 0;
  for (int64_t c = 0; c < C; ++c) k_max = std::max(k_max, state[2 + 5 * c + 1].size(0));
  // One slot per (tile, Gaussian) pair; reused camera after camera.
  std::vector<float> slots(static_cast<size_t>(k_max) * sstride);
  const int64_t pix = int64_t(H) * W;
  for (int64_t c = 0; c < C; ++c) {
    const CameraInputs in = camera_inputs(means2d, conics, features, opacities, depths, radii, c);
    const int64_t* offsets = state[2 + 5 * c].data_ptr<int64_t>();
    const int32_t* isect = state[2 + 5 * c + 1].data_ptr<int32_t>();
    const int32_t* vis_ids = state[2 + 5 * c + 2].data_ptr<int32_t>();
    const int64_t* vis_start = state[2 + 5 * c + 3].data_ptr<int64_t>();
    const int32_t* entry_pos = state[2 + 5 * c + 4].data_ptr<int32_t>();
    const int64_t V = state[2 + 5 * c + 2].size(0);
    TORCH_CHECK(state[2 + 5 * c].size(0) == n_tiles + 1, "cpu rasterizer: saved state does not match the image size");
    const std::vector<float> packed = pack_gaussians(in, vis_ids, V);
    const float* gr_c = g_render.data_ptr<float>() + c * pix * D;
    const float* ga_c = g_alpha.data_ptr<float>() + c * pix;
    const int32_t* l_c = last.data_ptr<int32_t>() + c * pix;
    const float* t_c = tfinal.data_ptr<float>() + c * pix;
    const std::vector<int64_t> order = tile_order(offsets, n_tiles);
    dispatch_channels(D, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      for_each_tile(order, [&](int64_t t) {
        const TileGeometry tg = tile_geometry(t, tiles_x, W, H);
        backward_tile<DC>(packed.data(), D, isect + offsets[t], offsets[t + 1] - offsets[t], tg, W, gr_c, ga_c, l_c,
                          t_c, slots.data() + offsets[t] * sstride);
      });
    });
    // Sum each Gaussian's slots in tile order (fixed, so deterministic for any thread count).
    float* gm = g_means2d.data_ptr<float>() + c * N * 2;
    float* gc = g_conics.data_ptr<float>() + c * N * 3;
    float* gf = g_features.data_ptr<float>() + c * N * D;
    float* go = g_opacities.data_ptr<float>() + (opacities.dim() == 2 ? c * N : 0);
    parallel_range(V, 1024, [&](int64_t b, int64_t e) {
      float sum[6 + kMaxD];
      for (int64_t r = b; r < e; ++r) {
        std::fill(sum, sum + sstride, 0.0f);
        for (int64_t k = vis_start[r]; k < vis_start[r + 1]; ++k) {
          const float* s = slots.data() + static_cast<int64_t>(entry_pos[k]) * sstride;
          for (int q = 0; q < sstride; ++q) sum[q] += s[q];
        }
        const int64_t n = vis_ids[r];
        gm[2 * n] = sum[0];
        gm[2 * n + 1] = sum[1];
        gc[3 * n] = sum[2];
        gc[3 * n + 1] = sum[3];
        gc[3 * n + 2] = sum[4];
        go[n] += sum[5];
        for (int d = 0; d < D; ++d) gf[n * D + d] = sum[6 + d];
      }
    });
  }
  return {g_means2d, g_conics, g_features, g_opacities};
}

}  // namespace cpu_rasterizer
