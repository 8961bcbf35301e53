#include "common/simd_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MONA_MULTIVERSION __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define MONA_MULTIVERSION
#endif

namespace mona {
namespace simd {

MONA_MULTIVERSION
float dot_and_square_f32(const float* row, const float* x, int64_t D, float* sq) {
  constexpr int U = 32;  // 4 independent 8-wide accumulators per sum hide the FMA latency
  float a[U] = {}, b[U] = {};
  int64_t d = 0;
  for (; d + U <= D; d += U) {
    for (int u = 0; u < U; ++u) {
      const float v = row[d + u];
      a[u] += v * x[d + u];
      b[u] += v * v;
    }
  }
  float dot = 0, s = 0;
  for (; d < D; ++d) {
    dot += row[d] * x[d];
    s += row[d] * row[d];
  }
  for (int u = 0; u < U; ++u) {
    dot += a[u];
    s += b[u];
  }
  *sq = s;
  return dot;
}

MONA_MULTIVERSION
float dot_f32(const float* row, const float* x, int64_t D) {
  constexpr int U = 32;
  float a[U] = {};
  int64_t d = 0;
  for (; d + U <= D; d += U) {
    for (int u = 0; u < U; ++u) a[u] += row[d + u] * x[d + u];
  }
  float dot = 0;
  for (; d < D; ++d) dot += row[d] * x[d];
  for (int u = 0; u < U; ++u) dot += a[u];
  return dot;
}

MONA_MULTIVERSION
void axpy_f32(float alpha, const float* row, float* y, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * row[d];
}

}  // namespace simd
}  // namespace mona
