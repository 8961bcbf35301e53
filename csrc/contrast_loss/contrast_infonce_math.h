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

// d loss_q / d l_j = softmax_j - [j == 0] from the saved logsumexp.
template <typename acc_t>
MONA_HD acc_t logit_grad(acc_t logit, acc_t lse, bool positive) {
  return exp(logit - lse) - (positive ? acc_t(1) : acc_t(0));
}

}  // namespace infonce
}  // namespace mona
