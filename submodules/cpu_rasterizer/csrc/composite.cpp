// Stage 2 of docs/rasterizer.md on the CPU: per-camera tile binning, per-tile depth order, and alpha
// compositing of 16x16 tiles, with a hand-written backward.
//
// Layout of the work, per camera:
//   1. bin:      the visible Gaussians (radius > 0, and a footprint that reaches a tile of their radius
//                rect: footprint_tiles) are sorted once by depth
//                (stable LSD radix sort on the float bits, so ties keep ascending index order), and
//                then scattered into per-tile lists in that order. Each tile list is therefore in
//                (depth, index) order without a per-tile sort, and holds *ranks* in the depth-sorted
//                array, so a tile walks the packed Gaussian parameters forwards in memory.
//   2. pack:     the parameters each tile needs are copied into one contiguous record per rank
//                (kept for the backward).
//   3. composite: OpenMP over tiles (dynamic schedule, longest lists first); the per-tile kernels
//                are in tile_kernels.h.
// The backward replays each pixel back to front from its last contributor, recovering the
// transmittance by division (T_i = T_{i+1} / (1 - alpha_i)), as in the 3DGS paper. A tile writes the
// gradient of each of its Gaussians into that (tile, Gaussian) pair's own slot; a second pass adds
// each Gaussian's slots, in tile order, to its gradient (tiles go in groups whose slots fit 64 MiB).
// No atomics, no per-thread buffers, and the result does not depend on the number of threads.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "tile_kernels.h"

namespace cpu_rasterizer {
namespace {

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

// Runs f(k, begin, end) for the `parts` contiguous chunks of [0, n), one chunk per OpenMP thread.
// Two calls with the same n and parts see the same chunks, which the stable passes below rely on.
template <typename F>
void for_chunks(int64_t n, int parts, const F& f) {
  if (parts <= 1) {
    f(0, int64_t(0), n);
    return;
  }
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int k = 0; k < parts; ++k) f(k, chunk_begin(n, parts, k), chunk_begin(n, parts, k + 1));
}

// Threads for a pass over n items: passes over fewer than kBinGrain items stay serial. The binning of
// a camera is about a quarter of the compositing forward's time at 100k Gaussians, so serial binning
// left a core idle for that long every step (issue 15's profile); below ~32k items a parallel region
// (and its barrier) costs more than it saves.
constexpr int64_t kBinGrain = int64_t(1) << 15;

inline int chunks_for(int64_t n, int64_t grain) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / grain)));
}

// Stable LSD radix sort of `vals` by `keys` (11-bit digits, 3 passes; a pass is skipped when every key
// has the same digit). Stability gives the reference's tie order, since vals arrive in index order.
// Parallel: each thread histograms its chunk, and the scatter offsets are prefix sums over
// (digit, thread), so a thread's elements of one digit land after those of the threads before it and
// in order within its chunk: the result is the same stable order for any thread count.
void radix_sort(std::unique_ptr<uint32_t[]>& keys, std::unique_ptr<int32_t[]>& vals, int64_t n) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const int parts = chunks_for(n, kBinGrain);
  std::unique_ptr<uint32_t[]> k2 = uninitialized<uint32_t>(n);
  std::unique_ptr<int32_t[]> v2 = uninitialized<int32_t>(n);
  std::vector<int64_t> hist(static_cast<size_t>(parts) * kBuckets);
  for (int shift = 0; shift < 32; shift += kBits) {
    const uint32_t* kin = keys.get();
    for_chunks(n, parts, [&](int k, int64_t b, int64_t e) {
      int64_t* h = hist.data() + static_cast<size_t>(k) * kBuckets;
      std::fill(h, h + kBuckets, 0);
      for (int64_t i = b; i < e; ++i) ++h[(kin[i] >> shift) & (kBuckets - 1)];
    });
    bool trivial = false;
    int64_t pos = 0;
    for (int d = 0; d < kBuckets; ++d) {
      int64_t total = 0;
      for (int k = 0; k < parts; ++k) {
        int64_t& h = hist[static_cast<size_t>(k) * kBuckets + d];
        const int64_t c = h;
        h = pos;  // becomes chunk k's first position for digit d
        pos += c;
        total += c;
      }
      trivial |= total == n;
    }
    if (trivial) continue;
    const int32_t* vin = vals.get();
    uint32_t* kout = k2.get();
    int32_t* vout = v2.get();
    for_chunks(n, parts, [&](int k, int64_t b, int64_t e) {
      int64_t* h = hist.data() + static_cast<size_t>(k) * kBuckets;
      for (int64_t i = b; i < e; ++i) {
        const int64_t p = h[(kin[i] >> shift) & (kBuckets - 1)]++;
        kout[p] = kin[i];
        vout[p] = vin[i];
      }
    });
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
  std::unique_ptr<float[]> foot;  // (N, kFootFields): each binned Gaussian's footprint fields, for the packing
};

Binning bin_camera(const CameraInputs& in, int32_t tiles_x, int32_t tiles_y) {
  const int64_t N = in.N;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  // Tile rects of every Gaussian (empty when culled), and the visible ones in index order with their
  // depth keys (two passes over the same chunks: count, then write at the chunk's offset).
  Binning res;
  res.foot = uninitialized<float>(static_cast<size_t>(N) * kFootFields);
  const std::unique_ptr<Rect[]> rects = uninitialized<Rect>(N);
  const int parts = chunks_for(N, kBinGrain);
  std::vector<int64_t> chunk_count(parts + 1, 0);
  for_chunks(N, parts, [&](int k, int64_t b, int64_t e) {
    int64_t cnt = 0;
    for (int64_t n = b; n < e; ++n) {
      const int32_t r = in.radii[n];
      if (r > 0) {
        const Footprint f = footprint(in.conics + 3 * n, in.opacities[n]);
        rects[n] = footprint_tiles(tile_rect(in.means2d[2 * n], in.means2d[2 * n + 1], r, tiles_x, tiles_y),
                                   in.means2d + 2 * n, f);
        footprint_fields(res.foot.get() + n * kFootFields, f, in.conics[3 * n], in.conics[3 * n + 1]);
      } else {
        rects[n] = Rect{0, 0, 0, 0};
      }
      cnt += rects[n].area() > 0;
    }
    chunk_count[k + 1] = cnt;
  });
  for (int k = 0; k < parts; ++k) chunk_count[k + 1] += chunk_count[k];
  const int64_t V = chunk_count[parts];
  std::unique_ptr<int32_t[]> order = uninitialized<int32_t>(V);
  std::unique_ptr<uint32_t[]> keys = uninitialized<uint32_t>(V);
  for_chunks(N, parts, [&](int k, int64_t b, int64_t e) {
    int64_t w = chunk_count[k];
    for (int64_t n = b; n < e; ++n)
      if (rects[n].area() > 0) {
        order[w] = static_cast<int32_t>(n);
        keys[w++] = depth_key(in.depths[n]);
      }
  });
  radix_sort(keys, order, V);

  res.vis_ids = at::empty({V}, at::kInt);
  res.vis_start = at::empty({V + 1}, at::kLong);
  int32_t* vis_ids = res.vis_ids.data_ptr<int32_t>();
  int64_t* vis_start = res.vis_start.data_ptr<int64_t>();
  std::copy(order.get(), order.get() + V, vis_ids);
  vis_start[0] = 0;
  for (int64_t r = 0; r < V; ++r) vis_start[r + 1] = vis_start[r] + rects[vis_ids[r]].area();
  const int64_t K = vis_start[V];
  TORCH_CHECK(K < std::numeric_limits<int32_t>::max(), "cpu rasterizer: too many tile-Gaussian pairs (", K, ")");

  // Scatter into tile lists. Each thread takes a contiguous range of ranks and counts per tile;
  // thread k's slots in a tile come after threads 0..k-1's, so every list stays in rank order.
  const int nt = chunks_for(V, kBinGrain / 4);
  std::vector<int64_t> counts(static_cast<size_t>(nt) * n_tiles, 0);
  for_chunks(V, nt, [&](int k, int64_t rb, int64_t re) {
    int64_t* cnt = counts.data() + static_cast<size_t>(k) * n_tiles;
    for (int64_t r = rb; r < re; ++r) {
      const Rect& t = rects[vis_ids[r]];
      for (int32_t ty = t.y0; ty < t.y1; ++ty)
        for (int32_t tx = t.x0; tx < t.x1; ++tx) ++cnt[int64_t(ty) * tiles_x + tx];
    }
  });
  res.tile_offsets = at::empty({n_tiles + 1}, at::kLong);
  int64_t* offsets = res.tile_offsets.data_ptr<int64_t>();
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
  res.isect = at::empty({K}, at::kInt);
  res.entry_pos = at::empty({K}, at::kInt);
  int32_t* isect = res.isect.data_ptr<int32_t>();
  int32_t* entry_pos = res.entry_pos.data_ptr<int32_t>();
  for_chunks(V, nt, [&](int k, int64_t rb, int64_t re) {
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
  });
  return res;
}

// Packed records of the visible Gaussians in rank (depth) order, (V, kHead + D); see pack_record. The
// forward keeps them for the backward, which reads the same inputs.
at::Tensor pack_gaussians(const CameraInputs& in, const int32_t* vis_ids, int64_t V, const float* foot) {
  const int stride = kHead + in.D;
  at::Tensor out = at::empty({V, stride}, at::kFloat);
  float* packed = out.data_ptr<float>();
  parallel_range(V, 2048, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (r + 16 < e) {  // ranks are in depth order, so the inputs are read at random: fetch ahead
        const int64_t m = vis_ids[r + 16];
        __builtin_prefetch(in.means2d + 2 * m);
        __builtin_prefetch(in.conics + 3 * m);
        __builtin_prefetch(in.opacities + m);
        __builtin_prefetch(in.features + m * in.D);
        __builtin_prefetch(foot + m * kFootFields);
      }
      const int64_t n = vis_ids[r];
      pack_record(packed + r * stride, in.means2d + 2 * n, in.conics + 3 * n, in.opacities[n], foot + n * kFootFields,
                  in.features + n * in.D, in.D);
    }
  });
  return out;
}

// Tiles longest list first: with a dynamic schedule the long tiles start early and the short ones fill
// the gaps at the end. With `with_empty`, tiles without Gaussians come last (the forward writes them).
std::vector<int64_t> tile_order(const int64_t* offsets, int64_t n_tiles, bool with_empty) {
  std::vector<int64_t> order;
  order.reserve(n_tiles);
  for (int64_t t = 0; t < n_tiles; ++t)
    if (with_empty || offsets[t + 1] > offsets[t]) order.push_back(t);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return offsets[x + 1] - offsets[x] > offsets[y + 1] - offsets[y];
  });
  return order;
}

// Runs f(kernel, tile) over the tiles in `order`, OpenMP-parallel with a dynamic schedule. Each thread
// allocates one Kernel (the per-tile scratch state, tens of kB) and reuses it for all its tiles.
template <typename Kernel, typename F>
void for_each_tile(const std::vector<int64_t>& order, const F& f) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), n));
#pragma omp parallel num_threads(nt)
  {
    FlushDenormals ftz;  // per thread, restored when the region ends
    std::unique_ptr<Kernel> kernel(new Kernel);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n; ++k) f(*kernel, order[k]);
  }
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

// The reduction of composite_backward's (tile, Gaussian) slots of one tile group into the gradients:
// each rank in [b, e) adds its slots of the group (slot positions [pos_lo, pos_hi)), in tile order, to
// its Gaussian's gradient (6 + D floats: mean 2, conic 3, opacity, features). A Gaussian's running sum
// is held in NV 16-lane registers (lane q = quantity q) while its slots stream in; summing in memory
// made every addition wait for the store of the one before (the loop ran at store-forwarding latency,
// a quarter of the whole backward). Each lane adds the same values in the same order as scalar sums
// in memory would, so the result is bitwise the same.
struct SlotSums {
  static constexpr int kPad = 48;  // floats readable past the last slot (NV <= 3 vectors from its start)
  const int32_t* vis_ids;
  const int64_t* vis_start;
  const int32_t* entry_pos;
  int64_t* cursor;
  int64_t K;
  const float* slots;
  int64_t pos_lo, pos_hi;
  int sstride;
  float *gm, *gc, *gf, *go;
  int D;

  template <int NV>
  void add(int64_t b, int64_t e) const {
    alignas(64) float buf[16 * NV];
    for (int64_t r = b; r < e; ++r) {
      if (r + 8 < e) {  // the outputs are indexed by Gaussian, i.e. at random in rank order: fetch ahead
        const int64_t m8 = vis_ids[r + 8];
        __builtin_prefetch(gm + 2 * m8, 1);
        __builtin_prefetch(gc + 3 * m8, 1);
        __builtin_prefetch(gf + m8 * D, 1);
        __builtin_prefetch(go + m8, 1);
      }
      int64_t k = cursor[r];
      const int64_t k_end = vis_start[r + 1];
      if (k >= k_end || entry_pos[k] >= pos_hi) continue;  // no slot in this group
      const int64_t n = vis_ids[r];
      float* m = gm + 2 * n;
      float* cn = gc + 3 * n;
      float* f = gf + n * D;
      std::fill(buf, buf + 16 * NV, 0.0f);
      buf[0] = m[0], buf[1] = m[1], buf[2] = cn[0], buf[3] = cn[1], buf[4] = cn[2], buf[5] = go[n];
      for (int d = 0; d < D; ++d) buf[6 + d] = f[d];
      vf16 acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = load<vf16>(buf + 16 * v);
      for (; k < k_end && entry_pos[k] < pos_hi; ++k) {
        // Slots are read at random: fetch ahead along entry_pos (contiguous across ranks).
        if (k + 16 < K) {
          const int64_t ahead = static_cast<int64_t>(entry_pos[k + 16]) - pos_lo;
          if (ahead >= 0 && ahead < pos_hi - pos_lo) __builtin_prefetch(slots + ahead * sstride);
        }
        const float* s = slots + (static_cast<int64_t>(entry_pos[k]) - pos_lo) * sstride;
        for (int v = 0; v < NV; ++v) acc[v] += load<vf16>(s + 16 * v);
      }
      cursor[r] = k;
      for (int v = 0; v < NV; ++v) store(buf + 16 * v, acc[v]);
      m[0] = buf[0], m[1] = buf[1], cn[0] = buf[2], cn[1] = buf[3], cn[2] = buf[4], go[n] = buf[5];
      for (int d = 0; d < D; ++d) f[d] = buf[6 + d];
    }
  }
};
}  // namespace

// Returns [render (C,H,W,D), alpha (C,H,W,1), last (C,H,W) int32, t_final (C,H,W), then per camera
// tile_offsets, isect, vis_ids, vis_start, entry_pos, packed] - everything the backward needs.
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
  // Every tile writes all its pixels (empty tiles the empty result), so no zero-fill is needed.
  at::Tensor render = at::empty({C, H, W, D}, at::kFloat);
  at::Tensor alpha = at::empty({C, H, W, 1}, at::kFloat);
  at::Tensor last = at::empty({C, H, W}, at::kInt);
  at::Tensor tfinal = at::empty({C, H, W}, at::kFloat);
  std::vector<at::Tensor> out = {render, alpha, last, tfinal};
  for (int64_t c = 0; c < C; ++c) {
    const CameraInputs in = camera_inputs(means2d, conics, features, opacities, depths, radii, c);
    Binning b = bin_camera(in, tiles_x, tiles_y);
    const int64_t V = b.vis_ids.size(0);
    const at::Tensor packed = pack_gaussians(in, b.vis_ids.data_ptr<int32_t>(), V, b.foot.get());
    const int64_t* offsets = b.tile_offsets.data_ptr<int64_t>();
    const int32_t* isect = b.isect.data_ptr<int32_t>();
    const int64_t pix = int64_t(H) * W;
    float* r_c = render.data_ptr<float>() + c * pix * D;
    float* a_c = alpha.data_ptr<float>() + c * pix;
    int32_t* l_c = last.data_ptr<int32_t>() + c * pix;
    float* t_c = tfinal.data_ptr<float>() + c * pix;
    const std::vector<int64_t> order = tile_order(offsets, n_tiles, true);
    dispatch_channels(D, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      for_each_tile<ForwardTile<DC>>(order, [&](ForwardTile<DC>& kernel, int64_t t) {
        const TileGeometry tg = tile_geometry(t, tiles_x, W, H);
        kernel.run(packed.data_ptr<float>(), D, isect + offsets[t], offsets[t + 1] - offsets[t], tg, W, r_c, a_c,
                   l_c, t_c);
      });
    });
    out.push_back(b.tile_offsets);
    out.push_back(b.isect);
    out.push_back(b.vis_ids);
    out.push_back(b.vis_start);
    out.push_back(b.entry_pos);
    out.push_back(packed);
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
  constexpr int kPerCamera = 6;  // composite_forward's per-camera state tensors
  TORCH_CHECK(static_cast<int64_t>(state.size()) == 2 + kPerCamera * C, "cpu rasterizer: bad saved state");
  TORCH_CHECK(g_render.is_contiguous() && g_render.scalar_type() == at::kFloat &&
                  g_render.sizes() == at::IntArrayRef({C, H, W, D}),
              "cpu rasterizer: grad of render must be a contiguous float32 (C,H,W,D) tensor");
  TORCH_CHECK(g_alpha.is_contiguous() && g_alpha.scalar_type() == at::kFloat && g_alpha.numel() == C * H * W,
              "cpu rasterizer: grad of alpha must be a contiguous float32 (C,H,W,1) tensor");
  const at::Tensor& last = state[0];
  const at::Tensor& tfinal = state[1];
  // Culled Gaussians get zero gradients; the visible ones are written by the reduction below.
  at::Tensor g_means2d = at::empty({C, N, 2}, at::kFloat);
  at::Tensor g_conics = at::empty({C, N, 3}, at::kFloat);
  at::Tensor g_features = at::empty({C, N, D}, at::kFloat);
  at::Tensor g_opacities = at::empty(opacities.sizes(), at::kFloat);
  for (at::Tensor* t : {&g_means2d, &g_conics, &g_features, &g_opacities}) parallel_zero(t->data_ptr<float>(), t->numel());
  const int sstride = 6 + D;
  // Each (tile, Gaussian) pair gets a gradient slot of 6 + D floats. On big scenes all of a camera's
  // slots would outweigh everything else the backward allocates, so tiles are processed in groups whose
  // slots fit kSlotBudget bytes; after each group every Gaussian adds its slots of the group, in tile
  // order, to its running sum. The sequence of additions is the same for any grouping or thread count
  // (each Gaussian adds its slots one by one, in tile order), so the result is too.
  // (CPU_RASTERIZER_SLOT_BUDGET, in bytes, overrides the 64 MiB budget: the tests use a tiny one.)
  const char* budget_env = std::getenv("CPU_RASTERIZER_SLOT_BUDGET");
  const int64_t slot_budget = budget_env ? std::max<int64_t>(1, std::atoll(budget_env)) : (int64_t(64) << 20);
  const int64_t group_entries = std::max<int64_t>(1, slot_budget / (4 * sstride));
  const int64_t pix = int64_t(H) * W;
  for (int64_t c = 0; c < C; ++c) {
    const at::Tensor* st = state.data() + 2 + kPerCamera * c;
    const int64_t* offsets = st[0].data_ptr<int64_t>();
    const int32_t* isect = st[1].data_ptr<int32_t>();
    const int32_t* vis_ids = st[2].data_ptr<int32_t>();
    const int64_t* vis_start = st[3].data_ptr<int64_t>();
    const int32_t* entry_pos = st[4].data_ptr<int32_t>();
    const int64_t V = st[2].size(0);
    const int64_t K = st[4].size(0);
    TORCH_CHECK(st[0].size(0) == n_tiles + 1, "cpu rasterizer: saved state does not match the image size");
    TORCH_CHECK(st[5].dim() == 2 && st[5].size(0) == V && st[5].size(1) == kHead + D && st[5].is_contiguous(),
                "cpu rasterizer: saved state does not match the inputs");
    if (V == 0) continue;
    const float* packed = st[5].data_ptr<float>();
    const float* gr_c = g_render.data_ptr<float>() + c * pix * D;
    const float* ga_c = g_alpha.data_ptr<float>() + c * pix;
    const int32_t* l_c = last.data_ptr<int32_t>() + c * pix;
    const float* t_c = tfinal.data_ptr<float>() + c * pix;
    // Tile groups: consecutive tiles, as many as fit the slot budget (at least one).
    std::vector<int64_t> groups = {0};
    int64_t max_group = 0;
    for (int64_t t = 1; t <= n_tiles; ++t)
      if (t == n_tiles || offsets[t + 1] - offsets[groups.back()] > group_entries) {
        max_group = std::max(max_group, offsets[t] - offsets[groups.back()]);
        groups.push_back(t);
      }
    // (SlotSums reads whole 16-float vectors from a slot's start: padding past the last slot, zeroed.)
    const size_t n_slot_floats = static_cast<size_t>(max_group) * sstride;
    const std::unique_ptr<float[]> slots = uninitialized<float>(n_slot_floats + SlotSums::kPad);
    std::fill(slots.get() + n_slot_floats, slots.get() + n_slot_floats + SlotSums::kPad, 0.0f);
    const std::unique_ptr<int64_t[]> cursor = uninitialized<int64_t>(V);
    std::copy(vis_start, vis_start + V, cursor.get());
    // The sums accumulate directly in the (zero-initialised) gradient outputs.
    float* gm = g_means2d.data_ptr<float>() + c * N * 2;
    float* gc = g_conics.data_ptr<float>() + c * N * 3;
    float* gf = g_features.data_ptr<float>() + c * N * D;
    float* go = g_opacities.data_ptr<float>() + (opacities.dim() == 2 ? c * N : 0);
    for (size_t gi = 0; gi + 1 < groups.size(); ++gi) {
      const int64_t t_lo = groups[gi], t_hi = groups[gi + 1];
      const int64_t pos_lo = offsets[t_lo], pos_hi = offsets[t_hi];
      if (pos_hi == pos_lo) continue;
      std::vector<int64_t> order = tile_order(offsets + t_lo, t_hi - t_lo, false);
      for (int64_t& t : order) t += t_lo;
      dispatch_channels(D, [&](auto dc) {
        constexpr int DC = decltype(dc)::value;
        for_each_tile<BackwardTile<DC>>(order, [&](BackwardTile<DC>& kernel, int64_t t) {
          const TileGeometry tg = tile_geometry(t, tiles_x, W, H);
          kernel.run(packed, D, isect + offsets[t], offsets[t + 1] - offsets[t], tg, W, gr_c, ga_c, l_c, t_c,
                     slots.get() + (offsets[t] - pos_lo) * sstride);
        });
      });
      // Each Gaussian's entries are in tile order, so those of this group are the next ones from its cursor.
      const SlotSums sums{vis_ids, vis_start, entry_pos, cursor.get(), K, slots.get(), pos_lo, pos_hi, sstride, gm, gc, gf, go, D};
      const int nv = (sstride + 15) / 16;
      parallel_range(V, 1024, [&](int64_t b, int64_t e) {
        if (nv == 1)
          sums.add<1>(b, e);
        else if (nv == 2)
          sums.add<2>(b, e);
        else
          sums.add<3>(b, e);
      });
    }
  }
  return {g_means2d, g_conics, g_features, g_opacities};
}

}  // namespace cpu_rasterizer
