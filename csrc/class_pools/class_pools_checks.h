// Host-side argument checks of class_pools, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/tensor_utils.h"

namespace mona {
namespace class_pools_checks {

inline void check_inputs(const at::Tensor& labels, const std::optional<at::Tensor>& valid,
                         const std::optional<at::Tensor>& prob, int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes > 0, "class_pools: num_classes must be positive, got ", num_classes);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "class_pools: labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 3 || labels.dim() == 1, "class_pools: labels must be [B, H, W] or [N], got shape ",
                    shape_str(labels));
  if (valid.has_value()) {
    TORCH_CHECK_VALUE(valid->sizes() == labels.sizes(), "class_pools: valid must have the labels' shape ",
                      shape_str(labels), ", got ", shape_str(*valid));
    TORCH_CHECK_VALUE(valid->device() == labels.device(), "class_pools: valid is on ", valid->device(),
                      " but labels are on ", labels.device());
  }
  if (prob.has_value()) {
    const at::Tensor& p = *prob;
    const bool ok = labels.dim() == 3 ? (p.dim() == 4 && p.size(0) == labels.size(0) && p.size(1) == num_classes &&
                                         p.size(2) == labels.size(1) && p.size(3) == labels.size(2))
                                      : (p.dim() == 2 && p.size(0) == labels.size(0) && p.size(1) == num_classes);
    TORCH_CHECK_VALUE(ok, "class_pools: prob must be [B, C, H, W] (or [N, C]) with C = num_classes = ", num_classes,
                      " matching labels ", shape_str(labels), ", got ", shape_str(p));
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "class_pools: prob must be floating, got ", p.scalar_type());
    TORCH_CHECK_VALUE(p.device() == labels.device(), "class_pools: prob is on ", p.device(), " but labels are on ",
                      labels.device());
  }
}

}  // namespace class_pools_checks
}  // namespace mona
