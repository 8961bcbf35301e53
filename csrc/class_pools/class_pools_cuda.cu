// mona::class_pools — CUDA kernel.
//
// Strategy: one thread per pixel computes its bucket key (2c hard, 2c+1 easy, 2C none) with the
// pool_key() and is_hard_pixel() of class_pools_math.h, as the CPU kernel; a stable device radix sort (at::sort, stable=True) of the keys yields the
// permutation, a scatter_add histogram the bucket sizes and an exclusive cumsum the offsets.
// Everything stays on the device (no host sync); the order is deterministic (stable sort).
// Labels outside [0, C) other than ignore_index trip a device-side assert.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "class_pools/class_pools_checks.h"
#include "class_pools/class_pools_math.h"
#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"

namespace mona {
namespace {

template <typename index_t, typename prob_t>
__global__ void pool_keys_kernel(const index_t* __restrict__ labels, const bool* __restrict__ valid,
                                 PixelView<const prob_t> prob, bool has_prob, int64_t N, int64_t C, double threshold,
                                 int64_t ignore_index, int64_t* __restrict__ keys) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t lab = labels[n];
    CUDA_KERNEL_ASSERT(((lab >= 0 && lab < C) || lab == ignore_index) &&
                       "class_pools: label outside [0, num_classes) and not ignore_index");
    const bool is_valid = lab >= 0 && lab < C && (valid == nullptr || valid[n]);
    const bool hard = !has_prob || !is_valid || class_pools_math::is_hard_pixel(prob.at(n, lab), threshold);
    keys[n] = class_pools_math::pool_key(lab, is_valid, hard, C);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_pools_cuda(
    const at::Tensor& labels, int64_t num_classes, const std::optional<at::Tensor>& valid,
    const std::optional<at::Tensor>& prob, double strong_threshold, int64_t ignore_index) {
  class_pools_checks::check_inputs(labels, valid, prob, num_classes);
  const cuda::DeviceGuard guard("class_pools", {{"labels", labels}, {"valid", valid}, {"prob", prob}});
  const at::Tensor lab = labels.contiguous();
  const int64_t N = lab.numel(), C = num_classes;
  const auto opts = labels.options().dtype(at::kLong);
  const at::Tensor v = valid.has_value() ? valid->ne(0).contiguous() : at::Tensor();
  const at::Tensor p = prob.has_value() ? view_features(*prob) : at::Tensor();
  at::Tensor keys = at::empty({N}, opts);
  if (N > 0) {
    const auto prob_type = p.defined() ? p.scalar_type() : at::kFloat;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob_type, "class_pools_cuda", [&] {
      AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_pools_cuda_labels", [&] {
        PixelView<const scalar_t> pv{};
        if (p.defined()) pv = make_pixel_view<const scalar_t>(p);
        cuda::launch<pool_keys_kernel<index_t, scalar_t>>(
            cuda::blocks_for(N), cuda::kThreads, 0, cuda::stream(), lab.data_ptr<index_t>(),
            v.defined() ? v.data_ptr<bool>() : nullptr, pv, p.defined(), N, C, strong_threshold, ignore_index,
            keys.data_ptr<int64_t>());
      });
    });
  }
  auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor bucket = at::zeros({2 * C + 1}, opts).scatter_add_(0, keys, at::ones_like(keys));
  at::Tensor starts = bucket.cumsum(0).sub_(bucket);
  at::Tensor offsets = starts.slice(0, 0, 2 * C, 2).contiguous();
  at::Tensor hard = bucket.slice(0, 0, 2 * C, 2).contiguous();
  at::Tensor counts = hard.add(bucket.slice(0, 1, 2 * C, 2));
  at::Tensor perm = order.masked_fill_(sorted.eq(2 * C), -1);
  return {offsets, counts, hard, perm};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) { m.impl("class_pools", &class_pools_cuda); }

}  // namespace mona
