// mona::similarity_kl — CUDA kernels.
//
// Parallel strategy: one block (8 warps) per row of the batch; a warp per queue entry (entries
// j = warp, warp + 8, ...), its 32 lanes reading the entry's d values with coalesced loads and
// reducing the three dot products (student.q, teacher.q, q.q) with shuffles. Each warp keeps an
// online-softmax / KL state (similarity_kl_math.h), merged across warps at the end: one pass over
// the queue, nothing of size K stored. Per-row KL and logsumexps go to small [B] buffers; a
// 1-thread kernel averages (deterministic). Backward: same pass with the saved logsumexps; each
// warp accumulates sum_j a_j q_hat_j in its own slice of shared memory (8 x d), summed at the end.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cosine_math.h"
#include "common/tensor_utils.h"
#include "common/cuda_utils.cuh"
#include "common/embedding_checks.h"
#include "common/warp_reduce.cuh"
#include "similarity_kl/similarity_kl_math.h"

namespace mona {
namespace {

namespace sk = similarity_kl_math;
namespace cm = cosine_math;
constexpr int kWarps = 8;
constexpr int kBlock = kWarps * 32;

// The warp's dot products of student and teacher rows with queue entry q, and q's inverse norm
// (lanes stride over d; results on every lane).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void warp_queue_dots(const scalar_t* s, const scalar_t* t, const scalar_t* q, int64_t d,
                                                int lane, acc_t& ds, acc_t& dt, acc_t& iq) {
  acc_t a = 0, b = 0, c = 0;
  for (int64_t k = lane; k < d; k += 32) {
    const acc_t qv = static_cast<acc_t>(q[k]);
    a += static_cast<acc_t>(s[k]) * qv;
    b += static_cast<acc_t>(t[k]) * qv;
    c += qv * qv;
  }
  ds = cuda::warp_sum(a);
  dt = cuda::warp_sum(b);
  iq = cm::inv_norm(cuda::warp_sum(c));
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_sq_norm(const scalar_t* x, int64_t d, acc_t* shared) {
  acc_t v = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) v += static_cast<acc_t>(x[k]) * static_cast<acc_t>(x[k]);
  return cuda::block_sum_all<kWarps>(v, shared);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    similarity_kl_forward_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                 const scalar_t* __restrict__ queue, int64_t B, int64_t K, int64_t d,
                                 at::opmath_type<scalar_t> inv_tau_s, at::opmath_type<scalar_t> inv_tau_t,
                                 at::opmath_type<scalar_t>* __restrict__ kl_rows,
                                 at::opmath_type<scalar_t>* __restrict__ lse_s,
                                 at::opmath_type<scalar_t>* __restrict__ lse_t) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps];
  __shared__ sk::OnlineKL<acc_t> states[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const scalar_t* s = student + i * d;
    const scalar_t* t = teacher + i * d;
    const acc_t is = cm::inv_norm(row_sq_norm(s, d, red)) * inv_tau_s;
    const acc_t it = cm::inv_norm(row_sq_norm(t, d, red)) * inv_tau_t;
    auto st = sk::OnlineKL<acc_t>::empty();
    for (int64_t j = warp; j < K; j += kWarps) {
      const scalar_t* q = queue + j * d;
      acc_t ds, dt, iq;
      warp_queue_dots(s, t, q, d, lane, ds, dt, iq);
      st.update(ds * is * iq, dt * it * iq);
    }
    if (lane == 0) states[warp] = st;
    __syncthreads();
    if (threadIdx.x == 0) {
      auto total = states[0];
      for (int w = 1; w < kWarps; ++w) total.merge(states[w]);
      kl_rows[i] = total.kl();
      lse_s[i] = total.lse_s();
      lse_t[i] = total.lse_t();
    }
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void similarity_kl_mean_kernel(const at::opmath_type<scalar_t>* __restrict__ kl_rows, int64_t B,
                                          scalar_t* __restrict__ loss) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    at::opmath_type<scalar_t> total = 0;
    for (int64_t i = 0; i < B; ++i) total += kl_rows[i];
    loss[0] = static_cast<scalar_t>(B > 0 ? total / static_cast<at::opmath_type<scalar_t>>(B) : total);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    similarity_kl_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                                  const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                  const scalar_t* __restrict__ queue, const at::opmath_type<scalar_t>* __restrict__ lse_s,
                                  const at::opmath_type<scalar_t>* __restrict__ lse_t, int64_t B, int64_t K, int64_t d,
                                  at::opmath_type<scalar_t> inv_tau_s, at::opmath_type<scalar_t> inv_tau_t,
                                  at::opmath_type<scalar_t> inv_batch, at::opmath_type<scalar_t>* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  MONA_DYNAMIC_SHARED(acc_t, accum);  // [kWarps, d]
  __shared__ acc_t red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const acc_t scale = grad_loss[0] * inv_batch;  // 1 / B from the host: no division slow path
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    for (int64_t k = threadIdx.x; k < kWarps * d; k += blockDim.x) accum[k] = acc_t(0);
    const scalar_t* s = student + i * d;
    const scalar_t* t = teacher + i * d;
    const acc_t ns2 = row_sq_norm(s, d, red);  // (its __syncthreads also orders the zeroing above)
    const acc_t is = cm::inv_norm(ns2);
    const acc_t it = cm::inv_norm(row_sq_norm(t, d, red)) * inv_tau_t;
    acc_t c = 0;
    const smem_ptr<acc_t> my = accum + warp * d;
    for (int64_t j = warp; j < K; j += kWarps) {
      const scalar_t* q = queue + j * d;
      acc_t ds, dt, iq;
      warp_queue_dots(s, t, q, d, lane, ds, dt, iq);
      const acc_t cos_s = ds * is * iq;
      const acc_t w = sk::entry_weight(cos_s * inv_tau_s, dt * it * iq, lse_s[i], lse_t[i], inv_tau_s, scale);
      c += w * cos_s;
      const acc_t wq = w * iq;
      for (int64_t k = lane; k < d; k += 32) my[k] += wq * static_cast<acc_t>(q[k]);
    }
    // every lane of a warp holds the same c: count it once per warp
    const acc_t acos = cuda::block_sum_all<kWarps>(lane == 0 ? c : acc_t(0), red);
    const acc_t proj = cm::projection(ns2);
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      acc_t g = 0;
      for (int w = 0; w < kWarps; ++w) g += accum[w * d + k];
      grad[i * d + k] = cm::grad_component(g, acos, static_cast<acc_t>(s[k]), is, proj);
    }
    __syncthreads();
  }
}


void check_taus(const char* op, double tau_s, double tau_t) {
  TORCH_CHECK_VALUE(tau_s > 0 && tau_t > 0, op, ": temperatures must be positive, got tau_student=", tau_s,
                    " and tau_teacher=", tau_t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_kl_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                  const at::Tensor& queue, double tau_s, double tau_t) {
  const char* op = "similarity_kl";
  check_student_teacher_queue(op, student, teacher, queue);
  check_taus(op, tau_s, tau_t);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"teacher", teacher}, {"queue", queue}});
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), q = queue.contiguous();
  at::Tensor kl_rows = at::empty({B}, s.options().dtype(acc));
  at::Tensor lse_s = at::empty({B}, s.options().dtype(acc));
  at::Tensor lse_t = at::empty({B}, s.options().dtype(acc));
  at::Tensor loss = at::empty({}, s.options());
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "similarity_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B > 0) {
      cuda::launch<similarity_kl_forward_kernel<scalar_t>>(static_cast<unsigned int>(std::min<int64_t>(B, 65535)), kBlock, 0, stream,
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, K, d,
          static_cast<acc_t>(1.0 / tau_s), static_cast<acc_t>(1.0 / tau_t), kl_rows.data_ptr<acc_t>(),
          lse_s.data_ptr<acc_t>(), lse_t.data_ptr<acc_t>());
    }
    cuda::launch<similarity_kl_mean_kernel<scalar_t>>(1, 1, 0, stream,
        kl_rows.data_ptr<acc_t>(), B, loss.data_ptr<scalar_t>());
  });
  return {loss, lse_s, lse_t};
}

at::Tensor similarity_kl_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                       const at::Tensor& queue, const at::Tensor& lse_student,
                                       const at::Tensor& lse_teacher, double tau_s, double tau_t) {
  const char* op = "similarity_kl_backward";
  check_student_teacher_queue(op, student, teacher, queue);
  check_taus(op, tau_s, tau_t);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"teacher", teacher}, {"queue", queue},
                                     {"lse_student", lse_student}, {"lse_teacher", lse_teacher}});
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  // Each of the 8 warps accumulates its d-vector in shared memory; the kernel also has 8 static
  // acc_t (red[]), and static + dynamic must fit the device's opt-in limit (99 KiB on an RTX 3090:
  // d <= 3167 in float32 / 1583 in float64).
  const size_t elem = c10::elementSize(acc);
  const size_t shared_bytes = static_cast<size_t>(kWarps) * d * elem;
  const size_t limit = static_cast<size_t>(cuda::max_dynamic_shared_optin()) - kWarps * elem;
  TORCH_CHECK_VALUE(shared_bytes <= limit, op, ": the CUDA kernel supports d <= ", limit / (kWarps * elem),
                    " on this GPU for ", student.scalar_type(), " embeddings, got d = ", d);
  if (B == 0) return at::zeros_like(student);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), q = queue.contiguous();
  const at::Tensor g = grad_loss.to(student.device(), acc).reshape({1}).contiguous();
  const at::Tensor ls = lse_student.to(acc).contiguous(), lt = lse_teacher.to(acc).contiguous();
  at::Tensor grad = at::empty({B, d}, s.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "similarity_kl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::allow_dynamic_shared<similarity_kl_backward_kernel<scalar_t>>(shared_bytes);
    cuda::launch<similarity_kl_backward_kernel<scalar_t>>(static_cast<unsigned int>(std::min<int64_t>(B, 65535)), kBlock, shared_bytes, cuda::stream(),
        g.data_ptr<acc_t>(), s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
        ls.data_ptr<acc_t>(), lt.data_ptr<acc_t>(), B, K, d, static_cast<acc_t>(1.0 / tau_s),
        static_cast<acc_t>(1.0 / tau_t), static_cast<acc_t>(1.0 / static_cast<double>(B)), grad.data_ptr<acc_t>());
  });
  return grad.to(student.scalar_type());
}

// compute_grad: the gradient for grad_loss = 1 right after the forward, on the stream (no sync).
// The CPU kernel fuses the two (its BLAS products dominate); here the backward kernel re-reads the queue.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> similarity_kl_with_grad_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& queue, double tau_s, double tau_t,
    bool compute_grad) {
  auto [loss, lse_s, lse_t] = similarity_kl_cuda(student, teacher, queue, tau_s, tau_t);
  at::Tensor grad = compute_grad ? similarity_kl_backward_cuda(at::ones({}, loss.options()), student, teacher, queue,
                                                               lse_s, lse_t, tau_s, tau_t)
                                 : at::empty({0}, student.options());
  return {loss, lse_s, lse_t, grad};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("similarity_kl", &similarity_kl_with_grad_cuda);
  m.impl("similarity_kl_backward", &similarity_kl_backward_cuda);
}

}  // namespace mona
