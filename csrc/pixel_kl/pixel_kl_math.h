// Per-element math of pixel_kl, shared by the CPU and CUDA kernels.
//
// Notation per pixel: la = log softmax(logits_a), lb = log softmax(logits_b), pa = exp(la),
// pb = exp(lb), kab = KL(pa || pb) = sum_c pa (la - lb), kba = KL(pb || pa).
// Gradients of w * (kab + sym * kba) with respect to the logits, per class k:
//   d kab / d za_k = pa_k (la_k - lb_k - kab)      d kab / d zb_k = pb_k - pa_k
//   d kba / d za_k = pa_k - pb_k                   d kba / d zb_k = pb_k (lb_k - la_k - kba)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace mona {
namespace pixel_kl_math {

// exp for the softmax (arguments <= 0 after the max shift). On the host a branch-free
// Cody-Waite range reduction + degree-6 Taylor polynomial (relative error ~2e-7, i.e. ~1-2 ulp of
// float32), written so that the compiler vectorises the pixel loops with plain SSE2; on the
// device the CUDA expf; in double precision std::exp.
MONA_HD float kl_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f;
  const float nf = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
  const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}
MONA_HD double kl_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// p * (lp - lq) with 0 * anything = 0 (a class with probability 0 contributes nothing).
template <typename acc_t>
MONA_HD acc_t kl_term(acc_t p, acc_t lp, acc_t lq) {
  return p > acc_t(0) ? p * (lp - lq) : acc_t(0);
}

template <typename acc_t>
MONA_HD acc_t grad_a(acc_t pa, acc_t pb, acc_t la, acc_t lb, acc_t kab, bool symmetric, acc_t scale) {
  return scale * (pa * (la - lb - kab) + (symmetric ? pa - pb : acc_t(0)));
}

template <typename acc_t>
MONA_HD acc_t grad_b(acc_t pa, acc_t pb, acc_t la, acc_t lb, acc_t kba, bool symmetric, acc_t scale) {
  return scale * ((pb - pa) + (symmetric ? pb * (lb - la - kba) : acc_t(0)));
}

// loss = sum w kl / sum w, 0 for an empty mask.
template <typename acc_t>
MONA_HD acc_t safe_ratio(acc_t num, acc_t den) {
  return den > acc_t(0) ? num / den : acc_t(0);
}

}  // namespace pixel_kl_math
}  // namespace mona
