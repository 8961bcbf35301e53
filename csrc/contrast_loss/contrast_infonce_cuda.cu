// mona::contrast_infonce (+ backward) — CUDA kernels.
//
// Strategy: one warp per query (c, q), kWarps queries per block. The query vector is staged in
// shared memory (fp32/fp64); for each of its M+1 keys the 32 lanes read 32 consecutive channels
// of the key row (one coalesced 128-byte transaction per step on the channels-last fast path and
// for bank rows), accumulate dot product and squared norm, reduce them with warp shuffles and fold
// the logit into an online logsumexp. No Q x M x D tensor, no host sync.
// The logits and inverse key norms [C, Q, M+1] are saved for the backward.
// Backward: the warp computes the row's logsumexp from the saved logits (lanes over keys + shuffle
// reduction), walks the keys once more accumulating softmax-weighted normalised keys in the warp's
// shared-memory D-vector (each lane owns its channels: no conflicts), then atomically adds the
// query gradient to the dense gradient (several queries may share a pixel).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"
#include "contrast_loss/contrast_infonce_host.h"
#include "contrast_loss/contrast_infonce_math.h"

namespace mona {
namespace {

namespace cm = contrast_math;
constexpr int kWarps = 4;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t>
struct Inputs {
  PixelView<const scalar_t> f;
  infonce::KeySource<scalar_t> keys;
  const at::opmath_type<scalar_t>* protos;
  const at::opmath_type<scalar_t>* weight;
  const int64_t* qidx;
  const int64_t* nidx;
  int64_t C, Q, M, D;
  at::opmath_type<scalar_t> inv_t;
};

// Stages the query vector in shared memory x[0..D) and returns |x| (eps-clamped), on all lanes.
template <typename scalar_t, typename acc_t>
__device__ acc_t stage_query(const PixelView<const scalar_t>& f, int64_t n, acc_t* x, int lane) {
  const int64_t b = n / f.P;
  const scalar_t* base = f.data + b * f.stride_b + (n - b * f.P) * f.stride_p;
  acc_t sq = 0;
  for (int64_t d = lane; d < f.D; d += 32) {
    const acc_t v = static_cast<acc_t>(base[d * f.stride_d]);
    x[d] = v;
    sq += v * v;
  }
  __syncwarp();
  return cm::safe_norm(warp_sum(sq));
}

template <typename row_t, typename acc_t>
__device__ void warp_dot_square(const row_t* row, int64_t stride, const acc_t* x, int64_t D, int lane, acc_t& dot,
                                acc_t& sq) {
  acc_t a = 0, b = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const acc_t v = static_cast<acc_t>(row[d * stride]);
    a += v * x[d];
    b += v * v;
  }
  dot = warp_sum(a);
  sq = warp_sum(b);
}

template <typename scalar_t>
__global__ void infonce_forward_kernel(Inputs<scalar_t> in, at::opmath_type<scalar_t>* __restrict__ logits,
                                       at::opmath_type<scalar_t>* __restrict__ inv_norms,
                                       at::opmath_type<scalar_t>* __restrict__ row_loss) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc_t* x = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.y * in.D;
  const int lane = threadIdx.x;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.y; r < in.C * in.Q;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t c = r / in.Q;
    acc_t* lr = logits + r * (in.M + 1);
    acc_t* kr = inv_norms + r * (in.M + 1);
    if (!(in.weight[c] > acc_t(0))) {
      for (int64_t j = lane; j <= in.M; j += 32) lr[j] = kr[j] = acc_t(0);
      if (lane == 0) row_loss[r] = acc_t(0);
      continue;
    }
    const acc_t xn = stage_query(in.f, in.qidx[r], x, lane);
    acc_t dot, sq;
    warp_dot_square(in.protos + c * in.D, 1, x, in.D, lane, dot, sq);
    acc_t inv_kn = acc_t(1) / cm::safe_norm(sq);
    const acc_t l0 = dot * inv_kn / xn * in.inv_t;
    if (lane == 0) {
      lr[0] = l0;
      kr[0] = inv_kn;
    }
    acc_t m = l0, s = 1;
    for (int64_t j = 0; j < in.M; ++j) {
      int64_t stride;
      const scalar_t* row = in.keys.row(in.nidx[r * in.M + j], stride);
      warp_dot_square(row, stride, x, in.D, lane, dot, sq);
      inv_kn = acc_t(1) / cm::safe_norm(sq);
      const acc_t l = dot * inv_kn / xn * in.inv_t;
      if (lane == 0) {
        lr[j + 1] = l;
        kr[j + 1] = inv_kn;
      }
      cm::lse_update(m, s, l);
    }
    if (lane == 0) row_loss[r] = m + log(s) - l0;
    __syncwarp();
  }
}

template <typename scalar_t>
__global__ void infonce_backward_kernel(Inputs<scalar_t> in, const float* __restrict__ grad_loss,
                                        const at::opmath_type<scalar_t>* __restrict__ logits,
                                        const at::opmath_type<scalar_t>* __restrict__ inv_norms,
                                        PixelView<scalar_t> grad) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc_t* x = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.y * 2 * in.D;
  acc_t* acc = x + in.D;
  const int lane = threadIdx.x;
  const acc_t temperature = acc_t(1) / in.inv_t;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.y; r < in.C * in.Q;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t c = r / in.Q;
    if (!(in.weight[c] > acc_t(0))) continue;
    const acc_t* lr = logits + r * (in.M + 1);
    const acc_t* kr = inv_norms + r * (in.M + 1);
    // logsumexp of the row: per-lane online partials, then a shuffle merge
    acc_t m = lr[0], s = 0;
    for (int64_t j = lane; j <= in.M; j += 32) cm::lse_update(m, s, lr[j]);
    for (int offset = 16; offset > 0; offset >>= 1) {
      const acc_t m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
      const acc_t mm = m > m2 ? m : m2;
      s = s * exp(m - mm) + s2 * exp(m2 - mm);
      m = mm;
    }
    const acc_t lse = m + log(s);
    const int64_t n = in.qidx[r];
    const acc_t xn = stage_query(in.f, n, x, lane);
    acc_t g = infonce::logit_grad(lr[0], lse, true);
    acc_t weighted_cos = g * lr[0] * temperature;
    for (int64_t d = lane; d < in.D; d += 32) acc[d] = g * kr[0] * in.protos[c * in.D + d];
    for (int64_t j = 1; j <= in.M; ++j) {
      int64_t stride;
      const scalar_t* row = in.keys.row(in.nidx[r * in.M + j - 1], stride);
      g = infonce::logit_grad(lr[j], lse, false);
      weighted_cos += g * lr[j] * temperature;
      const acc_t alpha = g * kr[j];
      for (int64_t d = lane; d < in.D; d += 32) acc[d] += alpha * static_cast<acc_t>(row[d * stride]);
    }
    const acc_t coef = static_cast<acc_t>(*grad_loss) * in.weight[c] / static_cast<acc_t>(in.Q) / (temperature * xn);
    const int64_t b = n / grad.P;
    scalar_t* base = grad.data + b * grad.stride_b + (n - b * grad.P) * grad.stride_p;
    for (int64_t d = lane; d < in.D; d += 32) {
      gpuAtomicAdd(base + d * grad.stride_d, static_cast<scalar_t>(coef * (acc[d] - weighted_cos * x[d] / xn)));
    }
    __syncwarp();
  }
}

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const InfonceArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto kv = make_pixel_view<const scalar_t>(a.key_features);
  return {make_pixel_view<const scalar_t>(a.features),
          {kv.data, kv.B, kv.P, kv.stride_b, kv.stride_d, kv.stride_p,
           a.bank.defined() ? a.bank.data_ptr<scalar_t>() : nullptr, a.N, a.D},
          a.prototypes.data_ptr<acc_t>(), a.class_weight.data_ptr<acc_t>(), a.query_index.data_ptr<int64_t>(),
          a.negative_index.data_ptr<int64_t>(), a.C, a.Q, a.M, a.D, acc_t(1) / static_cast<acc_t>(a.temperature)};
}

unsigned int query_blocks(int64_t rows) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((rows + kWarps - 1) / kWarps, 65535)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrast_infonce_cuda(const at::Tensor& features, const at::Tensor& key_features,
                                                         const std::optional<at::Tensor>& bank,
                                                         const at::Tensor& prototypes, const at::Tensor& query_index,
                                                         const at::Tensor& negative_index,
                                                         const at::Tensor& class_weight, double temperature) {
  const c10::cuda::CUDAGuard guard(features.device());
  InfonceArgs a = prepare_infonce("contrast_infonce", features, key_features, bank, prototypes, query_index,
                                  negative_index, class_weight, temperature);
  const auto opts = features.options().dtype(a.prototypes.scalar_type());
  at::Tensor logits = at::empty({a.C, a.Q, a.M + 1}, opts), inv_norms = at::empty({a.C, a.Q, a.M + 1}, opts);
  at::Tensor row_loss = at::empty({a.C, a.Q}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = sizeof(acc_t) * kWarps * a.D;
    TORCH_CHECK_VALUE(smem <= 48 * 1024, "contrast_infonce (CUDA): D = ", a.D, " is too large (max ",
                      48 * 1024 / (sizeof(acc_t) * kWarps), ")");
    infonce_forward_kernel<scalar_t><<<query_blocks(a.C * a.Q), dim3(32, kWarps), smem, cuda::stream()>>>(
        make_inputs<scalar_t>(a), logits.data_ptr<acc_t>(), inv_norms.data_ptr<acc_t>(), row_loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduce_infonce_loss(row_loss, a.class_weight, a.Q), logits, inv_norms};
}

at::Tensor contrast_infonce_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& features,
                                          const at::Tensor& key_features, const std::optional<at::Tensor>& bank,
                                          const at::Tensor& prototypes, const at::Tensor& query_index,
                                          const at::Tensor& negative_index, const at::Tensor& class_weight,
                                          const at::Tensor& logits, const at::Tensor& inv_key_norms,
                                          double temperature) {
  const c10::cuda::CUDAGuard guard(features.device());
  InfonceArgs a = prepare_infonce("contrast_infonce_backward", features, key_features, bank, prototypes, query_index,
                                  negative_index, class_weight, temperature);
  check_saved_stats("contrast_infonce_backward", a, logits, inv_key_norms);
  at::Tensor grad = at::zeros_like(a.features);
  const at::Tensor g = grad_loss.to(at::kFloat).reshape({1}).contiguous();  // stays on the device
  const at::Tensor l = logits.to(a.prototypes.scalar_type()).contiguous();
  const at::Tensor k = inv_key_norms.to(a.prototypes.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = sizeof(acc_t) * kWarps * 2 * a.D;
    TORCH_CHECK_VALUE(smem <= 48 * 1024, "contrast_infonce_backward (CUDA): D = ", a.D, " is too large (max ",
                      48 * 1024 / (sizeof(acc_t) * kWarps * 2), ")");
    infonce_backward_kernel<scalar_t><<<query_blocks(a.C * a.Q), dim3(32, kWarps), smem, cuda::stream()>>>(
        make_inputs<scalar_t>(a), g.data_ptr<float>(), l.data_ptr<acc_t>(), k.data_ptr<acc_t>(),
        make_pixel_view<scalar_t>(grad));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CUDA, m) {
  m.impl("contrast_infonce", &contrast_infonce_cuda);
  m.impl("contrast_infonce_backward", &contrast_infonce_backward_cuda);
}

}  // namespace mona
