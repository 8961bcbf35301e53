// Host-side argument checks of contrast_infonce and contrast_infonce_backward, shared by the CPU
// and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

#include "common/tensor_utils.h"

namespace mona {
namespace contrast_infonce_checks {

inline void check_inputs(const char* op, const at::Tensor& features, const at::Tensor& key_features,
                         const std::optional<at::Tensor>& bank, const at::Tensor& prototypes,
                         const at::Tensor& query_index, const at::Tensor& negative_index,
                         const at::Tensor& class_weight, double temperature) {
  TORCH_CHECK_VALUE(features.dim() == 4 || features.dim() == 2, op,
                    ": features must be [B, D, H, W] or [N, D], got shape ", shape_str(features));
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()), op, ": features must be floating, got ",
                   features.scalar_type());
  // Query rows [Nq, D] may come with a key map of any size (the queries were gathered beforehand:
  // query_index then indexes the rows); otherwise queries and keys index one pixel set.
  const bool query_rows = features.dim() == 2 && (key_features.dim() == 4 || key_features.dim() == 2) &&
                          key_features.size(1) == features.size(1);
  TORCH_CHECK_VALUE(key_features.sizes() == features.sizes() || query_rows, op,
                    ": key_features must have the features' shape ", shape_str(features),
                    " (or, with query rows [Nq, D], any [B, D, H, W] / [N, D] with the same D), got ",
                    shape_str(key_features));
  TORCH_CHECK_TYPE(key_features.scalar_type() == features.scalar_type(), op, ": key_features dtype ",
                   key_features.scalar_type(), " differs from features dtype ", features.scalar_type());
  const int64_t D = features.size(1);
  TORCH_CHECK_VALUE(prototypes.dim() == 2 && prototypes.size(1) == D, op, ": prototypes must be [C, D] with D = ", D,
                    ", got ", shape_str(prototypes));
  const int64_t C = prototypes.size(0);
  TORCH_CHECK_VALUE(C > 0, op, ": prototypes must have at least one class");
  TORCH_CHECK_VALUE(query_index.dim() == 2 && query_index.size(0) == C && query_index.scalar_type() == at::kLong, op,
                    ": query_index must be int64 [C, Q] with C = ", C, ", got ", query_index.scalar_type(), " ",
                    shape_str(query_index));
  const int64_t Q = query_index.size(1);
  TORCH_CHECK_VALUE(Q > 0, op, ": num_queries must be positive, got 0 queries");
  TORCH_CHECK_VALUE(negative_index.dim() == 3 && negative_index.size(0) == C && negative_index.size(1) == Q &&
                        negative_index.scalar_type() == at::kLong,
                    op, ": negative_index must be int64 [C, Q, M] = [", C, ", ", Q, ", M], got ",
                    negative_index.scalar_type(), " ", shape_str(negative_index));
  TORCH_CHECK_VALUE(class_weight.dim() == 1 && class_weight.size(0) == C, op, ": class_weight must be [C] = [", C,
                    "], got ", shape_str(class_weight));
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), op,
                    ": temperature must be positive and finite, got ", temperature);
  if (bank.has_value()) {
    TORCH_CHECK_VALUE(bank->dim() == 3 && bank->size(0) == C && bank->size(2) == D, op, ": bank must be [C, K, D] = [",
                      C, ", K, ", D, "], got ", shape_str(*bank));
    TORCH_CHECK_TYPE(bank->scalar_type() == features.scalar_type(), op, ": bank dtype ", bank->scalar_type(),
                     " differs from features dtype ", features.scalar_type());
  }
  for (const at::Tensor* t : {&key_features, &prototypes, &query_index, &negative_index, &class_weight}) {
    TORCH_CHECK_VALUE(t->device() == features.device(), op, ": all inputs must be on ", features.device(),
                      ", got a tensor on ", t->device());
  }
  if (bank.has_value()) {
    TORCH_CHECK_VALUE(bank->device() == features.device(), op, ": bank is on ", bank->device(), " but features are on ",
                      features.device());
  }
}

// grad_rows must be [C, Q, D], from a forward called with compute_grad.
inline void check_backward_inputs(const char* op, const at::Tensor& features, const at::Tensor& query_index,
                                  const at::Tensor& class_weight, const at::Tensor& grad_rows) {
  TORCH_CHECK_VALUE(features.dim() == 4 || features.dim() == 2, op,
                    ": features must be [B, D, H, W] or [N, D], got shape ", shape_str(features));
  TORCH_CHECK_VALUE(query_index.dim() == 2 && query_index.scalar_type() == at::kLong, op,
                    ": query_index must be int64 [C, Q], got ", shape_str(query_index));
  const int64_t C = query_index.size(0), Q = query_index.size(1), D = features.size(1);
  TORCH_CHECK_VALUE(class_weight.dim() == 1 && class_weight.size(0) == C, op, ": class_weight must be [C] = [", C,
                    "], got ", shape_str(class_weight));
  TORCH_CHECK_VALUE(grad_rows.dim() == 3 && grad_rows.size(0) == C && grad_rows.size(1) == Q && grad_rows.size(2) == D,
                    op, ": grad_rows must be [C, Q, D] = [", C, ", ", Q, ", ", D,
                    "] (was the forward called with "
                    "compute_grad=False?), got ",
                    shape_str(grad_rows));
  for (const at::Tensor* t : {&query_index, &class_weight, &grad_rows}) {
    TORCH_CHECK_VALUE(t->device() == features.device(), op, ": all inputs must be on ", features.device(),
                      ", got a tensor on ", t->device());
  }
}

}  // namespace contrast_infonce_checks
}  // namespace mona
