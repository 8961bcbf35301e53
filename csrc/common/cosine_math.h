// Cosine-similarity math shared by the CPU and CUDA kernels, in the two conventions of PyTorch.
//
// F.normalize (similarity_kl, knn_loss): x_hat = x / max(|x|, eps), eps = 1e-12 (kNormalizeEps), so
// cos(x, y) = x.y * inv(x) * inv(y) with inv(x) = 1 / max(|x|, eps). Gradient of sum_j a_j cos(s, q_j)
// with respect to s:
//   inv(s) * ( sum_j a_j q_hat_j - proj * (sum_j a_j cos_j) * s_hat ),  proj = 1 if |s| >= eps else 0
// (below eps the normalisation is a constant scaling, whose gradient has no projection term).
//
// F.cosine_similarity (contrast_infonce; sample_negatives' class graph, with ATen ops):
// cos(x, y) = x.y / (max(|x|, eps) * max(|y|, eps)), eps = 1e-8 (kCosineSimilarityEps), safe_norm().
#pragma once

#include "common/host_device.h"
#include "common/math.h"

namespace mona {
namespace cosine_math {

constexpr double kNormalizeEps = 1e-12;
constexpr double kCosineSimilarityEps = 1e-8;

// max(|x|, eps) of cosine_similarity, from |x|^2.
template <typename acc_t>
MONA_HD acc_t safe_norm(acc_t squared_norm) {
  const acc_t n = math::sqrt(squared_norm);
  return n > acc_t(kCosineSimilarityEps) ? n : acc_t(kCosineSimilarityEps);
}

// 1 / max(|x|, eps) of F.normalize, from |x|^2. The device computes it as rsqrt(max(x, eps^2)) (the
// same value up to rounding): the hardware rsqrt avoids the IEEE division's slow path and the
// register spills it costs in the kernels' inner loops. The host has no such instruction and
// divides (1 / max(sqrt(x), eps), two correctly rounded operations).
template <typename acc_t>
MONA_HD acc_t inv_norm(acc_t squared_norm) {
#if MONA_DEVICE_CODE
  const acc_t eps2 = acc_t(kNormalizeEps * kNormalizeEps);
  return math::rsqrt(squared_norm > eps2 ? squared_norm : eps2);
#else
  const acc_t n = math::sqrt(squared_norm);
  return acc_t(1) / (n > acc_t(kNormalizeEps) ? n : acc_t(kNormalizeEps));
#endif
}

template <typename acc_t>
MONA_HD acc_t projection(acc_t squared_norm) {
  // |s| >= eps  <=>  |s|^2 >= eps^2 (no square root: its IEEE slow path costs spills on the device)
  return squared_norm >= acc_t(kNormalizeEps * kNormalizeEps) ? acc_t(1) : acc_t(0);
}

// One component of the gradient: weighted_qhat_sum[d] = sum_j a_j q_hat_j[d], acos = sum_j a_j cos_j.
template <typename acc_t>
MONA_HD acc_t grad_component(acc_t weighted_qhat_sum, acc_t acos, acc_t s_d, acc_t inv_s, acc_t proj) {
  return inv_s * (weighted_qhat_sum - proj * acos * s_d * inv_s);
}

}  // namespace cosine_math
}  // namespace mona
