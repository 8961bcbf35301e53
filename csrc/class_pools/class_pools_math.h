// Per-pixel math of class_pools, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mona {
namespace class_pools_math {

// A pixel of class c is hard when the probability of its own class is below strong_threshold:
// prob[c] < strong_threshold, with the probability (of any floating dtype) read as float and the
// threshold compared as the double it was given. The one definition for both kernels (their two
// copies once drifted apart).
template <typename prob_t>
MONA_HD bool is_hard_pixel(prob_t prob_of_own_class, double strong_threshold) {
  return static_cast<double>(static_cast<float>(prob_of_own_class)) < strong_threshold;
}

// Sort key of a pixel in the class pools: 2c for a hard pixel of class c, 2c+1 for an easy one,
// 2C for a pixel that takes no part (ignored label or invalid by mask).
MONA_HD int64_t pool_key(int64_t label, bool valid, bool hard, int64_t num_classes) {
  if (!valid || label < 0 || label >= num_classes) return 2 * num_classes;
  return 2 * label + (hard ? 0 : 1);
}

}  // namespace class_pools_math
}  // namespace mona
