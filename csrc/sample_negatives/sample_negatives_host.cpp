#include "sample_negatives/sample_negatives_host.h"

#include <ATen/ops/eye.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "common/cosine_math.h"
#include "sample_negatives/sample_negatives_checks.h"

namespace mona {

SamplerPlan plan_sampling(const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts,
                          const at::Tensor& permutation, const at::Tensor& prototypes,
                          const std::optional<at::Tensor>& bank_fill, int64_t bank_size, int64_t num_queries,
                          int64_t num_negatives, double temperature, const std::string& negatives,
                          const std::string& query_mode, const std::optional<at::Generator>& generator) {
  const auto [source, mode] =
      sample_negatives_checks::check_inputs(offsets, counts, hard_counts, permutation, prototypes, bank_fill, bank_size,
                                            num_queries, num_negatives, temperature, negatives, query_mode);
  const int64_t C = offsets.size(0);

  SamplerPlan plan;
  plan.num_classes = C;
  plan.num_queries = num_queries;
  plan.num_negatives = num_negatives;
  plan.num_pixels = permutation.size(0);
  plan.bank_size = source == sample_negatives_math::kBatch ? 0 : bank_size;
  plan.source = source;
  plan.mode = mode;
  plan.offsets = offsets.contiguous();
  plan.counts = counts.contiguous();
  plan.hard_counts = hard_counts.contiguous();
  plan.permutation = permutation.contiguous();
  const auto fopts = prototypes.options().dtype(at::kFloat);
  plan.bank_fill = source == sample_negatives_math::kBatch ? at::zeros({C}, counts.options()) : bank_fill->contiguous();

  // Which classes can supply negative keys from the chosen source.
  at::Tensor available = source == sample_negatives_math::kBatch  ? counts.gt(0)
                         : source == sample_negatives_math::kBank ? plan.bank_fill.gt(0)
                                                                  : counts.gt(0).logical_or(plan.bank_fill.gt(0));
  // Class relation graph and the per-row sampling mass (a masked softmax, unnormalised CDF).
  at::Tensor protos = prototypes.to(at::kFloat);
  at::Tensor normed = protos.div(protos.norm(2, {1}, true).clamp_min(cosine_math::kCosineSimilarityEps));
  at::Tensor logits = normed.matmul(normed.t()).div(temperature);
  at::Tensor allowed = available.unsqueeze(0).expand({C, C}).logical_and(at::eye(C, fopts).eq(0));
  logits = logits.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor row_max = logits.amax({1}, true);
  row_max = row_max.where(row_max.isfinite(), at::zeros_like(row_max));
  at::Tensor mass = logits.sub(row_max).exp();  // exp(-inf) = 0 for excluded classes
  plan.class_cdf = mass.cumsum(1).contiguous();

  // class_weight[c] = 1 / #present classes if c has queries and at least one negative class.
  at::Tensor has_queries = (mode == sample_negatives_math::kHard ? hard_counts : counts).gt(0);
  at::Tensor has_negatives = plan.class_cdf.select(1, C - 1).gt(0);
  at::Tensor present = counts.gt(0).sum().clamp_min(1).to(at::kFloat);
  plan.class_weight = has_queries.logical_and(has_negatives).to(at::kFloat).div(present).contiguous();

  plan.query_uniform = at::rand({C, num_queries}, generator, fopts);
  plan.negative_uniform = at::rand({C, num_queries, num_negatives, 2}, generator, fopts);
  return plan;
}

}  // namespace mona
