// mona::contrast_infonce (+ backward) — CUDA kernels.
//
// Strategy: one warp per query (c, q), kWarps queries per block. The query vector is staged in
// shared memory (fp32/fp64); for each of its M+1 keys the 32 lanes read 32 consecutive channels
// of the key row (one coalesced 128-byte transaction per step on the channels-last fast path and
// for bank rows), accumulate dot product and squared norm, reduce them with warp shuffles and fold
// the logit into an online logsumexp. With compute_grad the same pass adds the key, softmax-weighted
// online, into the warp's shared-memory D-vector (each lane owns its channels: no conflicts), so
// d loss / d query comes out of the forward without a second read of the keys. No Q x M x D
// tensor, no host sync.
// Backward: one thread per channel adds grad_loss * grad_rows into the dense gradient, rows in
// order (several queries may share a pixel; no atomics: reproducible); grad_loss is read on the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cosine_math.h"
#include "common/cuda_utils.cuh"
#include "common/math.h"
#include "common/tensor_utils.h"
#include "common/warp_reduce.cuh"
#include "contrast_infonce/contrast_infonce_checks.h"
#include "contrast_infonce/contrast_infonce_host.h"
#include "contrast_infonce/contrast_infonce_math.h"

namespace mona {
namespace {

constexpr int kWarps = 4;  // warps (queries) per block, fewer when D needs more shared memory

template <typename scalar_t>
struct Inputs {
  PixelView<const scalar_t> f;
  contrast_infonce_math::KeySource<scalar_t> keys;
  const at::opmath_type<scalar_t>* protos;
  const at::opmath_type<scalar_t>* weight;
  const int64_t* qidx;
  const int64_t* nidx;
  int64_t C, Q, M, D;
  at::opmath_type<scalar_t> inv_t;
};

// Stages the query vector in shared memory x[0..D) and returns |x| (eps-clamped), on all lanes.
template <typename scalar_t, typename acc_t>
__device__ acc_t stage_query(const PixelView<const scalar_t>& f, int64_t n, smem_ptr<acc_t> x, int lane) {
  const int64_t b = n / f.P;
  const scalar_t* base = f.data + b * f.stride_b + (n - b * f.P) * f.stride_p;
  acc_t sq = 0;
  for (int64_t d = lane; d < f.D; d += 32) {
    const acc_t v = static_cast<acc_t>(base[d * f.stride_d]);
    x[d] = v;
    sq += v * v;
  }
  // No __syncwarp(): lane l writes and later reads only x[l], x[l + 32], ... (the same partition
  // in warp_dot_square and the gradient), so no lane reads another's slot.
  return cosine_math::safe_norm(cuda::warp_sum(sq));
}

template <typename row_t, typename acc_t>
__device__ void warp_dot_square(const row_t* row, int64_t stride, smem_ptr<acc_t> x, int64_t D, int lane, acc_t& dot,
                                acc_t& sq) {
  acc_t a = 0, b = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const acc_t v = static_cast<acc_t>(row[d * stride]);
    a += v * x[d];
    b += v * v;
  }
  dot = cuda::warp_sum(a);
  sq = cuda::warp_sum(b);
}

template <typename scalar_t>
__global__ void infonce_forward_kernel(Inputs<scalar_t> in, at::opmath_type<scalar_t>* __restrict__ row_loss,
                                       at::opmath_type<scalar_t>* __restrict__ grad_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  MONA_DYNAMIC_SHARED(acc_t, smem);
  const bool with_grad = grad_rows != nullptr;
  const smem_ptr<acc_t> x = smem + threadIdx.y * (with_grad ? 2 : 1) * in.D;
  const smem_ptr<acc_t> acc = x + in.D;  // only used with_grad
  const int lane = threadIdx.x;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < in.C * in.Q;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t c = r / in.Q;
    acc_t* out = with_grad ? grad_rows + r * in.D : nullptr;
    if (!(in.weight[c] > acc_t(0))) {
      if (lane == 0) row_loss[r] = acc_t(0);
      if (out) {
        for (int64_t d = lane; d < in.D; d += 32) out[d] = acc_t(0);
      }
      continue;
    }
    const acc_t xn = stage_query(in.f, in.qidx[r], x, lane);
    const acc_t* proto = in.protos + c * in.D;
    acc_t dot, sq;
    warp_dot_square(proto, 1, x, in.D, lane, dot, sq);
    const acc_t inv0 = acc_t(1) / cosine_math::safe_norm(sq);
    const acc_t cos0 = dot * inv0 / xn, l0 = cos0 * in.inv_t;
    acc_t m = l0, s = 1, wcos = cos0;  // running sums weighted by exp(l_j - m), identical on all lanes
    if (out) {
      for (int64_t d = lane; d < in.D; d += 32) acc[d] = proto[d] * inv0;
    }
    for (int64_t j = 0; j < in.M; ++j) {
      int64_t stride;
      const scalar_t* row = in.keys.row(in.nidx[r * in.M + j], stride);
      warp_dot_square(row, stride, x, in.D, lane, dot, sq);
      const acc_t inv_kn = acc_t(1) / cosine_math::safe_norm(sq);
      const acc_t cosine = dot * inv_kn / xn;
      acc_t rescale, w;
      contrast_infonce_math::online_step(m, cosine * in.inv_t, rescale, w);
      s = s * rescale + w;
      wcos = wcos * rescale + w * cosine;
      if (out) {
        const acc_t alpha = w * inv_kn;
        for (int64_t d = lane; d < in.D; d += 32)
          acc[d] = acc[d] * rescale + alpha * static_cast<acc_t>(row[d * stride]);
      }
    }
    if (lane == 0) row_loss[r] = m + math::log(s) - l0;
    if (out) {
      const acc_t scale = in.weight[c] / static_cast<acc_t>(in.Q) * in.inv_t / xn;
      for (int64_t d = lane; d < in.D; d += 32) {
        out[d] = contrast_infonce_math::query_grad<acc_t>(scale, acc[d], s, proto[d] * inv0, wcos, cos0, x[d], xn);
      }
    }
    // No __syncwarp() before the next row: each lane rewrites only its own slots of x and acc.
  }
}

// Backward: one thread per channel d walks the C*Q rows in order and adds grad_loss * grad_rows[r, d]
// to the query pixel's gradient. Several queries may share a pixel; the fixed order (no atomics)
// makes the gradient bitwise reproducible.
template <typename scalar_t>
__global__ void infonce_scatter_grad_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_rows,
                                            const int64_t* __restrict__ qidx,
                                            const at::opmath_type<scalar_t>* __restrict__ weight,
                                            const at::opmath_type<scalar_t>* __restrict__ grad_loss, int64_t C,
                                            int64_t Q, PixelView<scalar_t> grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g = *grad_loss;
  for (int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; d < grad.D;
       d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int64_t r = 0; r < C * Q; ++r) {
      if (!(weight[r / Q] > acc_t(0))) continue;
      const int64_t n = qidx[r];
      scalar_t& dst = grad.at(n, d);
      dst = static_cast<scalar_t>(static_cast<acc_t>(dst) + g * grad_rows[r * grad.D + d]);
    }
  }
}

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const InfonceArgs& args) {
  using acc_t = at::opmath_type<scalar_t>;
  return {make_pixel_view<const scalar_t>(args.features),
          key_source<scalar_t>(args),
          args.prototypes.data_ptr<acc_t>(),
          args.class_weight.data_ptr<acc_t>(),
          args.query_index.data_ptr<int64_t>(),
          args.negative_index.data_ptr<int64_t>(),
          args.C,
          args.Q,
          args.M,
          args.D,
          acc_t(1) / static_cast<acc_t>(args.temperature)};
}

std::tuple<at::Tensor, at::Tensor> contrast_infonce_cuda(const at::Tensor& features, const at::Tensor& key_features,
                                                         const at::Tensor& prototypes, const at::Tensor& query_index,
                                                         const at::Tensor& negative_index,
                                                         const at::Tensor& class_weight, double temperature,
                                                         const std::optional<at::Tensor>& bank, bool compute_grad) {
  const cuda::DeviceGuard guard("contrast_infonce", {{"features", features},
                                                     {"key_features", key_features},
                                                     {"bank", bank},
                                                     {"prototypes", prototypes},
                                                     {"query_index", query_index},
                                                     {"negative_index", negative_index},
                                                     {"class_weight", class_weight}});
  InfonceArgs args = prepare_infonce("contrast_infonce", features, key_features, bank, prototypes, query_index,
                                     negative_index, class_weight, temperature);
  const auto opts = features.options().dtype(args.prototypes.scalar_type());
  at::Tensor row_loss = at::empty({args.C, args.Q}, opts);
  at::Tensor grad_rows = compute_grad ? at::empty({args.C, args.Q, args.D}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Each warp stages its query (and, with compute_grad, its gradient accumulator) in shared
    // memory: D values per vector. Blocks of 4 warps while that fits in 48 KiB, fewer warps up to
    // the device's opt-in limit (99 KiB on an RTX 3090: D <= 12672 fp32 / 6336 fp64 with gradients).
    const size_t per_warp = sizeof(acc_t) * (compute_grad ? 2 : 1) * args.D;
    const size_t limit = static_cast<size_t>(cuda::max_dynamic_shared_optin());
    TORCH_CHECK_VALUE(per_warp <= limit, "contrast_infonce (CUDA): D = ", args.D, " needs ", per_warp,
                      " bytes of shared memory per query, above this GPU's ", limit,
                      " (max D = ", limit / (sizeof(acc_t) * (compute_grad ? 2 : 1)), " for ", features.scalar_type(),
                      compute_grad ? " with gradients)" : ")");
    const int warps =
        static_cast<int>(std::max<size_t>(1, std::min<size_t>(kWarps, 48 * 1024 / std::max<size_t>(per_warp, 1))));
    const size_t smem = per_warp * warps;
    cuda::allow_dynamic_shared<infonce_forward_kernel<scalar_t>>(smem);
    const auto blocks = static_cast<unsigned int>(std::min<int64_t>((args.C * args.Q + warps - 1) / warps, 65535));
    cuda::launch<infonce_forward_kernel<scalar_t>>(blocks, dim3(32, warps), smem, cuda::stream(),
                                                   make_inputs<scalar_t>(args), row_loss.data_ptr<acc_t>(),
                                                   compute_grad ? grad_rows.data_ptr<acc_t>() : nullptr);
  });
  return {reduce_infonce_loss(row_loss, args.class_weight, args.Q), grad_rows};
}

at::Tensor contrast_infonce_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& features,
                                          const at::Tensor& query_index, const at::Tensor& class_weight,
                                          const at::Tensor& grad_rows) {
  const cuda::DeviceGuard guard(
      "contrast_infonce_backward",
      {{"features", features}, {"query_index", query_index}, {"class_weight", class_weight}, {"grad_rows", grad_rows}});
  contrast_infonce_checks::check_backward_inputs("contrast_infonce_backward", features, query_index, class_weight,
                                                 grad_rows);
  const at::Tensor f = view_features(features);
  at::Tensor grad = at::zeros_like(f);
  const int64_t C = query_index.size(0), Q = query_index.size(1), D = f.size(1);
  const at::Tensor qidx = query_index.contiguous();
  if (C * Q * D == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const at::Tensor rows = grad_rows.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const at::Tensor w = class_weight.to(rows.scalar_type()).contiguous();
        // grad_loss in the accumulation dtype, on the device (no host read)
        const at::Tensor g = grad_loss.to(features.device(), rows.scalar_type()).reshape({1}).contiguous();
        cuda::launch<infonce_scatter_grad_kernel<scalar_t>>(
            cuda::blocks_for(D), cuda::kThreads, 0, cuda::stream(), rows.data_ptr<acc_t>(), qidx.data_ptr<int64_t>(),
            w.data_ptr<acc_t>(), g.data_ptr<acc_t>(), C, Q, make_pixel_view<scalar_t>(grad));
      });
  return grad;
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("contrast_infonce", &contrast_infonce_cuda);
  m.impl("contrast_infonce_backward", &contrast_infonce_backward_cuda);
}

}  // namespace mona
