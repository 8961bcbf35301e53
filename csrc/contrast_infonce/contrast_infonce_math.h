// Per-query math of the fused InfoNCE, shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"
#include "common/math.h"
#include "common/online_lse.h"

namespace mona {
namespace contrast_infonce_math {

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

// The exp of the online softmax below. On the device (and in its CPU emulation): math::exp. In the
// CPU kernel the exp of a float logit is evaluated in double and rounded to float: that is what
// this kernel has always computed (its former unqualified exp(float) found the C library's
// exp(double)), kept so that its results stay bitwise the same; it is also the more accurate of
// the two (correctly rounded in practice).
struct StepMath {
  template <typename T>
  MONA_HD static T exp(T x) {
#if MONA_DEVICE_CODE
    return math::exp(x);
#else
    return static_cast<T>(std::exp(static_cast<double>(x)));
#endif
  }
};

// Online softmax step for a new logit l (common/online_lse.h): the factor by which the running
// sums must be scaled before adding this key with weight `w` (both set through the references).
template <typename acc_t>
MONA_HD void online_step(acc_t& m, acc_t l, acc_t& rescale, acc_t& w) {
  online_lse::step<StepMath>(m, l, rescale, w);
}

}  // namespace contrast_infonce_math
}  // namespace mona
