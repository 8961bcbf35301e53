// Host-side checks and shared setup of contrast_infonce (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mona {

struct InfonceArgs {
  at::Tensor features, key_features, bank, prototypes, query_index, negative_index, class_weight;
  int64_t C, Q, M, D, N, K;
  double temperature;
};

// Validates and normalises (contiguity of small tensors, mergeable views of the maps).
InfonceArgs prepare_infonce(const char* op, const at::Tensor& features, const at::Tensor& key_features,
                            const std::optional<at::Tensor>& bank, const at::Tensor& prototypes,
                            const at::Tensor& query_index, const at::Tensor& negative_index,
                            const at::Tensor& class_weight, double temperature);

// Checks of the backward's arguments (grad_rows must be [C, Q, D] from a compute_grad forward).
void check_backward_args(const char* op, const at::Tensor& features, const at::Tensor& query_index,
                         const at::Tensor& class_weight, const at::Tensor& grad_rows);

// loss = sum_c class_weight[c] / Q * sum_q row_loss[c, q] (device ops, no sync).
at::Tensor reduce_infonce_loss(const at::Tensor& row_loss, const at::Tensor& class_weight, int64_t Q);

}  // namespace mona
