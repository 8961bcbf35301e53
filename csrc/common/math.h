// exp, log, sqrt and rsqrt of the per-element math that the CPU and CUDA kernels share (MONA_HD), in
// float and double, with one name on both sides: mona::math::exp(x) is the float function for a
// float and the double one for a double, on the host and on the device alike.
//
// Host: the C++ library (std::exp(float) is glibc's expf, ...). Device: the CUDA math library of
// the same precision (expf / exp, logf / log, sqrtf / sqrt: full precision, not the __expf-style
// intrinsics; the build does not use -use_fast_math). The two libraries differ by at most an ulp
// or two, so a CPU kernel and its CUDA kernel agree to rounding, not bitwise. The CPU emulation of
// the CUDA kernels (csrc/emu, MONA_DEVICE_CODE = 1) maps the CUDA names to the C++ library.
//
// rsqrt: the device has a hardware reciprocal square root (rsqrtf: ~1 ulp, no IEEE division);
// the host has none, so there it is 1 / sqrt(x) (correctly rounded twice).
//
// Call these qualified (math::exp): an unqualified exp(x) of a float in host code finds the C
// library's double exp(double) unless <cmath>'s std:: overloads happen to be visible, and the
// float is then silently computed in double.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace mona {
namespace math {

MONA_HD float exp(float x) {
#if MONA_DEVICE_CODE
  return ::expf(x);
#else
  return std::exp(x);
#endif
}
MONA_HD double exp(double x) {
#if MONA_DEVICE_CODE
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

MONA_HD float log(float x) {
#if MONA_DEVICE_CODE
  return ::logf(x);
#else
  return std::log(x);
#endif
}
MONA_HD double log(double x) {
#if MONA_DEVICE_CODE
  return ::log(x);
#else
  return std::log(x);
#endif
}

MONA_HD float sqrt(float x) {
#if MONA_DEVICE_CODE
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
MONA_HD double sqrt(double x) {
#if MONA_DEVICE_CODE
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

MONA_HD float rsqrt(float x) {
#if MONA_DEVICE_CODE
  return ::rsqrtf(x);
#else
  return 1.0f / std::sqrt(x);
#endif
}
MONA_HD double rsqrt(double x) {
#if MONA_DEVICE_CODE
  return ::rsqrt(x);
#else
  return 1.0 / std::sqrt(x);
#endif
}

// The functions above as a policy type, for templates that take their exp / log as a parameter
// (common/online_lse.h; pixel_kl passes its own vectorisable host versions).
struct Precise {
  template <typename T>
  MONA_HD static T exp(T x) {
    return math::exp(x);
  }
  template <typename T>
  MONA_HD static T log(T x) {
    return math::log(x);
  }
};

}  // namespace math
}  // namespace mona
