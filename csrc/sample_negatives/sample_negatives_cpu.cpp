// mona::sample_negatives — CPU kernel.
//
// Strategy: the host part (sample_negatives_host.cpp) builds the [C, C] class CDF, the class
// weights and all uniforms from the generator; this kernel maps uniforms to indices, parallel over
// the C * Q queries (each writes its own M negatives). Same generator state -> same indices.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "sample_negatives/sample_negatives_host.h"

namespace mona {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_negatives_cpu(
    const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts, const at::Tensor& permutation,
    const at::Tensor& prototypes, int64_t num_queries, int64_t num_negatives, double temperature,
    c10::string_view negatives, c10::string_view query_mode, const std::optional<at::Tensor>& bank_fill,
    int64_t bank_size, const std::optional<at::Generator>& generator) {
  SamplerPlan plan =
      plan_sampling(offsets, counts, hard_counts, permutation, prototypes, bank_fill, bank_size, num_queries,
                    num_negatives, temperature, std::string(negatives), std::string(query_mode), generator);
  const int64_t C = plan.num_classes, Q = num_queries, M = num_negatives;
  const auto lopts = offsets.options().dtype(at::kLong);
  at::Tensor qidx = at::empty({C, Q}, lopts), nidx = at::empty({C, Q, M}, lopts);
  const sample_negatives_math::PoolRefs refs = pool_refs(plan);
  const float* uq = plan.query_uniform.data_ptr<float>();
  const float* un = plan.negative_uniform.data_ptr<float>();
  int64_t* qp = qidx.data_ptr<int64_t>();
  int64_t* np = nidx.data_ptr<int64_t>();
  at::parallel_for(0, C * Q, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / Q, q = r - c * Q;
      qp[r] = sample_negatives_math::query_index(refs, c, q, uq[r]);
      for (int64_t j = 0; j < M; ++j) {
        const int64_t e = r * M + j;
        np[e] = sample_negatives_math::negative_index(refs, c, un[2 * e], un[2 * e + 1]);
      }
    }
  });
  return {qidx, nidx, plan.class_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) { m.impl("sample_negatives", &sample_negatives_cpu); }

}  // namespace mona
