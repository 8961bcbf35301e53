// The per-element work of sample_negatives, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common/contrast_math.h"

namespace mona {
namespace sampler {

struct PoolRefs {
  const int64_t *offsets, *counts, *hard_counts, *permutation, *bank_fill;
  const float* class_cdf;     // [C, C]
  const float* class_weight;  // [C]
  int64_t C, Q, M, N, K, source, mode;
};

// Query (c, q): a flat pixel index, or -1 when class c contributes nothing.
MONA_HD int64_t query_index(const PoolRefs& r, int64_t c, int64_t q, float u) {
  if (!(r.class_weight[c] > 0.f)) return -1;
  const int64_t slot = contrast_math::query_slot(r.mode, q, r.Q, r.counts[c], r.hard_counts[c], u);
  return slot < 0 ? -1 : r.permutation[r.offsets[c] + slot];
}

// Negative j of query (c, q), encoded as in the schema (pixel < N, bank row >= N), or -1.
MONA_HD int64_t negative_index(const PoolRefs& r, int64_t c, float u_class, float u_key) {
  namespace cm = contrast_math;
  if (!(r.class_weight[c] > 0.f)) return -1;
  const int64_t v = cm::sample_class(r.class_cdf + c * r.C, r.C, u_class);
  const int64_t in_batch = r.source == cm::kBank ? 0 : r.counts[v];
  const int64_t in_bank = r.source == cm::kBatch ? 0 : r.bank_fill[v];
  const int64_t slot = cm::uniform_index(u_key, in_batch + in_bank);
  return slot < in_batch ? r.permutation[r.offsets[v] + slot] : r.N + v * r.K + (slot - in_batch);
}

}  // namespace sampler
}  // namespace mona
