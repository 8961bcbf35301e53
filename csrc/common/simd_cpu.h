// Hot CPU loops of the gather kernels, compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and picked at
// load time by the CPU (GCC/Clang function multi-versioning): the wheel runs anywhere but uses
// the vector units a machine has. Float32 contiguous rows only; other dtypes use the generic loop.
#pragma once

#include <cstdint>

namespace mona {
namespace simd {

// dot = sum row[d] * x[d]; *sq = sum row[d]^2, for contiguous float rows of length D.
float dot_and_square_f32(const float* row, const float* x, int64_t D, float* sq);
// sum row[d] * x[d].
float dot_f32(const float* row, const float* x, int64_t D);
// y[d] += alpha * row[d].
void axpy_f32(float alpha, const float* row, float* y, int64_t D);

// Asks the CPU to start loading a contiguous row (a key gathered a few iterations later): the
// random gathers are latency-bound, and the hardware prefetcher cannot guess the next row.
inline void prefetch_row(const void* p, int64_t bytes) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace simd
}  // namespace mona
