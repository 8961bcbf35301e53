// Cosine-similarity math shared by similarity_kl and knn_loss (CPU and CUDA).
//
// Cosines follow F.normalize: x_hat = x / max(|x|, eps), eps = 1e-12, so cos(x, y) = x.y * inv(x) * inv(y)
// with inv(x) = 1 / max(|x|, eps). Gradient of sum_j a_j cos(s, q_j) with respect to s:
//   inv(s) * ( sum_j a_j q_hat_j - proj * (sum_j a_j cos_j) * s_hat ),  proj = 1 if |s| >= eps else 0
// (below eps the normalisation is a constant scaling, whose gradient has no projection term).
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace mona {
namespace cosine_math {

constexpr double kEps = 1e-12;

template <typename acc_t>
MONA_HD acc_t root(acc_t x) {
#if MONA_DEVICE_CODE
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename acc_t>
MONA_HD acc_t inv_norm(acc_t squared_norm) {
#if MONA_DEVICE_CODE
  // 1 / max(sqrt(x), eps) == rsqrt(max(x, eps^2)); avoids the IEEE-division slow path (and its spills).
  const acc_t eps2 = acc_t(kEps * kEps);
  return rsqrt(squared_norm > eps2 ? squared_norm : eps2);
#else
  const acc_t n = root(squared_norm);
  return acc_t(1) / (n > acc_t(kEps) ? n : acc_t(kEps));
#endif
}

template <typename acc_t>
MONA_HD acc_t projection(acc_t squared_norm) {
  // |s| >= eps  <=>  |s|^2 >= eps^2 (no square root: its IEEE slow path costs spills on the device)
  return squared_norm >= acc_t(kEps * kEps) ? acc_t(1) : acc_t(0);
}

// One component of the gradient: weighted_qhat_sum[d] = sum_j a_j q_hat_j[d], acos = sum_j a_j cos_j.
template <typename acc_t>
MONA_HD acc_t grad_component(acc_t weighted_qhat_sum, acc_t acos, acc_t s_d, acc_t inv_s, acc_t proj) {
  return inv_s * (weighted_qhat_sum - proj * acos * s_d * inv_s);
}

}  // namespace cosine_math
}  // namespace mona
