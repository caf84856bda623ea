// Portable float/int vectors (GCC/Clang vector extensions) of 8 and 16 lanes, and the few operations
// the compositing kernels need.
//
// A 16x16 tile row is 16 pixels: one 16-lane vector, or two 8-lane halves. The kernels pick per
// Gaussian and row: a half when the Gaussian's footprint on that row lies in one half, the whole row
// otherwise. With -march=native the compiler maps vf16 to one zmm register on AVX-512 machines (two
// ymm on AVX2), vf8 to one ymm; the source stays the same. Intrinsics appear only where the generic
// form compiles poorly (mask tests) or for an explicit fused multiply-add.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace cpu_rasterizer {

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

template <typename V>
struct VecTraits;
template <>
struct VecTraits<vf16> {
  typedef vi16 I;
  static constexpr int lanes = 16;
};
template <>
struct VecTraits<vf8> {
  typedef vi8 I;
  static constexpr int lanes = 8;
};

template <typename V>
static inline V splat(float x) {
  return V{} + x;
}
template <typename I>
static inline I isplat(int32_t x) {
  return I{} + x;
}

// Unaligned-safe loads and stores (they compile to plain vector moves).
template <typename V, typename T>
static inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
static inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Lane-wise select: m holds all-ones (true) or zero (false) lanes, as vector comparisons produce.
template <typename V, typename I>
static inline V select(I m, V a, V b) {
  return m ? a : b;
}
template <typename V>
static inline V vmin(V a, V b) {
  return a < b ? a : b;
}
template <typename V>
static inline V vmax(V a, V b) {
  return a > b ? a : b;
}
template <typename I, typename V>
static inline I as_int(V a) {
  I r;
  std::memcpy(&r, &a, sizeof(r));
  return r;
}
template <typename V, typename I>
static inline V as_float(I a) {
  V r;
  std::memcpy(&r, &a, sizeof(r));
  return r;
}

// True when any lane of the mask is set.
static inline bool any(vi16 m) {
#if defined(__AVX512F__)
  const __m512i x = (__m512i)m;
  return _mm512_test_epi32_mask(x, x) != 0;
#else
  const vi8 lo = __builtin_shufflevector(m, m, 0, 1, 2, 3, 4, 5, 6, 7);
  const vi8 hi = __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15);
  const vi8 o = lo | hi;
  int32_t acc = 0;
  for (int i = 0; i < 8; ++i) acc |= o[i];
  return acc != 0;
#endif
}
static inline bool any(vi8 m) {
#if defined(__AVX__)
  const __m256i x = (__m256i)m;
  return !_mm256_testz_si256(x, x);
#else
  int32_t acc = 0;
  for (int i = 0; i < 8; ++i) acc |= m[i];
  return acc != 0;
#endif
}

// a * b + c with a single rounding where the target has FMA (used inside exp only, where it is
// both faster and more accurate; the compositing arithmetic that mirrors torch never fuses).
static inline vf16 fma(vf16 a, vf16 b, vf16 c) {
#if defined(__AVX512F__)
  return (vf16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  const vf8 lo = (vf8)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                                      (__m256)__builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7),
                                      (__m256)__builtin_shufflevector(c, c, 0, 1, 2, 3, 4, 5, 6, 7));
  const vf8 hi = (vf8)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15),
                                      (__m256)__builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15),
                                      (__m256)__builtin_shufflevector(c, c, 8, 9, 10, 11, 12, 13, 14, 15));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  return a * b + c;
#endif
}
static inline vf8 fma(vf8 a, vf8 b, vf8 c) {
#if defined(__FMA__)
  return (vf8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// (The masked AVX-512 forms with the input as pass-through: GCC 12's unmasked ones read an
// "undefined" register and warn spuriously once inlined.)
static inline vf16 vsqrt(vf16 x) {
#if defined(__AVX512F__)
  return (vf16)_mm512_mask_sqrt_ps((__m512)x, 0xFFFF, (__m512)x);
#else
  vf16 r;
  for (int i = 0; i < 16; ++i) r[i] = __builtin_sqrtf(x[i]);
  return r;
#endif
}

// Exact floor / ceil of every lane (IEEE rounding to an integer; NaN and infinities pass through).
static inline vf16 vfloor(vf16 x) {
#if defined(__AVX512F__)
  return (vf16)_mm512_mask_roundscale_ps((__m512)x, 0xFFFF, (__m512)x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
  vf16 r;
  for (int i = 0; i < 16; ++i) r[i] = __builtin_floorf(x[i]);
  return r;
#endif
}
static inline vf16 vceil(vf16 x) {
#if defined(__AVX512F__)
  return (vf16)_mm512_mask_roundscale_ps((__m512)x, 0xFFFF, (__m512)x, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
#else
  vf16 r;
  for (int i = 0; i < 16; ++i) r[i] = __builtin_ceilf(x[i]);
  return r;
#endif
}

// Bit i set where lane i of the mask is set.
static inline uint32_t bitmask(vi16 m) {
#if defined(__AVX512F__)
  const __m512i x = (__m512i)m;
  return _mm512_test_epi32_mask(x, x);
#else
  uint32_t b = 0;
  for (int i = 0; i < 16; ++i) b |= static_cast<uint32_t>(m[i] != 0) << i;
  return b;
#endif
}

// Sum of the lanes as a fixed pairwise tree, so results are deterministic for a given build.
static inline float reduce_add(vf8 v) {
  const vf4 s4 = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  const float a = s4[0] + s4[2], b = s4[1] + s4[3];
  return a + b;
}

// max(x, lo) as the hardware instruction (NaN lanes give lo); the generic select compiles to two ops.
static inline vf16 max_fast(vf16 x, float lo) {
#if defined(__AVX512F__)
  return (vf16)_mm512_max_ps((__m512)x, _mm512_set1_ps(lo));
#else
  return x > lo ? x : splat<vf16>(lo);
#endif
}
static inline vf8 max_fast(vf8 x, float lo) {
#if defined(__AVX__)
  return (vf8)_mm256_max_ps((__m256)x, _mm256_set1_ps(lo));
#else
  return x > lo ? x : splat<vf8>(lo);
#endif
}

// min(x, hi) as the hardware instruction (NaN lanes give hi).
static inline vf8 min_fast(vf8 x, float hi) {
#if defined(__AVX__)
  return (vf8)_mm256_min_ps((__m256)x, _mm256_set1_ps(hi));
#else
  return x < hi ? x : splat<vf8>(hi);
#endif
}

// exp(x) for x <= 0: within 2.4 ulp on [-30, 0] (1.3 ulp was possible, but the compositing loop is
// bound by the latency of this chain, so it is kept short); x below -87.3 gives a tiny positive number.
//
// The kernels need exp of a Gaussian's power only where it is <= 0, and discard every result below
// 1/255 (which needs power < -5.6 for opacities <= 1), so inputs above 0 need no care (their lanes are
// never used) and the range reduction can use a single ln2 constant (its error times n stays below an
// ulp for the powers that matter). Method: x = n ln2 + r, |r| <= ln2/2; exp(r) = 1 + r + r^2 q(r),
// q a degree-4 polynomial fitted (least squares, relative error) for this project, evaluated by
// Estrin's scheme; scaled by 2^n through the exponent bits. exp(0) is exactly 1 and results are <= 1.
// torch's float exp is a 1-ulp vector routine, so the two agree to a few ulps.
template <typename V>
static inline V vexp(V x) {
  typedef typename VecTraits<V>::I I;
  const float kLog2e = 1.44269504088896341f;
  const float kLn2 = 0.693147180559945f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  x = max_fast(x, -87.3f);
  const V t = fma(x, splat<V>(kLog2e), splat<V>(kRound));
  const V n = t - kRound;
  const I ni = as_int<I>(t) - as_int<I>(splat<V>(kRound));
  const V r = fma(n, splat<V>(-kLn2), x);
  const V r2 = r * r;
  const V q01 = fma(splat<V>(0.166665181517601f), r, splat<V>(0.49999988079071045f));
  const V q23 = fma(splat<V>(0.008368918672204018f), r, splat<V>(0.04166953265666962f));
  const V q = fma(fma(splat<V>(0.00137514085508883f), r2, q23), r2, q01);
  const V p = fma(r2, q, r + 1.0f);
  return p * as_float<V>((ni + 127) << 23);
}

}  // namespace cpu_rasterizer
