// Per-element math of the anatomical contrastive loss (class pools, negative sampler, fused
// InfoNCE), shared by the CPU and CUDA kernels so that the CPU tests exercise it.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace mona {
namespace contrast_math {

// Encoding of a negative key index: [0, N) = pixel n of the key feature map,
// [N, N + C*K) = row (class v, slot s) -> N + v*K + s of the memory bank storage [C, K, D].
enum NegativeSource : int64_t { kBatch = 0, kBank = 1, kBoth = 2 };
enum QueryMode : int64_t { kHard = 0, kAll = 1, kBalanced = 2 };

// cosine_similarity's convention: x.y / (max(|x|, eps) * max(|y|, eps)).
constexpr double kCosEps = 1e-8;

template <typename acc_t>
MONA_HD acc_t safe_norm(acc_t squared_norm) {
  const acc_t n = sqrt(squared_norm);
  return n > acc_t(kCosEps) ? n : acc_t(kCosEps);
}

// Sort key of a pixel in the class pools: 2c for a hard pixel of class c, 2c+1 for an easy one,
// 2C for a pixel that takes no part (ignored label or invalid by mask). Hard: prob < threshold.
MONA_HD int64_t pool_key(int64_t label, bool valid, bool hard, int64_t num_classes) {
  if (!valid || label < 0 || label >= num_classes) return 2 * num_classes;
  return 2 * label + (hard ? 0 : 1);
}

// Uniform integer in [0, n) from u in [0, 1); n must be > 0.
MONA_HD int64_t uniform_index(float u, int64_t n) {
  int64_t i = static_cast<int64_t>(static_cast<double>(u) * static_cast<double>(n));
  return i < n ? i : n - 1;
}

// Inverse CDF over a row of C cumulative probabilities (last entry = total mass > 0).
MONA_HD int64_t sample_class(const float* cdf_row, int64_t num_classes, float u) {
  const float target = u * cdf_row[num_classes - 1];
  int64_t v = 0;
  while (v < num_classes - 1 && !(cdf_row[v] > target)) ++v;
  // Never return a class of zero probability (guards rounding at the top of the CDF).
  while (v > 0 && cdf_row[v] == cdf_row[v - 1]) --v;
  return v;
}

// Position of query q (of Q) of a class inside its pool segment [hard pixels | easy pixels].
// Returns -1 when the class supplies no query in this mode.
MONA_HD int64_t query_slot(int64_t mode, int64_t q, int64_t num_queries, int64_t count, int64_t hard_count, float u) {
  const int64_t easy_count = count - hard_count;
  if (mode == kHard) return hard_count > 0 ? uniform_index(u, hard_count) : -1;
  if (mode == kAll) return count > 0 ? uniform_index(u, count) : -1;
  // balanced: the first ceil(Q/2) queries hard, the rest easy; all from one side if the other is empty
  if (count <= 0) return -1;
  const bool want_hard = q < (num_queries + 1) / 2;
  if ((want_hard && hard_count > 0) || easy_count == 0) return uniform_index(u, hard_count);
  return hard_count + uniform_index(u, easy_count);
}

// Online log-sum-exp: (m, s) represents m + log(s).
template <typename acc_t>
MONA_HD void lse_update(acc_t& m, acc_t& s, acc_t x) {
  if (x > m) {
    s = s * exp(m - x) + acc_t(1);
    m = x;
  } else {
    s += exp(x - m);
  }
}

}  // namespace contrast_math
}  // namespace mona
