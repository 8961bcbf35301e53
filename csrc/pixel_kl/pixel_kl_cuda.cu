// mona::pixel_kl — CUDA kernels.
//
// Parallel strategy: one thread per pixel (grid-stride). A pixel's C logits of each input are read
// with the class stride; for NCHW, neighbouring threads read neighbouring pixels of the same
// class, so every read is coalesced. Forward: pass 1 over the classes = online max + sum of
// exponentials (the logsumexp), pass 2 = KL terms; per-thread sums are reduced in the block
// (warp shuffles, a fixed tree) into one (w * kl, w) partial per block; a one-block kernel adds the
// partials in block order in float64 and divides. No atomics: the loss is bitwise reproducible.
// Backward: the same two passes recompute the log-softmaxes, pass 3 writes each gradient element
// once (same layout as the logits).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"
#include "pixel_kl/pixel_kl_checks.h"
#include "pixel_kl/pixel_kl_math.h"

namespace mona {
namespace {

namespace km = pixel_kl_math;

template <typename acc_t>
struct PixelLse {
  acc_t lse_a, lse_b;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ PixelLse<acc_t> pixel_lse(const scalar_t* pa, const scalar_t* pb, int64_t C, int64_t sc_a,
                                                     int64_t sc_b) {
  acc_t ma = -INFINITY, sa = 0, mb = -INFINITY, sb = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t za = static_cast<acc_t>(pa[c * sc_a]);
    const acc_t zb = static_cast<acc_t>(pb[c * sc_b]);
    km::lse_step(ma, sa, za);
    km::lse_step(mb, sb, zb);
  }
  return {ma + km::kl_log(sa), mb + km::kl_log(sb)};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pixel_kls(const scalar_t* pa, const scalar_t* pb, int64_t C, int64_t sc_a, int64_t sc_b,
                                          PixelLse<acc_t> lse, bool symmetric, acc_t* kab, acc_t* kba) {
  acc_t s_ab = 0, s_ba = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t la = static_cast<acc_t>(pa[c * sc_a]) - lse.lse_a;
    const acc_t lb = static_cast<acc_t>(pb[c * sc_b]) - lse.lse_b;
    s_ab += km::kl_term(km::kl_exp(la), la, lb);
    if (symmetric) s_ba += km::kl_term(km::kl_exp(lb), lb, la);
  }
  *kab = s_ab;
  *kba = s_ba;
}

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) total += shared[i];
  }
  __syncthreads();
  return total;  // valid in thread 0
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pixel_kl_forward_kernel(PixelView<const scalar_t> a, PixelView<const scalar_t> b,
                            const at::opmath_type<scalar_t>* __restrict__ w, bool symmetric,
                            at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[32];
  acc_t ls = 0, ws = 0;
  const int64_t N = a.num_pixels();
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t* pa = a.data + a.offset(n, 0);
    const scalar_t* pb = b.data + b.offset(n, 0);
    const auto lse = pixel_lse<scalar_t, acc_t>(pa, pb, a.D, a.stride_d, b.stride_d);
    acc_t kab, kba;
    pixel_kls<scalar_t, acc_t>(pa, pb, a.D, a.stride_d, b.stride_d, lse, symmetric, &kab, &kba);
    const acc_t wi = w ? w[n] : acc_t(1);
    ls += wi * (kab + kba);
    ws += wi;
  }
  ls = block_sum(ls, shared);
  ws = block_sum(ws, shared);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = ls;
    partials[2 * blockIdx.x + 1] = ws;
  }
}

// One block: thread t adds partials t, t + blockDim, ... in order (float64), then a fixed tree.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pixel_kl_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ partials, int64_t blocks,
                             scalar_t* __restrict__ loss, at::opmath_type<scalar_t>* __restrict__ weight_sum) {
  __shared__ double shared[32];
  double ls = 0, ws = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
    ls += static_cast<double>(partials[2 * i]);
    ws += static_cast<double>(partials[2 * i + 1]);
  }
  ls = block_sum(ls, shared);
  ws = block_sum(ws, shared);
  if (threadIdx.x == 0) {
    loss[0] = static_cast<scalar_t>(km::safe_ratio(ls, ws));
    weight_sum[0] = static_cast<at::opmath_type<scalar_t>>(ws);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pixel_kl_backward_kernel(PixelView<const scalar_t> a, PixelView<const scalar_t> b,
                             const at::opmath_type<scalar_t>* __restrict__ w, bool symmetric,
                             const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                             const at::opmath_type<scalar_t>* __restrict__ weight_sum, PixelView<scalar_t> ga,
                             PixelView<scalar_t> gb, bool need_a, bool need_b) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g = grad_loss[0], den = weight_sum[0];
  const int64_t N = a.num_pixels(), C = a.D;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t* pa = a.data + a.offset(n, 0);
    const scalar_t* pb = b.data + b.offset(n, 0);
    const auto lse = pixel_lse<scalar_t, acc_t>(pa, pb, C, a.stride_d, b.stride_d);
    acc_t kab, kba;
    pixel_kls<scalar_t, acc_t>(pa, pb, C, a.stride_d, b.stride_d, lse, symmetric, &kab, &kba);
    const acc_t scale = km::safe_ratio(g * (w ? w[n] : acc_t(1)), den);
    scalar_t* oa = need_a ? ga.data + ga.offset(n, 0) : nullptr;
    scalar_t* ob = need_b ? gb.data + gb.offset(n, 0) : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t la = static_cast<acc_t>(pa[c * a.stride_d]) - lse.lse_a;
      const acc_t lb = static_cast<acc_t>(pb[c * b.stride_d]) - lse.lse_b;
      const acc_t p = km::kl_exp(la), q = km::kl_exp(lb);
      if (oa) oa[c * ga.stride_d] = static_cast<scalar_t>(km::grad_a(p, q, la, lb, kab, symmetric, scale));
      if (ob) ob[c * gb.stride_d] = static_cast<scalar_t>(km::grad_b(p, q, la, lb, kba, symmetric, scale));
    }
  }
}


std::tuple<at::Tensor, at::Tensor> pixel_kl_cuda(const at::Tensor& logits_a, const at::Tensor& logits_b,
                                                 const std::optional<at::Tensor>& mask, bool symmetric) {
  pixel_kl_checks::check_inputs("pixel_kl", logits_a, logits_b, mask);
  const cuda::DeviceGuard guard("pixel_kl", {{"logits_a", logits_a}, {"logits_b", logits_b}, {"mask", mask}});
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  const at::Tensor w = mask.has_value() ? mask->to(acc).contiguous() : at::Tensor();
  const int64_t N = a.size(0) * (a.dim() == 4 ? a.size(2) * a.size(3) : 1);
  const unsigned int blocks = N > 0 ? cuda::blocks_for(N, cuda::kThreads, 65535LL * 4) : 0;
  at::Tensor partials = at::empty({std::max<int64_t>(blocks, 1), 2}, a.options().dtype(acc));
  at::Tensor loss = at::empty({}, a.options());
  at::Tensor wsum = at::empty({}, a.options().dtype(acc));
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
    if (blocks > 0) {
      cuda::launch<pixel_kl_forward_kernel<scalar_t>>(blocks, cuda::kThreads, 0, stream, va, vb,
          w.defined() ? w.data_ptr<acc_t>() : nullptr, symmetric, partials.data_ptr<acc_t>());
    }
    cuda::launch<pixel_kl_finalize_kernel<scalar_t>>(1, cuda::kThreads, 0, stream, partials.data_ptr<acc_t>(),
        static_cast<int64_t>(blocks), loss.data_ptr<scalar_t>(), wsum.data_ptr<acc_t>());
  });
  return {loss, wsum};
}

std::tuple<at::Tensor, at::Tensor> pixel_kl_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits_a,
                                                          const at::Tensor& logits_b,
                                                          const std::optional<at::Tensor>& mask,
                                                          const at::Tensor& weight_sum, bool symmetric, bool need_a,
                                                          bool need_b) {
  pixel_kl_checks::check_inputs("pixel_kl_backward", logits_a, logits_b, mask);
  const cuda::DeviceGuard guard("pixel_kl_backward", {{"logits_a", logits_a}, {"logits_b", logits_b}, {"mask", mask}});
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  const at::Tensor w = mask.has_value() ? mask->to(acc).contiguous() : at::Tensor();
  // on the device whatever the caller passed (the kernel reads them; no host sync)
  const at::Tensor g = grad_loss.to(a.device(), acc).reshape({1}).contiguous();
  const at::Tensor den = weight_sum.to(a.device(), acc).reshape({1}).contiguous();
  at::Tensor ga = need_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor gb = need_b ? at::empty_like(b) : at::empty({0}, b.options());
  if (!need_a && !need_b) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
    if (va.num_pixels() == 0) return;
    // An unused gradient gets the input's view (never written: need_* is false).
    const auto vga = need_a ? make_pixel_view<scalar_t>(ga) : PixelView<scalar_t>{};
    const auto vgb = need_b ? make_pixel_view<scalar_t>(gb) : PixelView<scalar_t>{};
    cuda::launch<pixel_kl_backward_kernel<scalar_t>>(cuda::blocks_for(va.num_pixels()), cuda::kThreads, 0, cuda::stream(),
        va, vb, w.defined() ? w.data_ptr<acc_t>() : nullptr,
                                                           symmetric, g.data_ptr<acc_t>(), den.data_ptr<acc_t>(), vga,
                                                           vgb, need_a, need_b);
  });
  return {ga, gb};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("pixel_kl", &pixel_kl_cuda);
  m.impl("pixel_kl_backward", &pixel_kl_backward_cuda);
}

}  // namespace mona
