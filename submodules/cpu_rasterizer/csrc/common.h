// Shared constants and small helpers of the CPU rasterizer (docs/rasterizer.md is the contract).
// No ATen here: the tile kernels that include this also build in a standalone benchmark.
#pragma once

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace cpu_rasterizer {

// The compositing thresholds, as float32 values. The torch reference compares float32 tensors with
// Python scalars, which torch casts to the tensor's dtype first, so these are the float32 roundings
// of the double constants (1e-4 in particular rounds up, and the difference is observable).
constexpr float kAlphaMin = static_cast<float>(1.0 / 255.0);
constexpr float kAlphaMax = static_cast<float>(0.99);
constexpr float kTMin = static_cast<float>(1e-4);
constexpr int kTile = 16;  // the only tile size this backend implements

// Sets flush-to-zero and denormals-are-zero for the current thread while alive. The kernels compute
// exp(power) for every lane of a row, and far from a Gaussian's centre its products underflow into
// denormals, which some CPUs process with large penalties. Values below 1.2e-38 only ever feed
// results that are then discarded (alpha < 1/255) or that are far below any tolerance, and the
// forward and the backward run under the same mode, so their decisions stay identical.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

struct Rect {
  int32_t x0, x1, y0, y1;
  int64_t area() const { return int64_t(x1 - x0) * int64_t(y1 - y0); }
};

// floor(v) clamped to [0, hi] as an int. NaN gives 0, which makes the rect empty, like torch's
// NaN-to-int conversion does (both ends get the same value).
inline int32_t clamp_floor(float v, int32_t hi) {
  const float f = std::floor(v);
  if (f >= static_cast<float>(hi)) return hi;
  if (f > 0.0f) return static_cast<int32_t>(f);
  return 0;
}

// The tile rectangle of docs/rasterizer.md, evaluated in float32 with the reference's exact
// operation order (projection.tile_bounds): a different rounding could move a Gaussian into or out
// of a tile and change pixels.
inline Rect tile_rect(float mx, float my, int32_t radius, int32_t tiles_x, int32_t tiles_y) {
  const float r = static_cast<float>(radius);
  const float ts = static_cast<float>(kTile);
  Rect t;
  t.x0 = clamp_floor((mx - r) / ts, tiles_x);
  t.x1 = clamp_floor((mx + r + (ts - 1.0f)) / ts, tiles_x);
  t.y0 = clamp_floor((my - r) / ts, tiles_y);
  t.y1 = clamp_floor((my + r + (ts - 1.0f)) / ts, tiles_y);
  if (t.x1 < t.x0) t.x1 = t.x0;
  if (t.y1 < t.y0) t.y1 = t.y0;
  return t;
}

}  // namespace cpu_rasterizer
