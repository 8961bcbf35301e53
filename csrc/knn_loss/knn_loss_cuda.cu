// mona::knn_loss — CUDA kernels.
//
// Parallel strategy: one block (8 warps) per row of the batch. Selection: a warp per queue entry
// (entries j = warp, warp + 8, ...), lanes read the entry's d values coalesced and reduce
// teacher.q and q.q with shuffles; lane 0 keeps the warp's top k in a sorted insertion list in
// shared memory (knn_loss_math.h; k <= kMaxK), and thread 0 merges the 8 lists. Loss: a warp per
// neighbour computes cos(student, q) and the block sums; per-row sums go to a [B] buffer and a
// 1-thread kernel averages (deterministic). Backward: a warp per neighbour computes its cosine and
// inverse norm into shared memory, then threads over d accumulate sum_n q_hat_n (coalesced rows).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cosine_math.h"
#include "common/tensor_utils.h"
#include "common/cuda_utils.cuh"
#include "common/warp_reduce.cuh"
#include "knn_loss/knn_loss_checks.h"
#include "knn_loss/knn_loss_math.h"

namespace mona {
namespace {

namespace km = knn_loss_math;
namespace cm = cosine_math;
constexpr int kWarps = 8;
constexpr int kBlock = kWarps * 32;
constexpr int kMaxK = static_cast<int>(knn_loss_checks::kMaxK);

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void warp_dots(const scalar_t* x, const scalar_t* q, int64_t d, int lane, acc_t* xq,
                                          acc_t* qq) {
  acc_t a = 0, b = 0;
  for (int64_t c = lane; c < d; c += 32) {
    const acc_t qv = static_cast<acc_t>(q[c]);
    a += static_cast<acc_t>(x[c]) * qv;
    b += qv * qv;
  }
  *xq = cuda::warp_sum(a);
  *qq = cuda::warp_sum(b);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    knn_loss_forward_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                            const scalar_t* __restrict__ queue, int64_t B, int64_t K, int64_t d, int k,
                            int64_t* __restrict__ indices, at::opmath_type<scalar_t>* __restrict__ row_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t vals[kWarps][kMaxK];
  __shared__ int64_t idxs[kWarps][kMaxK];
  __shared__ int counts[kWarps];
  __shared__ int64_t chosen[kMaxK];
  __shared__ acc_t red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const scalar_t* t = teacher + i * d;
    const scalar_t* s = student + i * d;
    if (lane == 0) counts[warp] = 0;
    __syncwarp();
    for (int64_t j = warp; j < K; j += kWarps) {
      acc_t tq, qq;
      warp_dots(t, queue + j * d, d, lane, &tq, &qq);
      if (lane == 0) km::insert_topk(vals[warp], idxs[warp], &counts[warp], k, tq * cm::inv_norm(qq), j);
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // k-way merge of the warps' sorted lists
      int head[kWarps] = {0};
      for (int n = 0; n < k; ++n) {
        int best = -1;
        for (int w = 0; w < kWarps; ++w) {
          if (head[w] >= counts[w]) continue;
          if (best < 0 || km::better(vals[w][head[w]], idxs[w][head[w]], vals[best][head[best]], idxs[best][head[best]])) {
            best = w;
          }
        }
        chosen[n] = idxs[best][head[best]++];
        indices[i * k + n] = chosen[n];
      }
    }
    __syncthreads();
    const acc_t is = [&] {
      acc_t v = 0;
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) v += static_cast<acc_t>(s[c]) * static_cast<acc_t>(s[c]);
      return cm::inv_norm(cuda::block_sum_all<kWarps>(v, red));
    }();
    acc_t sum = 0;
    for (int n = warp; n < k; n += kWarps) {
      acc_t sq, qq;
      warp_dots(s, queue + chosen[n] * d, d, lane, &sq, &qq);
      sum += sq * is * cm::inv_norm(qq);
    }
    const acc_t row = cuda::block_sum_all<kWarps>(lane == 0 ? sum : acc_t(0), red);
    if (threadIdx.x == 0) row_sums[i] = row;
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void knn_loss_mean_kernel(const at::opmath_type<scalar_t>* __restrict__ row_sums, int64_t B, int64_t k,
                                     scalar_t* __restrict__ loss) {
  using acc_t = at::opmath_type<scalar_t>;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    acc_t total = 0;
    for (int64_t i = 0; i < B; ++i) total += row_sums[i];
    loss[0] = static_cast<scalar_t>(B > 0 ? total * km::neighbour_weight(acc_t(1), B, k) : acc_t(0));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    knn_loss_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                             const scalar_t* __restrict__ student, const scalar_t* __restrict__ queue,
                             const int64_t* __restrict__ indices, int64_t B, int64_t d, int k,
                             at::opmath_type<scalar_t>* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t cosv[kMaxK], invq[kMaxK];
  __shared__ acc_t red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const acc_t a = km::neighbour_weight(grad_loss[0], B, k);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const scalar_t* s = student + i * d;
    acc_t v = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) v += static_cast<acc_t>(s[c]) * static_cast<acc_t>(s[c]);
    const acc_t ns2 = cuda::block_sum_all<kWarps>(v, red);
    const acc_t is = cm::inv_norm(ns2), proj = cm::projection(ns2);
    for (int n = warp; n < k; n += kWarps) {
      acc_t sq, qq;
      warp_dots(s, queue + indices[i * k + n] * d, d, lane, &sq, &qq);
      if (lane == 0) {
        invq[n] = cm::inv_norm(qq);
        cosv[n] = sq * is * invq[n];
      }
    }
    __syncthreads();
    acc_t acos = 0;
    for (int n = 0; n < k; ++n) acos += a * cosv[n];
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      acc_t qsum = 0;
      for (int n = 0; n < k; ++n) qsum += a * invq[n] * static_cast<acc_t>(queue[indices[i * k + n] * d + c]);
      grad[i * d + c] = cm::grad_component(qsum, acos, static_cast<acc_t>(s[c]), is, proj);
    }
    __syncthreads();
  }
}


std::tuple<at::Tensor, at::Tensor> knn_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 const at::Tensor& queue, int64_t k) {
  const char* op = "knn_loss";
  check_student_teacher_queue(op, student, teacher, queue);
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  knn_loss_checks::check_k(op, k, K);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"teacher", teacher}, {"queue", queue}});
  const auto acc = acc_dtype(student.scalar_type());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), q = queue.contiguous();
  at::Tensor indices = at::empty({B, k}, s.options().dtype(at::kLong));
  at::Tensor row_sums = at::empty({B}, s.options().dtype(acc));
  at::Tensor loss = at::empty({}, s.options());
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "knn_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B > 0) {
      cuda::launch<knn_loss_forward_kernel<scalar_t>>(static_cast<unsigned int>(std::min<int64_t>(B, 65535)), kBlock, 0, stream,
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), B, K, d, static_cast<int>(k),
          indices.data_ptr<int64_t>(), row_sums.data_ptr<acc_t>());
    }
    cuda::launch<knn_loss_mean_kernel<scalar_t>>(1, 1, 0, stream,
        row_sums.data_ptr<acc_t>(), B, k, loss.data_ptr<scalar_t>());
  });
  return {loss, indices};
}

at::Tensor knn_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& queue,
                                  const at::Tensor& indices) {
  const char* op = "knn_loss_backward";
  check_student_teacher_queue(op, student, student, queue);
  knn_loss_checks::check_indices(op, student, indices);
  const int64_t B = student.size(0), d = student.size(1), k = indices.size(1);
  if (B == 0 || k == 0) return at::zeros_like(student);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"queue", queue}, {"indices", indices}});
  const auto acc = acc_dtype(student.scalar_type());
  const at::Tensor s = student.contiguous(), q = queue.contiguous(), idx = indices.contiguous();
  const at::Tensor g = grad_loss.to(student.device(), acc).reshape({1}).contiguous();
  at::Tensor grad = at::empty({B, d}, s.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "knn_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch<knn_loss_backward_kernel<scalar_t>>(static_cast<unsigned int>(std::min<int64_t>(B, 65535)), kBlock, 0, cuda::stream(),
        g.data_ptr<acc_t>(), s.data_ptr<scalar_t>(),
                                                           q.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), B, d,
                                                           static_cast<int>(k), grad.data_ptr<acc_t>());
  });
  return grad.to(student.scalar_type());
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("knn_loss", &knn_loss_cuda);
  m.impl("knn_loss_backward", &knn_loss_backward_cuda);
}

}  // namespace mona
