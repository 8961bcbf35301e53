// mona::class_pools — CPU kernel.
//
// Strategy: a serial two-pass counting sort over the N pixels with 2C+1 buckets (hard/easy per
// class, plus "not taking part"): pass 1 counts, an exclusive scan gives bucket starts, pass 2
// writes each pixel index to its bucket. O(N), stable, no comparison sort; N labels are small
// next to the feature map, so one thread suffices.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "class_pools/class_pools_checks.h"
#include "class_pools/class_pools_math.h"
#include "common/tensor_utils.h"

namespace mona {
namespace {

template <typename index_t, typename prob_t>
void class_pools_kernel(const index_t* labels, const bool* valid, const PixelView<const prob_t>* prob, int64_t N,
                        int64_t C, double threshold, int64_t ignore_index, int64_t* offsets, int64_t* counts,
                        int64_t* hard_counts, int64_t* perm) {
  std::vector<int64_t> keys(N);
  std::vector<int64_t> bucket(2 * C + 2, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t lab = labels[n];
    TORCH_CHECK_VALUE((lab >= 0 && lab < C) || lab == ignore_index, "class_pools: labels contain ", lab,
                      " (at flat index ", n, "), which is neither in [0, num_classes=", C,
                      ") nor ignore_index=", ignore_index);
    const bool is_valid = lab >= 0 && lab < C && (valid == nullptr || valid[n]);
    const bool hard = prob == nullptr || !is_valid || class_pools_math::is_hard_pixel(prob->at(n, lab), threshold);
    keys[n] = class_pools_math::pool_key(lab, is_valid, hard, C);
    ++bucket[keys[n] + 1];
  }
  for (int64_t k = 1; k < 2 * C + 2; ++k) bucket[k] += bucket[k - 1];  // bucket[k] = start of key k
  for (int64_t c = 0; c < C; ++c) {
    offsets[c] = bucket[2 * c];
    hard_counts[c] = bucket[2 * c + 1] - bucket[2 * c];
    counts[c] = bucket[2 * c + 2] - bucket[2 * c];
  }
  for (int64_t n = 0; n < N; ++n) {
    if (keys[n] < 2 * C) perm[bucket[keys[n]]++] = n;
  }
  for (int64_t i = bucket[2 * C - 1]; i < N; ++i) perm[i] = -1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_pools_cpu(
    const at::Tensor& labels, int64_t num_classes, const std::optional<at::Tensor>& valid,
    const std::optional<at::Tensor>& prob, double strong_threshold, int64_t ignore_index) {
  class_pools_checks::check_inputs(labels, valid, prob, num_classes);
  const at::Tensor lab = labels.contiguous();
  const int64_t N = lab.numel();
  const auto opts = labels.options().dtype(at::kLong);
  at::Tensor offsets = at::empty({num_classes}, opts), counts = at::empty({num_classes}, opts);
  at::Tensor hard = at::empty({num_classes}, opts), perm = at::empty({N}, opts);
  const at::Tensor v = valid.has_value() ? valid->ne(0).contiguous() : at::Tensor();
  const at::Tensor p = prob.has_value() ? view_features(*prob) : at::Tensor();
  const auto prob_type = p.defined() ? p.scalar_type() : at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob_type, "class_pools_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_pools_cpu_labels", [&] {
      PixelView<const scalar_t> pv{};
      if (p.defined()) pv = make_pixel_view<const scalar_t>(p);
      class_pools_kernel<index_t, scalar_t>(lab.data_ptr<index_t>(), v.defined() ? v.data_ptr<bool>() : nullptr,
                                            p.defined() ? &pv : nullptr, N, num_classes, strong_threshold, ignore_index,
                                            offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                                            hard.data_ptr<int64_t>(), perm.data_ptr<int64_t>());
    });
  });
  return {offsets, counts, hard, perm};
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) { m.impl("class_pools", &class_pools_cpu); }

}  // namespace mona
