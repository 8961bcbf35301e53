// Shared host-side setup of contrast_infonce (CPU and CUDA): the checked, normalised arguments
// (checks: contrast_infonce_checks.h) and the loss reduction.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/tensor_utils.h"
#include "contrast_infonce/contrast_infonce_math.h"

namespace mona {

struct InfonceArgs {
  at::Tensor features, key_features, bank, prototypes, query_index, negative_index, class_weight;
  int64_t C, Q, M, D, N, K;
  double temperature;
};

// Validates (contrast_infonce_checks::check_inputs) and normalises (contiguity of small tensors,
// mergeable views of the maps).
InfonceArgs prepare_infonce(const char* op, const at::Tensor& features, const at::Tensor& key_features,
                            const std::optional<at::Tensor>& bank, const at::Tensor& prototypes,
                            const at::Tensor& query_index, const at::Tensor& negative_index,
                            const at::Tensor& class_weight, double temperature);

// Where the kernels read the keys: the key map and the bank.
template <typename scalar_t>
contrast_infonce_math::KeySource<scalar_t> key_source(const InfonceArgs& args) {
  const auto v = make_pixel_view<const scalar_t>(args.key_features);
  return {v.data,
          v.B,
          v.P,
          v.stride_b,
          v.stride_d,
          v.stride_p,
          args.bank.defined() ? args.bank.data_ptr<scalar_t>() : nullptr,
          args.N,
          args.D};
}

// loss = sum_c class_weight[c] / Q * sum_q row_loss[c, q] (device ops, no sync).
at::Tensor reduce_infonce_loss(const at::Tensor& row_loss, const at::Tensor& class_weight, int64_t Q);

}  // namespace mona
