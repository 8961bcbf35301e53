// Host-side argument checks of sample_negatives, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>

#include "common/tensor_utils.h"
#include "sample_negatives/sample_negatives_math.h"

namespace mona {
namespace sample_negatives_checks {

inline int64_t parse_negative_source(const std::string& source) {
  if (source == "batch") return sample_negatives_math::kBatch;
  if (source == "bank") return sample_negatives_math::kBank;
  if (source == "both") return sample_negatives_math::kBoth;
  TORCH_CHECK_VALUE(false, "sample_negatives: negatives must be 'batch', 'bank' or 'both', got '", source, "'");
}

inline int64_t parse_query_mode(const std::string& mode) {
  if (mode == "hard") return sample_negatives_math::kHard;
  if (mode == "all") return sample_negatives_math::kAll;
  if (mode == "balanced") return sample_negatives_math::kBalanced;
  TORCH_CHECK_VALUE(false, "sample_negatives: query_mode must be 'hard', 'all' or 'balanced', got '", mode, "'");
}

// The parsed string arguments.
struct Modes {
  int64_t source;  // sample_negatives_math::NegativeSource
  int64_t mode;    // sample_negatives_math::QueryMode
};

// Checks every argument (the pool tensors as class_pools returns them) and parses the two strings.
inline Modes check_inputs(const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts,
                          const at::Tensor& permutation, const at::Tensor& prototypes,
                          const std::optional<at::Tensor>& bank_fill, int64_t bank_size, int64_t num_queries,
                          int64_t num_negatives, double temperature, const std::string& negatives,
                          const std::string& query_mode) {
  const char* op = "sample_negatives";
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) > 0, op,
                    ": offsets must be [C] with C > 0 (from class_pools), got ", shape_str(offsets));
  const int64_t C = offsets.size(0);
  for (const auto* t : {&offsets, &counts, &hard_counts, &permutation}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, op, ": pool tensors must be int64 (from class_pools), got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == offsets.device(), op, ": pool tensors must be on one device");
  }
  TORCH_CHECK_VALUE(counts.sizes() == offsets.sizes() && hard_counts.sizes() == offsets.sizes(), op,
                    ": offsets, counts and hard_counts must all be [C] = [", C, "]");
  TORCH_CHECK_VALUE(permutation.dim() == 1, op, ": permutation must be [N], got ", shape_str(permutation));
  TORCH_CHECK_VALUE(prototypes.dim() == 2 && prototypes.size(0) == C, op, ": prototypes must be [C, D] with C = ", C,
                    ", got ", shape_str(prototypes));
  TORCH_CHECK_VALUE(prototypes.device() == offsets.device(), op, ": prototypes are on ", prototypes.device(),
                    " but the pools are on ", offsets.device());
  TORCH_CHECK_VALUE(num_queries > 0, op, ": num_queries must be positive, got ", num_queries);
  TORCH_CHECK_VALUE(num_negatives > 0, op, ": num_negatives must be positive, got ", num_negatives);
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), op,
                    ": temperature must be positive and finite, got ", temperature);
  const Modes modes{parse_negative_source(negatives), parse_query_mode(query_mode)};
  if (modes.source != sample_negatives_math::kBatch) {
    TORCH_CHECK_VALUE(bank_fill.has_value(), op, ": negatives='", negatives, "' needs a memory bank (bank_fill)");
    TORCH_CHECK_VALUE(bank_fill->dim() == 1 && bank_fill->size(0) == C && bank_fill->scalar_type() == at::kLong, op,
                      ": bank_fill must be int64 [C] = [", C, "], got ", bank_fill->scalar_type(), " ",
                      shape_str(*bank_fill));
    TORCH_CHECK_VALUE(bank_fill->device() == offsets.device(), op, ": bank_fill is on ", bank_fill->device(),
                      " but the pools are on ", offsets.device());
    TORCH_CHECK_VALUE(bank_size > 0, op, ": bank_size must be positive with a bank, got ", bank_size);
  }
  return modes;
}

}  // namespace sample_negatives_checks
}  // namespace mona
