#include "common/contrast_checks.h"

#include <c10/util/Exception.h>

#include "common/contrast_math.h"
#include "common/tensor_utils.h"

namespace mona {

void check_pools_args(const at::Tensor& labels, const std::optional<at::Tensor>& valid,
                      const std::optional<at::Tensor>& prob, int64_t num_classes, int64_t ignore_index) {
  TORCH_CHECK_VALUE(num_classes > 0, "class_pools: num_classes must be positive, got ", num_classes);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "class_pools: labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 3 || labels.dim() == 1,
                    "class_pools: labels must be [B, H, W] or [N], got shape ", shape_str(labels));
  if (valid.has_value()) {
    TORCH_CHECK_VALUE(valid->sizes() == labels.sizes(), "class_pools: valid must have the labels' shape ",
                      shape_str(labels), ", got ", shape_str(*valid));
    TORCH_CHECK_VALUE(valid->device() == labels.device(), "class_pools: valid is on ", valid->device(),
                      " but labels are on ", labels.device());
  }
  if (prob.has_value()) {
    const at::Tensor& p = *prob;
    const bool ok = labels.dim() == 3
                        ? (p.dim() == 4 && p.size(0) == labels.size(0) && p.size(1) == num_classes &&
                           p.size(2) == labels.size(1) && p.size(3) == labels.size(2))
                        : (p.dim() == 2 && p.size(0) == labels.size(0) && p.size(1) == num_classes);
    TORCH_CHECK_VALUE(ok, "class_pools: prob must be [B, C, H, W] (or [N, C]) with C = num_classes = ", num_classes,
                      " matching labels ", shape_str(labels), ", got ", shape_str(p));
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "class_pools: prob must be floating, got ", p.scalar_type());
    TORCH_CHECK_VALUE(p.device() == labels.device(), "class_pools: prob is on ", p.device(), " but labels are on ",
                      labels.device());
  }
  (void)ignore_index;
}

int64_t parse_negative_source(const std::string& source) {
  if (source == "batch") return contrast_math::kBatch;
  if (source == "bank") return contrast_math::kBank;
  if (source == "both") return contrast_math::kBoth;
  TORCH_CHECK_VALUE(false, "negatives must be 'batch', 'bank' or 'both', got '", source, "'");
}

int64_t parse_query_mode(const std::string& mode) {
  if (mode == "hard") return contrast_math::kHard;
  if (mode == "all") return contrast_math::kAll;
  if (mode == "balanced") return contrast_math::kBalanced;
  TORCH_CHECK_VALUE(false, "query_mode must be 'hard', 'all' or 'balanced', got '", mode, "'");
}

}  // namespace mona
