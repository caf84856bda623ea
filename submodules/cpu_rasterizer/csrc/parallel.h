// Threading helpers: OpenMP (torch's own GNU OpenMP runtime) with torch's thread count.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

namespace cpu_rasterizer {

// Threads to use: torch's setting, so torch.set_num_threads (and DDP's one thread per process) governs us.
inline int num_threads() { return std::max(1, at::get_num_threads()); }

// Splits [0, n) into `parts` contiguous chunks; chunk k is [chunk_begin(k), chunk_begin(k+1)).
inline int64_t chunk_begin(int64_t n, int parts, int k) { return n * k / parts; }

// Runs f(begin, end) over [0, n) in parallel, in chunks of at least `grain` items (statically split).
template <typename F>
inline void parallel_range(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, grain))));
  if (nt <= 1) {
    f(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int k = omp_get_thread_num();
    const int parts = omp_get_num_threads();
    const int64_t b = chunk_begin(n, parts, k), e = chunk_begin(n, parts, k + 1);
    if (b < e) f(b, e);
  }
}

// An uninitialised array: every element is written before it is read. (std::vector value-initialises,
// i.e. zero-fills, which here would be a wasted pass over tens of MB, page faults included.)
template <typename T>
inline std::unique_ptr<T[]> uninitialized(size_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

// Zero-fills n floats in parallel: a fresh output's first touch (and its page faults) on all threads.
inline void parallel_zero(float* p, int64_t n) {
  parallel_range(n, int64_t(1) << 20, [&](int64_t b, int64_t e) { std::memset(p + b, 0, sizeof(float) * (e - b)); });
}

}  // namespace cpu_rasterizer
