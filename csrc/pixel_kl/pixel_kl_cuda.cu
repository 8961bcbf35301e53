// mona::pixel_kl — CUDA kernels.
//
// Parallel strategy: one thread per pixel (grid-stride). A pixel's C logits of each input are read
// with the class stride; for NCHW, neighbouring threads read neighbouring pixels of the same
// class, so every read is coalesced. Pass 1 over the classes = online max + sum of exponentials
// (the logsumexp, common/online_lse.h), pass 2 = KL terms, pass 3 (when gradients are wanted) writes each gradient
// element once, in the logits' layout; passes 2 and 3 re-read the pixel's logits from L1/L2.
// One kernel serves the forward (loss partials, and d loss / d logits for grad_loss = 1 when
// requested: the single pass the autograd backward then only scales) and pixel_kl_backward
// (gradients recomputed from the logits, scaled by grad_loss). The weight sum is reduced before
// (ATen sum over the mask, on the device) because the gradients need it. Loss: per-thread sums
// reduced in the block (cuda::block_sum: warp shuffles in a fixed order) into one partial per block; a one-block kernel
// adds the partials in block order in float64 and divides. No atomics, no host sync: the loss is
// bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/online_lse.h"
#include "common/tensor_utils.h"
#include "common/warp_reduce.cuh"
#include "pixel_kl/pixel_kl_checks.h"
#include "pixel_kl/pixel_kl_math.h"

namespace mona {
namespace {

template <typename acc_t>
struct PixelLse {
  acc_t lse_a, lse_b;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ PixelLse<acc_t> pixel_lse(const scalar_t* pa, const scalar_t* pb, int64_t C, int64_t sc_a,
                                                     int64_t sc_b) {
  using Lse = online_lse::Lse<acc_t, pixel_kl_math::KlMath>;
  Lse la = Lse::empty(), lb = Lse::empty();
  for (int64_t c = 0; c < C; ++c) {
    la.add_unless_masked(static_cast<acc_t>(pa[c * sc_a]));
    lb.add_unless_masked(static_cast<acc_t>(pb[c * sc_b]));
  }
  return {la.value(), lb.value()};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pixel_kls(const scalar_t* pa, const scalar_t* pb, int64_t C, int64_t sc_a, int64_t sc_b,
                                          PixelLse<acc_t> lse, bool symmetric, acc_t* kab, acc_t* kba) {
  acc_t s_ab = 0, s_ba = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t la = static_cast<acc_t>(pa[c * sc_a]) - lse.lse_a;
    const acc_t lb = static_cast<acc_t>(pb[c * sc_b]) - lse.lse_b;
    s_ab += pixel_kl_math::kl_term(pixel_kl_math::kl_exp(la), la, lb);
    if (symmetric) s_ba += pixel_kl_math::kl_term(pixel_kl_math::kl_exp(lb), lb, la);
  }
  *kab = s_ab;
  *kba = s_ba;
}

// grad_loss == nullptr: gradients for grad_loss = 1; partials == nullptr: no loss partials.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pixel_kl_kernel(PixelView<const scalar_t> a, PixelView<const scalar_t> b,
                    const at::opmath_type<scalar_t>* __restrict__ w, bool symmetric,
                    const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                    const at::opmath_type<scalar_t>* __restrict__ weight_sum, PixelView<scalar_t> ga,
                    PixelView<scalar_t> gb, bool need_a, bool need_b,
                    at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[32];
  const acc_t g = grad_loss ? grad_loss[0] : acc_t(1), den = weight_sum[0];
  const int64_t N = a.num_pixels(), C = a.D;
  acc_t ls = 0;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t* pa = a.data + a.offset(n, 0);
    const scalar_t* pb = b.data + b.offset(n, 0);
    const auto lse = pixel_lse<scalar_t, acc_t>(pa, pb, C, a.stride_d, b.stride_d);
    acc_t kab, kba;
    pixel_kls<scalar_t, acc_t>(pa, pb, C, a.stride_d, b.stride_d, lse, symmetric, &kab, &kba);
    const acc_t wi = w ? w[n] : acc_t(1);
    ls += wi * (kab + kba);
    if (!need_a && !need_b) continue;
    const acc_t scale = pixel_kl_math::safe_ratio(g * wi, den);
    scalar_t* oa = need_a ? ga.data + ga.offset(n, 0) : nullptr;
    scalar_t* ob = need_b ? gb.data + gb.offset(n, 0) : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t la = static_cast<acc_t>(pa[c * a.stride_d]) - lse.lse_a;
      const acc_t lb = static_cast<acc_t>(pb[c * b.stride_d]) - lse.lse_b;
      const acc_t p = pixel_kl_math::kl_exp(la), q = pixel_kl_math::kl_exp(lb);
      if (oa) oa[c * ga.stride_d] = static_cast<scalar_t>(pixel_kl_math::grad_a(p, q, la, lb, kab, symmetric, scale));
      if (ob) ob[c * gb.stride_d] = static_cast<scalar_t>(pixel_kl_math::grad_b(p, q, la, lb, kba, symmetric, scale));
    }
  }
  if (partials == nullptr) return;  // uniform over the grid: no thread reaches the barriers below
  ls = cuda::block_sum(ls, shared, static_cast<int>(blockDim.x >> 5));
  if (threadIdx.x == 0) partials[blockIdx.x] = ls;
}

// One block: thread t adds partials t, t + blockDim, ... in order (float64), then a fixed tree.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pixel_kl_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ partials, int64_t blocks,
                             const at::opmath_type<scalar_t>* __restrict__ weight_sum, scalar_t* __restrict__ loss) {
  __shared__ double shared[32];
  double ls = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) ls += static_cast<double>(partials[i]);
  ls = cuda::block_sum(ls, shared, static_cast<int>(blockDim.x >> 5));
  if (threadIdx.x == 0)
    loss[0] = static_cast<scalar_t>(pixel_kl_math::safe_ratio(ls, static_cast<double>(weight_sum[0])));
}

// The mask as acc-dtype weights and their sum, on the device (no host sync); no mask: every pixel
// weighs 1 and the sum is the number of pixels.
struct Weights {
  at::Tensor w, sum;
};

Weights prepare_weights(const std::optional<at::Tensor>& mask, int64_t num_pixels, const at::TensorOptions& acc) {
  if (!mask.has_value()) return {at::Tensor(), at::full({1}, static_cast<double>(num_pixels), acc)};
  at::Tensor w = mask->to(acc.dtype()).contiguous();
  return {w, w.sum(acc.dtype().toScalarType()).reshape({1})};
}

// Launches pixel_kl_kernel over all pixels (nothing for zero pixels).
template <typename scalar_t>
void launch_pixels(const at::Tensor& a, const at::Tensor& b, const Weights& weights, bool symmetric,
                   const at::Tensor* grad_loss, at::Tensor* ga, at::Tensor* gb, at::Tensor* partials,
                   unsigned int blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
  if (va.num_pixels() == 0) return;
  // A gradient that is not wanted gets an empty view (never written: need_* is false).
  const auto vga = ga ? make_pixel_view<scalar_t>(*ga) : PixelView<scalar_t>{};
  const auto vgb = gb ? make_pixel_view<scalar_t>(*gb) : PixelView<scalar_t>{};
  cuda::launch<pixel_kl_kernel<scalar_t>>(
      blocks, cuda::kThreads, 0, cuda::stream(), va, vb, weights.w.defined() ? weights.w.data_ptr<acc_t>() : nullptr,
      symmetric, grad_loss ? grad_loss->data_ptr<acc_t>() : nullptr, weights.sum.data_ptr<acc_t>(), vga, vgb,
      ga != nullptr, gb != nullptr, partials ? partials->data_ptr<acc_t>() : nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pixel_kl_cuda(const at::Tensor& logits_a,
                                                                         const at::Tensor& logits_b,
                                                                         const std::optional<at::Tensor>& mask,
                                                                         bool symmetric, bool compute_grad_a,
                                                                         bool compute_grad_b) {
  pixel_kl_checks::check_inputs("pixel_kl", logits_a, logits_b, mask);
  const cuda::DeviceGuard guard("pixel_kl", {{"logits_a", logits_a}, {"logits_b", logits_b}, {"mask", mask}});
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = a.options().dtype(acc_dtype(a.scalar_type()));
  const int64_t N = a.size(0) * (a.dim() == 4 ? a.size(2) * a.size(3) : 1);
  const Weights weights = prepare_weights(mask, N, acc);
  const unsigned int blocks = N > 0 ? cuda::blocks_for(N, cuda::kThreads, 65535LL * 4) : 0;
  at::Tensor partials = at::empty({std::max<int64_t>(blocks, 1)}, acc);
  at::Tensor loss = at::empty({}, a.options());
  // Gradients in the layout of the (pixel-mergeable) views, written through their own strides.
  at::Tensor ga = compute_grad_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor gb = compute_grad_b ? at::empty_like(b) : at::empty({0}, b.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_pixels<scalar_t>(a, b, weights, symmetric, nullptr, compute_grad_a ? &ga : nullptr,
                            compute_grad_b ? &gb : nullptr, &partials, blocks);
    cuda::launch<pixel_kl_finalize_kernel<scalar_t>>(1, cuda::kThreads, 0, cuda::stream(), partials.data_ptr<acc_t>(),
                                                     static_cast<int64_t>(blocks), weights.sum.data_ptr<acc_t>(),
                                                     loss.data_ptr<scalar_t>());
  });
  return {loss, weights.sum.reshape({}), ga, gb};
}

std::tuple<at::Tensor, at::Tensor> pixel_kl_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits_a,
                                                          const at::Tensor& logits_b,
                                                          const std::optional<at::Tensor>& mask,
                                                          const at::Tensor& weight_sum, bool symmetric, bool need_a,
                                                          bool need_b) {
  pixel_kl_checks::check_inputs("pixel_kl_backward", logits_a, logits_b, mask);
  const cuda::DeviceGuard guard("pixel_kl_backward", {{"logits_a", logits_a}, {"logits_b", logits_b}, {"mask", mask}});
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = a.options().dtype(acc_dtype(a.scalar_type()));
  // on the device whatever the caller passed (the kernel reads them; no host sync)
  const at::Tensor g = grad_loss.to(a.device(), acc.dtype().toScalarType()).reshape({1}).contiguous();
  Weights weights{mask.has_value() ? mask->to(acc.dtype()).contiguous() : at::Tensor(),
                  weight_sum.to(a.device(), acc.dtype().toScalarType()).reshape({1}).contiguous()};
  at::Tensor ga = need_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor gb = need_b ? at::empty_like(b) : at::empty({0}, b.options());
  if (!need_a && !need_b) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_backward_cuda", [&] {
    launch_pixels<scalar_t>(a, b, weights, symmetric, &g, need_a ? &ga : nullptr, need_b ? &gb : nullptr, nullptr,
                            cuda::blocks_for(a.size(0) * (a.dim() == 4 ? a.size(2) * a.size(3) : 1)));
  });
  return {ga, gb};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("pixel_kl", &pixel_kl_cuda);
  m.impl("pixel_kl_backward", &pixel_kl_backward_cuda);
}

}  // namespace mona
