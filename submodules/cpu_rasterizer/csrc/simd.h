// Portable 16-lane float/int vectors (GCC/Clang vector extensions) and the few operations the
// compositing kernels need.
//
// Why vector extensions and not intrinsics: a 16x16 tile row is exactly 16 pixels, so one 16-lane
// vector holds a whole row. With -march=native on an AVX-512 machine each vf is one zmm register;
// on an AVX2 machine the compiler splits it into two ymm halves, on SSE into four; the source stays
// the same. Only the horizontal helpers (any / reduce) use intrinsics when AVX-512 is available,
// because the generic lane loop compiles to poor code there.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace cpu_rasterizer {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64), aligned(64)));
typedef int32_t vi __attribute__((vector_size(64), aligned(64)));

static inline vf vsplat(float x) { return vf{} + x; }
static inline vi isplat(int32_t x) { return vi{} + x; }

// Lane-wise select: m holds all-ones (true) or zero (false) lanes, as produced by vector comparisons.
static inline vf vselect(vi m, vf a, vf b) { return m ? a : b; }
static inline vi iselect(vi m, vi a, vi b) { return m ? a : b; }
static inline vf vmin(vf a, vf b) { return a < b ? a : b; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vi as_int(vf a) {
  vi r;
  std::memcpy(&r, &a, sizeof(r));
  return r;
}
static inline vf as_float(vi a) {
  vf r;
  std::memcpy(&r, &a, sizeof(r));
  return r;
}

// True when any lane of the mask is set.
static inline bool any(vi m) {
#if defined(__AVX512F__)
  __m512i x;
  std::memcpy(&x, &m, sizeof(x));
  return _mm512_test_epi32_mask(x, x) != 0;
#else
  int32_t acc = 0;
  for (int i = 0; i < kLanes; ++i) acc |= m[i];
  return acc != 0;
#endif
}

// Sum of the 16 lanes as a fixed pairwise tree (lane i with i+8, then i+4, i+2, i+1), so results are
// deterministic for a given build. Written with shuffles the compiler maps to the target's
// extract/add instructions (GCC 12's AVX-512 extract intrinsics warn spuriously).
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
static inline float reduce_add(vf v) {
  const vf8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  const float a = s4[0] + s4[2], b = s4[1] + s4[3];
  return a + b;
}

static inline int32_t reduce_max(vi v) {
  int32_t m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// exp(x) for float lanes, about 1 ulp over [-87.3, 88] (clamped to 88 above, 0 below).
//
// The kernels only need exp of a Gaussian's (non-positive) power, and a result below 1/255 is
// discarded, so underflow to 0 below -87.3 is harmless. Method: x = n ln2 + r with n an integer and
// |r| <= ln2/2 (two-constant Cody-Waite split so n*ln2 is exact), exp(r) = 1 + r + r^2 q(r) with q a
// degree-4 polynomial fitted (least squares, relative error) for this project, then scale by 2^n by
// building the exponent bits. exp(0) is exactly 1 and exp(x) <= 1 for x <= 0, as for a correctly
// rounded exp; torch's own float exp is a 1-ulp vector routine too, so both sides agree to rounding.
static inline vf vexp(vf x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;  // 9 significant bits: n * kLn2Hi is exact for |n| <= 2^14
  const float kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const vi under = x < -87.33654f;
  x = vmin(vmax(x, vsplat(-87.33654f)), vsplat(88.0f));  // 88: 2^n stays finite
  const vf t = x * kLog2e + kRound;
  const vf n = t - kRound;
  const vi ni = as_int(t) - as_int(vsplat(kRound));
  vf r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  vf q = vsplat(0.00137514085508883f);
  q = q * r + 0.008368918672204018f;
  q = q * r + 0.04166953265666962f;
  q = q * r + 0.166665181517601f;
  q = q * r + 0.49999988079071045f;
  const vf p = 1.0f + (r + (r * r) * q);
  const vf scale = as_float((ni + 127) << 23);
  return vselect(under, vsplat(0.0f), p * scale);
}

}  // namespace cpu_rasterizer
