// Device-agnostic host part of sample_negatives (ATen calls only, no host sync): argument checks
// (sample_negatives_checks.h), the negative-class CDF table [C, C], the class weights and the
// uniform random numbers.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "sample_negatives/sample_negatives_math.h"

namespace mona {

struct SamplerPlan {
  int64_t num_classes, num_queries, num_negatives, num_pixels, bank_size, source, mode;
  at::Tensor offsets, counts, hard_counts, permutation, bank_fill;  // int64, contiguous
  at::Tensor class_cdf;      // [C, C] float32: row c = cumulative sampling mass over v
  at::Tensor class_weight;   // [C] float32
  at::Tensor query_uniform;  // [C, Q] float32
  at::Tensor negative_uniform;  // [C, Q, M, 2] float32 (class draw, key draw)
};

SamplerPlan plan_sampling(const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts,
                          const at::Tensor& permutation, const at::Tensor& prototypes,
                          const std::optional<at::Tensor>& bank_fill, int64_t bank_size, int64_t num_queries,
                          int64_t num_negatives, double temperature, const std::string& negatives,
                          const std::string& query_mode, const std::optional<at::Generator>& generator);

// The plan's device pointers as the kernels' argument struct.
inline sample_negatives_math::PoolRefs pool_refs(SamplerPlan& plan) {
  return {plan.offsets.data_ptr<int64_t>(),
          plan.counts.data_ptr<int64_t>(),
          plan.hard_counts.data_ptr<int64_t>(),
          plan.permutation.data_ptr<int64_t>(),
          plan.bank_fill.data_ptr<int64_t>(),
          plan.class_cdf.data_ptr<float>(),
          plan.class_weight.data_ptr<float>(),
          plan.num_classes,
          plan.num_queries,
          plan.num_negatives,
          plan.num_pixels,
          plan.bank_size,
          plan.source,
          plan.mode};
}

}  // namespace mona
