// Hot CPU loops, compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and picked at the first
// call by the CPU's feature bits (MONA_MULTIVERSION below): the wheel runs anywhere but uses the
// vector units a machine has. The row helpers here serve the gather kernels (float32 contiguous
// rows; other dtypes use the generic loop); pixel_kl's tile loop uses the same macro.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#define MONA_X86_DISPATCH 1
#define MONA_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define MONA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MONA_INLINE __attribute__((always_inline)) inline
#else
#define MONA_X86_DISPATCH 0
#define MONA_INLINE inline
#endif

namespace mona {
namespace simd {

// The vector ISA the CPU kernels use on this machine, detected once: AVX-512 (F/VL/BW/DQ), AVX2 +
// FMA, or baseline x86-64 (SSE2). MONA_CPU_ISA=baseline|avx2|avx512 selects a lower one (tests
// compare the paths); asking for one the CPU lacks is an error.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
Isa cpu_isa();
const char* isa_name(Isa isa);

}  // namespace simd
}  // namespace mona

// Defines `ret name params` that runs `body args` compiled for AVX-512, AVX2+FMA or baseline
// x86-64, picked by cpu_isa(). `body` is a MONA_INLINE function (or template): its loops, and the
// MONA_HD helpers it calls (force-inlined), are vectorised for each target. The dispatch is by
// feature bits at the first call; GCC's target_clones resolver picks by CPU model and ran the
// baseline clone on AMD EPYC (Zen), so it is not used.
#if MONA_X86_DISPATCH
#define MONA_MULTIVERSION(ret, name, params, args, body)                   \
  MONA_TARGET_AVX512 static ret name##_avx512 params { return body args; } \
  MONA_TARGET_AVX2 static ret name##_avx2 params { return body args; }     \
  static ret name##_baseline params { return body args; }                  \
  ret name params {                                                        \
    switch (::mona::simd::cpu_isa()) {                                     \
      case ::mona::simd::Isa::kAvx512: return name##_avx512 args;          \
      case ::mona::simd::Isa::kAvx2: return name##_avx2 args;              \
      default: return name##_baseline args;                                \
    }                                                                      \
  }
#else
#define MONA_MULTIVERSION(ret, name, params, args, body) \
  ret name params { return body args; }
#endif

namespace mona {
namespace simd {

// dot = sum row[d] * x[d]; *sq = sum row[d]^2, for contiguous float rows of length D.
float dot_and_square_f32(const float* row, const float* x, int64_t D, float* sq);
// sum row[d] * x[d].
float dot_f32(const float* row, const float* x, int64_t D);
// y[d] += alpha * row[d].
void axpy_f32(float alpha, const float* row, float* y, int64_t D);

// sum a[c] * b[c] over D values: one fixed-order loop for every pair of rows (float32: the vector
// dot_f32; other types: a plain loop), so identical rows give identical results wherever they lie.
template <typename T>
inline T dot(const T* a, const T* b, int64_t D) {
  if constexpr (std::is_same_v<T, float>) {
    return dot_f32(a, b, D);
  } else {
    T s = 0;
    for (int64_t c = 0; c < D; ++c) s += a[c] * b[c];
    return s;
  }
}

}  // namespace simd
}  // namespace mona
