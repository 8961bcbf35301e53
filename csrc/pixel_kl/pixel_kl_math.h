// Per-element math of pixel_kl, shared by the CPU and CUDA kernels.
//
// Notation per pixel: la = log softmax(logits_a), lb = log softmax(logits_b), pa = exp(la),
// pb = exp(lb), kab = KL(pa || pb) = sum_c pa (la - lb), kba = KL(pb || pa).
// Gradients of w * (kab + sym * kba) with respect to the logits, per class k:
//   d kab / d za_k = pa_k (la_k - lb_k - kab)      d kab / d zb_k = pb_k - pa_k
//   d kba / d za_k = pa_k - pb_k                   d kba / d zb_k = pb_k (lb_k - la_k - kba)
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"
#include "common/math.h"

namespace mona {
namespace pixel_kl_math {

// exp / log for the softmax (exp arguments are <= 0 after the max shift; log arguments are the
// sums of exponentials, in [1, C]). On the host: branch-free Cody-Waite range reduction + short
// polynomials (relative error ~2.5e-7 for exp, ~1.2e-7 for log: 1-2 ulp of float32), written so
// that the compiler vectorises the pixel loops with plain SSE2 (the CPU kernel is compiled with
// no-trapping-math so that the selects if-convert): the host differs from math::exp / math::log
// because glibc's expf / logf are calls that stop the vectorisation of those loops. On the device
// math::exp / math::log (CUDA's expf / logf), and in double precision math::exp / math::log on
// both sides.
MONA_HD float kl_exp(float x) {
#if MONA_DEVICE_CODE
  return math::exp(x);
#else
  const float x0 = x;
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2) in the low mantissa bits
  const float nf = shifted - 12582912.0f;
  const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t n = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(12582912.0f);
  // Below -87 (a masked logit of -inf included) the result is 0, not exp(-87): a class of
  // probability 0 must count as 0 in kl_term and the gradients.
  return x0 < -87.0f ? 0.0f : p * std::bit_cast<float>((n + 127) << 23);
#endif
}
MONA_HD double kl_exp(double x) { return math::exp(x); }

// log of a positive normal float: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), odd series to s^9.
MONA_HD float kl_log(float x) {
#if MONA_DEVICE_CODE
  return math::log(x);
#else
  const int32_t bits = std::bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f800000);
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p + static_cast<float>(e) * 0.693147180559945309f;
#endif
}
MONA_HD double kl_log(double x) { return math::log(x); }

// kl_exp / kl_log as the math policy of common/online_lse.h.
struct KlMath {
  template <typename T>
  MONA_HD static T exp(T x) {
    return kl_exp(x);
  }
  template <typename T>
  MONA_HD static T log(T x) {
    return kl_log(x);
  }
};

// p * (lp - lq) with 0 * anything = 0 (a class with probability 0 contributes nothing).
template <typename acc_t>
MONA_HD acc_t kl_term(acc_t p, acc_t lp, acc_t lq) {
  const acc_t term = p * (lp - lq);
  return p > acc_t(0) ? term : acc_t(0);
}

// p * x with 0 * anything = 0 (log-probabilities of a class of probability 0 are -inf).
template <typename acc_t>
MONA_HD acc_t times_p(acc_t p, acc_t x) {
  const acc_t v = p * x;
  return p > acc_t(0) ? v : acc_t(0);
}

template <typename acc_t>
MONA_HD acc_t grad_a(acc_t pa, acc_t pb, acc_t la, acc_t lb, acc_t kab, bool symmetric, acc_t scale) {
  return scale * (times_p(pa, la - lb - kab) + (symmetric ? pa - pb : acc_t(0)));
}

template <typename acc_t>
MONA_HD acc_t grad_b(acc_t pa, acc_t pb, acc_t la, acc_t lb, acc_t kba, bool symmetric, acc_t scale) {
  return scale * ((pb - pa) + (symmetric ? times_p(pb, lb - la - kba) : acc_t(0)));
}

// loss = sum w kl / sum w, 0 for an empty mask.
template <typename acc_t>
MONA_HD acc_t safe_ratio(acc_t num, acc_t den) {
  return den > acc_t(0) ? num / den : acc_t(0);
}

}  // namespace pixel_kl_math
}  // namespace mona
