// The per-element work of sample_negatives, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mona {
namespace sample_negatives_math {

// Encoding of a negative key index: [0, N) = pixel n of the key feature map,
// [N, N + C*K) = row (class v, slot s) -> N + v*K + s of the memory bank storage [C, K, D].
enum NegativeSource : int64_t { kBatch = 0, kBank = 1, kBoth = 2 };
enum QueryMode : int64_t { kHard = 0, kAll = 1, kBalanced = 2 };

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

struct PoolRefs {
  const int64_t *offsets, *counts, *hard_counts, *permutation, *bank_fill;
  const float* class_cdf;     // [C, C]
  const float* class_weight;  // [C]
  int64_t C, Q, M, N, K, source, mode;
};

// Query (c, q): a flat pixel index, or -1 when class c contributes nothing.
MONA_HD int64_t query_index(const PoolRefs& refs, int64_t c, int64_t q, float u) {
  if (!(refs.class_weight[c] > 0.f)) return -1;
  const int64_t slot = query_slot(refs.mode, q, refs.Q, refs.counts[c], refs.hard_counts[c], u);
  return slot < 0 ? -1 : refs.permutation[refs.offsets[c] + slot];
}

// Negative j of query (c, q), encoded as in the schema (pixel < N, bank row >= N), or -1.
MONA_HD int64_t negative_index(const PoolRefs& refs, int64_t c, float u_class, float u_key) {
  if (!(refs.class_weight[c] > 0.f)) return -1;
  const int64_t v = sample_class(refs.class_cdf + c * refs.C, refs.C, u_class);
  const int64_t in_batch = refs.source == kBank ? 0 : refs.counts[v];
  const int64_t in_bank = refs.source == kBatch ? 0 : refs.bank_fill[v];
  const int64_t slot = uniform_index(u_key, in_batch + in_bank);
  return slot < in_batch ? refs.permutation[refs.offsets[v] + slot] : refs.N + v * refs.K + (slot - in_batch);
}

}  // namespace sample_negatives_math
}  // namespace mona
