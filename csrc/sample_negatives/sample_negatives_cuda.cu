// mona::sample_negatives — CUDA kernel.
//
// Strategy: the host part (ATen calls on the device, no sync) builds the class CDF, the class
// weights and the uniforms (Philox, from the generator); one thread per (query, negative) maps
// its two uniforms to an index with the same code as the CPU kernel. Writes are coalesced.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "sample_negatives/sample_negatives_host.h"

namespace mona {
namespace {

__global__ void sample_queries_kernel(sample_negatives_math::PoolRefs refs, const float* __restrict__ uq,
                                      int64_t* __restrict__ qidx) {
  const int64_t total = refs.C * refs.Q;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < total;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = r / refs.Q;
    qidx[r] = sample_negatives_math::query_index(refs, c, r - c * refs.Q, uq[r]);
  }
}

__global__ void sample_negatives_kernel(sample_negatives_math::PoolRefs refs, const float* __restrict__ un,
                                        int64_t* __restrict__ nidx) {
  const int64_t total = refs.C * refs.Q * refs.M;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e / (refs.Q * refs.M);
    const float2 u = reinterpret_cast<const float2*>(un)[e];
    nidx[e] = sample_negatives_math::negative_index(refs, c, u.x, u.y);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_negatives_cuda(
    const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& hard_counts, const at::Tensor& permutation,
    const at::Tensor& prototypes, int64_t num_queries, int64_t num_negatives, double temperature,
    c10::string_view negatives, c10::string_view query_mode, const std::optional<at::Tensor>& bank_fill,
    int64_t bank_size, const std::optional<at::Generator>& generator) {
  const cuda::DeviceGuard guard("sample_negatives", {{"offsets", offsets},
                                                     {"counts", counts},
                                                     {"hard_counts", hard_counts},
                                                     {"permutation", permutation},
                                                     {"prototypes", prototypes},
                                                     {"bank_fill", bank_fill}});
  SamplerPlan plan =
      plan_sampling(offsets, counts, hard_counts, permutation, prototypes, bank_fill, bank_size, num_queries,
                    num_negatives, temperature, std::string(negatives), std::string(query_mode), generator);
  const int64_t C = plan.num_classes, Q = num_queries, M = num_negatives;
  const auto lopts = offsets.options().dtype(at::kLong);
  at::Tensor qidx = at::empty({C, Q}, lopts), nidx = at::empty({C, Q, M}, lopts);
  const sample_negatives_math::PoolRefs refs = pool_refs(plan);
  const auto stream = cuda::stream();
  cuda::launch<sample_queries_kernel>(cuda::blocks_for(C * Q), cuda::kThreads, 0, stream, refs,
                                      plan.query_uniform.data_ptr<float>(), qidx.data_ptr<int64_t>());
  cuda::launch<sample_negatives_kernel>(cuda::blocks_for(C * Q * M), cuda::kThreads, 0, stream, refs,
                                        plan.negative_uniform.data_ptr<float>(), nidx.data_ptr<int64_t>());
  return {qidx, nidx, plan.class_weight};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) { m.impl("sample_negatives", &sample_negatives_cuda); }

}  // namespace mona
