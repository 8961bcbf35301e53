// Per-entry math of knn_loss, shared by the CPU and CUDA kernels (cosines: common/cosine_math.h).
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mona {
namespace knn_loss_math {

// Neighbour order: larger similarity first; equal similarities -> lower queue index first. A NaN
// similarity ranks above every number (torch.topk's order), so a NaN in the teacher or a queue
// row is selected and reaches the loss on every device instead of being silently skipped.
template <typename acc_t>
MONA_HD bool better(acc_t v, int64_t j, acc_t w, int64_t i) {
  const bool vn = v != v, wn = w != w;
  if (vn || wn) return vn && (!wn || j < i);
  return v > w || (v == w && j < i);
}

// Inserts (v, j) into the sorted list (vals, idxs) of length *count <= k if it belongs to the top k.
template <typename acc_t>
MONA_HD void insert_topk(acc_t* vals, int64_t* idxs, int* count, int k, acc_t v, int64_t j) {
  int pos = *count < k ? *count : k;
  if (pos == k && !better(v, j, vals[k - 1], idxs[k - 1])) return;
  while (pos > 0 && better(v, j, vals[pos - 1], idxs[pos - 1])) {
    if (pos < k) {
      vals[pos] = vals[pos - 1];
      idxs[pos] = idxs[pos - 1];
    }
    --pos;
  }
  vals[pos] = v;
  idxs[pos] = j;
  if (*count < k) ++*count;
}

// The loss weights every selected cosine by -1 / (B k); times the upstream gradient.
template <typename acc_t>
MONA_HD acc_t neighbour_weight(acc_t grad_loss, int64_t B, int64_t k) {
  return -grad_loss / (static_cast<acc_t>(B) * static_cast<acc_t>(k));
}

}  // namespace knn_loss_math
}  // namespace mona
