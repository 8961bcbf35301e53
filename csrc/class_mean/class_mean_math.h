// Per-element math of class_mean, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mona {
namespace class_mean_math {

// A label takes part when it is a class index; ignore_index (and, defensively, anything out of
// range, which the kernels report as an error) does not.
template <typename index_t>
MONA_HD bool is_valid(index_t label, int64_t num_classes) {
  return label >= 0 && static_cast<int64_t>(label) < num_classes;
}

template <typename index_t>
MONA_HD bool is_bad(index_t label, int64_t num_classes, int64_t ignore_index) {
  return !is_valid(label, num_classes) && static_cast<int64_t>(label) != ignore_index;
}

// Mean of a class from its weighted sum and total weight; an absent (zero-weight) class -> 0.
template <typename acc_t>
MONA_HD acc_t finalize(acc_t sum, acc_t count) {
  return count > acc_t(0) ? sum / count : acc_t(0);
}

template <typename acc_t>
MONA_HD acc_t inverse_count(acc_t count) {
  return count > acc_t(0) ? acc_t(1) / count : acc_t(0);
}

// d loss / d features[n, d] = w_n * grad_means[c, d] / count_c.
template <typename acc_t>
MONA_HD acc_t grad_feature(acc_t w, acc_t grad_mean, acc_t inv_count) {
  return w * grad_mean * inv_count;
}

// One channel's term of d loss / d w_n = sum_d grad_means[c, d] * (f[n, d] - means[c, d]) / count_c
// (plus grad_counts[c], added once per pixel).
template <typename acc_t>
MONA_HD acc_t grad_weight_term(acc_t grad_mean, acc_t feature, acc_t mean, acc_t inv_count) {
  return grad_mean * (feature - mean) * inv_count;
}

}  // namespace class_mean_math
}  // namespace mona
