// mona::similarity_kl — CUDA kernels.
//
// Parallel strategy: the queue is split into S chunks of consecutive entries (cuda::queue_splits:
// about 1024 blocks in all, >= 256 entries per chunk), and the grid is (S, rows): a batch of a few
// rows still fills the GPU. A block (8 warps) takes one (chunk, row): a warp per queue entry of the
// chunk (entries j0 + warp, j0 + warp + 8, ...), its 32 lanes reading the entry's d values with
// coalesced loads and reducing the three dot products (student.q, teacher.q, q.q) with shuffles.
// Each warp keeps an online-softmax / KL state (similarity_kl_math.h, common/online_lse.h); thread 0 merges the 8 warps'
// states in warp order and writes the chunk's state to a [B, S] workspace. A finish kernel (a
// thread per row) merges the S states in chunk order into the row's KL and logsumexps, and a
// 1-thread kernel averages the rows. Nothing of size K is stored, there are no float atomics, and
// every merge runs in a fixed order: the same inputs give the same bits on every run.
// Backward: the same (chunk, row) grid with the saved logsumexps; each warp accumulates
// sum_j a_j q_hat_j over its entries in its own slice of shared memory (8 x d), the block sums the
// slices in warp order into a [B, S, d] workspace (plus sum_j a_j cos_j into [B, S]); a finish
// kernel (a block per row, threads over d) adds the S partials in chunk order and applies the
// cosine chain rule.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cosine_math.h"
#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"
#include "common/warp_reduce.cuh"
#include "similarity_kl/similarity_kl_checks.h"
#include "similarity_kl/similarity_kl_math.h"

namespace mona {
namespace {
constexpr int kWarps = 8;
constexpr int kBlock = kWarps * 32;
constexpr int64_t kStateWords = 5;  // acc_t words of a similarity_kl_math::OnlineKL state

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
  iq = cosine_math::inv_norm(cuda::warp_sum(c));
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_sq_norm(const scalar_t* x, int64_t d, acc_t* shared) {
  acc_t v = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) v += static_cast<acc_t>(x[k]) * static_cast<acc_t>(x[k]);
  return cuda::block_sum(v, shared, kWarps);
}

// Pass 1 of the forward: block (split, row i) -> the online-KL state of row i over the split's
// entries [split * split_len, min(K, (split + 1) * split_len)), into partial[i * S + split].
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    similarity_kl_forward_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                 const scalar_t* __restrict__ queue, int64_t B, int64_t K, int64_t d, int64_t S,
                                 int64_t split_len, at::opmath_type<scalar_t> inv_tau_s,
                                 at::opmath_type<scalar_t> inv_tau_t,
                                 similarity_kl_math::OnlineKL<at::opmath_type<scalar_t>>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps];
  __shared__ similarity_kl_math::OnlineKL<acc_t> states[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t split = blockIdx.x;
  const int64_t j0 = split * split_len, j1 = j0 + split_len < K ? j0 + split_len : K;
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const scalar_t* s = student + i * d;
    const scalar_t* t = teacher + i * d;
    const acc_t is = cosine_math::inv_norm(row_sq_norm(s, d, red)) * inv_tau_s;
    const acc_t it = cosine_math::inv_norm(row_sq_norm(t, d, red)) * inv_tau_t;
    auto st = similarity_kl_math::OnlineKL<acc_t>::empty();
    for (int64_t j = j0 + warp; j < j1; j += kWarps) {
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
      partial[i * S + split] = total;
    }
    // No barrier before the next row: states is next written after the next row's two block_sum
    // calls (four barriers), which also order red (race detector: no access crosses this point).
  }
}

// Pass 2 of the forward: a thread per row merges the row's S split states in split order.
template <typename acc_t>
__global__ void similarity_kl_finish_kernel(const similarity_kl_math::OnlineKL<acc_t>* __restrict__ partial, int64_t B,
                                            int64_t S, acc_t* __restrict__ kl_rows, acc_t* __restrict__ lse_s,
                                            acc_t* __restrict__ lse_t) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    auto total = partial[i * S];
    for (int64_t s = 1; s < S; ++s) total.merge(partial[i * S + s]);
    kl_rows[i] = total.kl();
    lse_s[i] = total.lse_s();
    lse_t[i] = total.lse_t();
  }
}

// Pass 3 of the forward: one thread averages the B rows in order.
template <typename scalar_t>
__global__ void similarity_kl_mean_kernel(const at::opmath_type<scalar_t>* __restrict__ kl_rows, int64_t B,
                                          scalar_t* __restrict__ loss) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    at::opmath_type<scalar_t> total = 0;
    for (int64_t i = 0; i < B; ++i) total += kl_rows[i];
    loss[0] = static_cast<scalar_t>(B > 0 ? total / static_cast<at::opmath_type<scalar_t>>(B) : total);
  }
}

// Pass 1 of the backward: block (split, row i) -> sum over the split's entries of a_j q_hat_j
// (part_q[i, split, :]) and of a_j cos_j (part_cos[i, split]), a_j = entry_weight.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    similarity_kl_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                                  const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                  const scalar_t* __restrict__ queue,
                                  const at::opmath_type<scalar_t>* __restrict__ lse_s,
                                  const at::opmath_type<scalar_t>* __restrict__ lse_t, int64_t B, int64_t K, int64_t d,
                                  int64_t S, int64_t split_len, at::opmath_type<scalar_t> inv_tau_s,
                                  at::opmath_type<scalar_t> inv_tau_t, at::opmath_type<scalar_t> inv_batch,
                                  at::opmath_type<scalar_t>* __restrict__ part_q,
                                  at::opmath_type<scalar_t>* __restrict__ part_cos) {
  using acc_t = at::opmath_type<scalar_t>;
  MONA_DYNAMIC_SHARED(acc_t, accum);  // [kWarps, d]
  __shared__ acc_t red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const acc_t scale = grad_loss[0] * inv_batch;  // 1 / B from the host: no division slow path
  const int64_t split = blockIdx.x;
  const int64_t j0 = split * split_len, j1 = j0 + split_len < K ? j0 + split_len : K;
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    for (int64_t k = threadIdx.x; k < kWarps * d; k += blockDim.x) accum[k] = acc_t(0);
    const scalar_t* s = student + i * d;
    const scalar_t* t = teacher + i * d;
    const acc_t is =
        cosine_math::inv_norm(row_sq_norm(s, d, red));  // (its __syncthreads also orders the zeroing above)
    const acc_t it = cosine_math::inv_norm(row_sq_norm(t, d, red)) * inv_tau_t;
    acc_t c = 0;
    const smem_ptr<acc_t> my = accum + warp * d;
    for (int64_t j = j0 + warp; j < j1; j += kWarps) {
      const scalar_t* q = queue + j * d;
      acc_t ds, dt, iq;
      warp_queue_dots(s, t, q, d, lane, ds, dt, iq);
      const acc_t cos_s = ds * is * iq;
      const acc_t w =
          similarity_kl_math::entry_weight(cos_s * inv_tau_s, dt * it * iq, lse_s[i], lse_t[i], inv_tau_s, scale);
      c += w * cos_s;
      const acc_t wq = w * iq;
      for (int64_t k = lane; k < d; k += 32) my[k] += wq * static_cast<acc_t>(q[k]);
    }
    // every lane of a warp holds the same c: count it once per warp (the barrier inside also
    // makes every warp's accum slice visible to the loop below)
    const acc_t acos = cuda::block_sum(lane == 0 ? c : acc_t(0), red, kWarps);
    acc_t* out = part_q + (i * S + split) * d;
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      acc_t g = 0;
      for (int w = 0; w < kWarps; ++w) g += accum[w * d + k];
      out[k] = g;
    }
    if (threadIdx.x == 0) part_cos[i * S + split] = acos;
    __syncthreads();
  }
}

// Pass 2 of the backward: a block per row, threads over d: adds the row's S partials in split
// order and applies the cosine chain rule (common/cosine_math.h).
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    similarity_kl_backward_finish_kernel(const scalar_t* __restrict__ student,
                                         const at::opmath_type<scalar_t>* __restrict__ part_q,
                                         const at::opmath_type<scalar_t>* __restrict__ part_cos, int64_t B, int64_t d,
                                         int64_t S, at::opmath_type<scalar_t>* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps];
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const scalar_t* s = student + i * d;
    const acc_t ns2 = row_sq_norm(s, d, red);
    const acc_t is = cosine_math::inv_norm(ns2), proj = cosine_math::projection(ns2);
    acc_t c = 0;
    for (int64_t sp = threadIdx.x; sp < S; sp += blockDim.x) c += part_cos[i * S + sp];
    const acc_t acos = cuda::block_sum(c, red, kWarps);
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      acc_t g = 0;
      for (int64_t sp = 0; sp < S; ++sp) g += part_q[(i * S + sp) * d + k];
      grad[i * d + k] = cosine_math::grad_component(g, acos, static_cast<acc_t>(s[k]), is, proj);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_kl_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                  const at::Tensor& queue, double tau_s, double tau_t) {
  const char* op = "similarity_kl";
  similarity_kl_checks::check_inputs(op, student, teacher, queue, tau_s, tau_t);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"teacher", teacher}, {"queue", queue}});
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), q = queue.contiguous();
  at::Tensor kl_rows = at::empty({B}, s.options().dtype(acc));
  at::Tensor lse_s = at::empty({B}, s.options().dtype(acc));
  at::Tensor lse_t = at::empty({B}, s.options().dtype(acc));
  at::Tensor loss = at::empty({}, s.options());
  const auto stream = cuda::stream();
  const cuda::QueueSplits splits = cuda::queue_splits(B, K);
  // per (row, split): the 5 acc_t of an OnlineKL state
  at::Tensor partial = at::empty({B, splits.count, kStateWords}, s.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "similarity_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using State = similarity_kl_math::OnlineKL<acc_t>;
    static_assert(sizeof(State) == kStateWords * sizeof(acc_t), "OnlineKL must be 5 packed acc_t");
    if (B > 0) {
      auto* states = reinterpret_cast<State*>(partial.data_ptr<acc_t>());
      const dim3 grid(static_cast<unsigned int>(splits.count), static_cast<unsigned int>(std::min<int64_t>(B, 65535)));
      cuda::launch<similarity_kl_forward_kernel<scalar_t>>(
          grid, kBlock, 0, stream, s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, K, d,
          splits.count, splits.len, static_cast<acc_t>(1.0 / tau_s), static_cast<acc_t>(1.0 / tau_t), states);
      cuda::launch<similarity_kl_finish_kernel<acc_t>>(
          cuda::blocks_for(B), cuda::kThreads, 0, stream, static_cast<const State*>(states), B, splits.count,
          kl_rows.data_ptr<acc_t>(), lse_s.data_ptr<acc_t>(), lse_t.data_ptr<acc_t>());
    }
    cuda::launch<similarity_kl_mean_kernel<scalar_t>>(1, 1, 0, stream, kl_rows.data_ptr<acc_t>(), B,
                                                      loss.data_ptr<scalar_t>());
  });
  return {loss, lse_s, lse_t};
}

at::Tensor similarity_kl_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student,
                                       const at::Tensor& teacher, const at::Tensor& queue,
                                       const at::Tensor& lse_student, const at::Tensor& lse_teacher, double tau_s,
                                       double tau_t) {
  const char* op = "similarity_kl_backward";
  similarity_kl_checks::check_inputs(op, student, teacher, queue, tau_s, tau_t);
  const cuda::DeviceGuard guard(op, {{"student", student},
                                     {"teacher", teacher},
                                     {"queue", queue},
                                     {"lse_student", lse_student},
                                     {"lse_teacher", lse_teacher}});
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
  const cuda::QueueSplits splits = cuda::queue_splits(B, K);
  at::Tensor part_q = at::empty({B, splits.count, d}, s.options().dtype(acc));
  at::Tensor part_cos = at::empty({B, splits.count}, s.options().dtype(acc));
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "similarity_kl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::allow_dynamic_shared<similarity_kl_backward_kernel<scalar_t>>(shared_bytes);
    const dim3 grid(static_cast<unsigned int>(splits.count), static_cast<unsigned int>(std::min<int64_t>(B, 65535)));
    cuda::launch<similarity_kl_backward_kernel<scalar_t>>(
        grid, kBlock, shared_bytes, stream, g.data_ptr<acc_t>(), s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(),
        q.data_ptr<scalar_t>(), ls.data_ptr<acc_t>(), lt.data_ptr<acc_t>(), B, K, d, splits.count, splits.len,
        static_cast<acc_t>(1.0 / tau_s), static_cast<acc_t>(1.0 / tau_t),
        static_cast<acc_t>(1.0 / static_cast<double>(B)), part_q.data_ptr<acc_t>(), part_cos.data_ptr<acc_t>());
    cuda::launch<similarity_kl_backward_finish_kernel<scalar_t>>(
        static_cast<unsigned int>(std::min<int64_t>(B, 65535)), kBlock, 0, stream, s.data_ptr<scalar_t>(),
        part_q.data_ptr<acc_t>(), part_cos.data_ptr<acc_t>(), B, d, splits.count, grad.data_ptr<acc_t>());
  });
  return grad.to(student.scalar_type());
}

// compute_grad: the gradient for grad_loss = 1 right after the forward, on the stream (no sync).
// The CPU kernel fuses the two (its BLAS products dominate); here the backward kernel re-reads the queue.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> similarity_kl_with_grad_cuda(const at::Tensor& student,
                                                                                        const at::Tensor& teacher,
                                                                                        const at::Tensor& queue,
                                                                                        double tau_s, double tau_t,
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
