#include "sample_negatives/sample_negatives_host.h"

#include <ATen/ops/eye.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "common/contrast_checks.h"
#include "common/contrast_math.h"
#include "common/tensor_utils.h"

namespace mona {

SamplerPlan plan_sampling(const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts,
                          const at::Tensor& permutation, const at::Tensor& prototypes,
                          const std::optional<at::Tensor>& bank_fill, int64_t bank_size, int64_t num_queries,
                          int64_t num_negatives, double temperature, const std::string& negatives,
                          const std::string& query_mode, const std::optional<at::Generator>& generator) {
  namespace cmath = contrast_math;
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
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), op, ": temperature must be positive and finite, got ",
                    temperature);
  const int64_t source = parse_negative_source(negatives);
  const int64_t mode = parse_query_mode(query_mode);
  if (source != cmath::kBatch) {
    TORCH_CHECK_VALUE(bank_fill.has_value(), op, ": negatives='", negatives, "' needs a memory bank (bank_fill)");
    TORCH_CHECK_VALUE(bank_fill->dim() == 1 && bank_fill->size(0) == C && bank_fill->scalar_type() == at::kLong, op,
                      ": bank_fill must be int64 [C] = [", C, "], got ", bank_fill->scalar_type(), " ",
                      shape_str(*bank_fill));
    TORCH_CHECK_VALUE(bank_fill->device() == offsets.device(), op, ": bank_fill is on ", bank_fill->device(),
                      " but the pools are on ", offsets.device());
    TORCH_CHECK_VALUE(bank_size > 0, op, ": bank_size must be positive with a bank, got ", bank_size);
  }

  SamplerPlan plan;
  plan.num_classes = C;
  plan.num_queries = num_queries;
  plan.num_negatives = num_negatives;
  plan.num_pixels = permutation.size(0);
  plan.bank_size = source == cmath::kBatch ? 0 : bank_size;
  plan.source = source;
  plan.mode = mode;
  plan.offsets = offsets.contiguous();
  plan.counts = counts.contiguous();
  plan.hard_counts = hard_counts.contiguous();
  plan.permutation = permutation.contiguous();
  const auto fopts = prototypes.options().dtype(at::kFloat);
  plan.bank_fill = source == cmath::kBatch ? at::zeros({C}, counts.options()) : bank_fill->contiguous();

  // Which classes can supply negative keys from the chosen source.
  at::Tensor available = source == cmath::kBatch ? counts.gt(0)
                         : source == cmath::kBank ? plan.bank_fill.gt(0)
                                                  : counts.gt(0).logical_or(plan.bank_fill.gt(0));
  // Class relation graph and the per-row sampling mass (a masked softmax, unnormalised CDF).
  at::Tensor protos = prototypes.to(at::kFloat);
  at::Tensor normed = protos.div(protos.norm(2, {1}, true).clamp_min(cmath::kCosEps));
  at::Tensor logits = normed.matmul(normed.t()).div(temperature);
  at::Tensor allowed = available.unsqueeze(0).expand({C, C}).logical_and(at::eye(C, fopts).eq(0));
  logits = logits.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor row_max = logits.amax({1}, true);
  row_max = row_max.where(row_max.isfinite(), at::zeros_like(row_max));
  at::Tensor mass = logits.sub(row_max).exp();  // exp(-inf) = 0 for excluded classes
  plan.class_cdf = mass.cumsum(1).contiguous();

  // class_weight[c] = 1 / #present classes if c has queries and at least one negative class.
  at::Tensor has_queries = (mode == cmath::kHard ? hard_counts : counts).gt(0);
  at::Tensor has_negatives = plan.class_cdf.select(1, C - 1).gt(0);
  at::Tensor present = counts.gt(0).sum().clamp_min(1).to(at::kFloat);
  plan.class_weight = has_queries.logical_and(has_negatives).to(at::kFloat).div(present).contiguous();

  plan.query_uniform = at::rand({C, num_queries}, generator, fopts);
  plan.negative_uniform = at::rand({C, num_queries, num_negatives, 2}, generator, fopts);
  return plan;
}

}  // namespace mona
