#include "common/simd_cpu.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace mona {
namespace simd {

namespace {

MONA_INLINE float dot_and_square_body(const float* row, const float* x, int64_t D, float* sq) {
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

MONA_INLINE float dot_body(const float* row, const float* x, int64_t D) {
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

MONA_INLINE void axpy_body(float alpha, const float* row, float* y, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * row[d];
}

}  // namespace

MONA_MULTIVERSION(float, dot_and_square_f32, (const float* row, const float* x, int64_t D, float* sq), (row, x, D, sq),
                  dot_and_square_body)
MONA_MULTIVERSION(float, dot_f32, (const float* row, const float* x, int64_t D), (row, x, D), dot_body)
MONA_MULTIVERSION(void, axpy_f32, (float alpha, const float* row, float* y, int64_t D), (alpha, row, y, D), axpy_body)

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

namespace {

Isa detect_isa() {
#if MONA_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa select_isa() {
  const Isa best = detect_isa();
  const char* want = std::getenv("MONA_CPU_ISA");
  if (want == nullptr || *want == '\0') return best;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (std::strcmp(want, isa_name(isa)) == 0) {
      TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(best), "MONA_CPU_ISA=", want,
                        ": this CPU supports at most ", isa_name(best));
      return isa;
    }
  }
  TORCH_CHECK_VALUE(false, "MONA_CPU_ISA=", want, ": expected baseline, avx2 or avx512");
  return best;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = select_isa();
  return isa;
}

}  // namespace simd
}  // namespace mona
