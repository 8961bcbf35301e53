// Host-side argument checks of pixel_kl, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/tensor_utils.h"

namespace mona {
namespace pixel_kl_checks {

inline void check_inputs(const char* op, const at::Tensor& a, const at::Tensor& b,
                         const std::optional<at::Tensor>& mask) {
  TORCH_CHECK_VALUE(a.dim() == 4 || a.dim() == 2, op, ": logits_a must be [B, C, H, W] or [N, C], got shape ",
                    shape_str(a));
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": logits_b must have logits_a's shape ", shape_str(a), ", got ",
                    shape_str(b));
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), op, ": logits_a must be float32/float64/float16/bfloat16, got ",
                   a.scalar_type());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": logits_b must have logits_a's dtype ", a.scalar_type(),
                   ", got ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": logits_b is on ", b.device(), " but logits_a is on ", a.device());
  TORCH_CHECK_VALUE(a.size(1) > 0, op, ": need at least one class, got logits of shape ", shape_str(a));
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    std::vector<int64_t> want{a.size(0)};
    if (a.dim() == 4) {
      want.push_back(a.size(2));
      want.push_back(a.size(3));
    }
    TORCH_CHECK_VALUE(m.sizes() == at::IntArrayRef(want), op, ": mask must be ", (a.dim() == 4 ? "[B, H, W]" : "[N]"),
                      " = ", shape_str(a.dim() == 4 ? a.select(1, 0) : a.select(1, 0)), ", got ", shape_str(m));
    TORCH_CHECK_TYPE(at::isFloatingType(m.scalar_type()) || m.scalar_type() == at::kBool, op,
                     ": mask must be floating or bool, got ", m.scalar_type());
    TORCH_CHECK_VALUE(m.device() == a.device(), op, ": mask is on ", m.device(), " but logits_a is on ", a.device());
  }
}

}  // namespace pixel_kl_checks
}  // namespace mona
