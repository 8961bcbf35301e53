// Argument checks of the contrastive-loss ops (class_pools, sample_negatives, contrast_infonce).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace mona {

void check_pools_args(const at::Tensor& labels, const std::optional<at::Tensor>& valid,
                      const std::optional<at::Tensor>& prob, int64_t num_classes, int64_t ignore_index);

int64_t parse_negative_source(const std::string& source);
int64_t parse_query_mode(const std::string& mode);

}  // namespace mona
