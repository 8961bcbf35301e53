// Per-query math of the fused InfoNCE, shared by CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common/contrast_math.h"

namespace mona {
namespace infonce {

// Where a key's D-vector lies: a pixel of the key map or a row of the bank [C*K, D].
template <typename scalar_t>
struct KeySource {
  const scalar_t* map;  // key map data
  int64_t B, P, stride_b, stride_d, stride_p;
  const scalar_t* bank;  // [C*K, D] contiguous, or nullptr
  int64_t N, D;

  MONA_HD const scalar_t* row(int64_t index, int64_t& stride) const {
    if (index < N) {
      const int64_t b = index / P;
      stride = stride_d;
      return map + b * stride_b + (index - b * P) * stride_p;
    }
    stride = 1;
    return bank + (index - N) * D;
  }
};

// Gradient of one query's loss w.r.t. its feature vector x from the online-softmax sums
//   s = sum_j e_j, acc = sum_j e_j k_j/|k_j|, wcos = sum_j e_j cos_j   (e_j = exp(l_j - m)),
// with j = 0 the positive key (k0 = k_0/|k_0|, cos0 = its cosine):
//   d loss / d x = scale / (t |x|) * [ (acc/s - k0) - (wcos/s - cos0) x/|x| ].
template <typename acc_t>
MONA_HD acc_t query_grad(acc_t scale_over_t_xn, acc_t acc_d, acc_t s, acc_t k0_d, acc_t wcos, acc_t cos0, acc_t x_d,
                         acc_t xn) {
  return scale_over_t_xn * ((acc_d / s - k0_d) - (wcos / s - cos0) * x_d / xn);
}

// Online softmax step for a new logit l: returns the factor by which the running sums must be
// scaled before adding this key with weight `w` (both set through the references).
template <typename acc_t>
MONA_HD void online_step(acc_t& m, acc_t l, acc_t& rescale, acc_t& w) {
  if (l > m) {
    rescale = exp(m - l);
    w = acc_t(1);
    m = l;
  } else {
    rescale = acc_t(1);
    w = exp(l - m);
  }
}

}  // namespace infonce
}  // namespace mona
