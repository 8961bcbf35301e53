// Host-side argument checks of class_mean and class_mean_backward, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/tensor_utils.h"

namespace mona {
namespace class_mean_checks {

// features [B, D, H, W] | [N, D], labels [B, H, W] | [N], optional labels-shaped weight.
inline void check_inputs(const char* op, const at::Tensor& features, const at::Tensor& labels,
                         const std::optional<at::Tensor>& weight, int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes > 0, op, ": num_classes must be positive, got ", num_classes);
  TORCH_CHECK_VALUE(features.dim() == 4 || features.dim() == 2, op,
                    ": features must be [B, D, H, W] or [N, D], got shape ", shape_str(features));
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()), op,
                   ": features must be float32/float64/float16/bfloat16, got ", features.scalar_type());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, op,
                   ": labels must be int64 or int32, got ", labels.scalar_type());
  const bool is_map = features.dim() == 4;
  if (is_map) {
    TORCH_CHECK_VALUE(labels.dim() == 3 && labels.size(0) == features.size(0) && labels.size(1) == features.size(2) &&
                          labels.size(2) == features.size(3),
                      op, ": labels must be [B, H, W] = [", features.size(0), ", ", features.size(2), ", ",
                      features.size(3), "] to match features ", shape_str(features), ", got ", shape_str(labels));
  } else {
    TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == features.size(0), op, ": labels must be [N] = [",
                      features.size(0), "] to match features ", shape_str(features), ", got ", shape_str(labels));
  }
  TORCH_CHECK_VALUE(labels.device() == features.device(), op, ": labels are on ", labels.device(),
                    " but features are on ", features.device());
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK_VALUE(w.sizes() == labels.sizes(), op, ": weight must have the labels' shape ", shape_str(labels),
                      ", got ", shape_str(w));
    TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op,
                     ": weight must be a floating tensor (a 0/1 mask or soft confidence), got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == features.device(), op, ": weight is on ", w.device(), " but features are on ",
                      features.device());
  }
}

inline void check_backward_inputs(const at::Tensor& features, const at::Tensor& labels,
                                  const std::optional<at::Tensor>& weight, int64_t num_classes,
                                  bool weight_requires_grad) {
  check_inputs("class_mean_backward", features, labels, weight, num_classes);
  TORCH_CHECK_VALUE(!weight_requires_grad || weight.has_value(),
                    "class_mean_backward: weight_requires_grad=True needs a weight");
}

}  // namespace class_mean_checks
}  // namespace mona
