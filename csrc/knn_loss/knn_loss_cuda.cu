// mona::knn_loss — CUDA kernels.
//
// Parallel strategy. Selection: the queue is split into S chunks of consecutive entries
// (cuda::queue_splits: about 1024 blocks in all, >= 256 entries per chunk) and the grid is
// (S, rows), so a batch of a few rows still fills the GPU. A block (8 warps) takes one (chunk, row):
// a warp per queue entry of the chunk (entries j0 + warp, j0 + warp + 8, ...), lanes read the
// entry's d values coalesced and reduce teacher.q and q.q with shuffles; lane 0 keeps the warp's
// top k in a sorted insertion list in shared memory (knn_loss_math.h; k <= kMaxK), and thread 0
// merges the 8 lists into the chunk's sorted top k (fewer when the chunk is shorter), written to a
// [B, S, k] workspace. A select kernel (a block per row) merges the S sorted lists: at each of the k
// steps every thread looks at the heads of its lists, the block finds the best head (shuffles,
// then the 8 warps' winners in shared memory), and the list it came from advances. The neighbour
// order (knn_loss_math::better: similarity, then the lower index, NaN first) is a strict total
// order, so the selection is exactly the CPU kernel's whatever the split. Then a warp per neighbour
// computes cos(student, q), the block sums in a fixed order, and a 1-thread kernel averages the
// rows. No float atomics: the same inputs give the same bits on every run.
// Backward, in two kernels with no cross-block reduction: (1) a warp per (row, neighbour) computes
// student.q and 1 / |q| into [B, k] buffers (grid: neighbour groups x rows); (2) a block per
// (channel chunk, row) forms the row's sum of cosines and, per channel, sum_n a q_hat_n[c] over the
// neighbours in order (coalesced reads of the gathered queue rows), then the cosine chain rule.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cosine_math.h"
#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"
#include "common/warp_reduce.cuh"
#include "knn_loss/knn_loss_checks.h"
#include "knn_loss/knn_loss_math.h"

namespace mona {
namespace {
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

// Selection, pass 1: block (split, row i) -> the sorted top min(k, split size) entries of the split
// [split * split_len, min(K, (split + 1) * split_len)) by teacher similarity: top_vals / top_idx
// [B, S, k] (row-major), top_count [B, S].
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    knn_loss_topk_kernel(const scalar_t* __restrict__ teacher, const scalar_t* __restrict__ queue, int64_t B, int64_t K,
                         int64_t d, int k, int64_t S, int64_t split_len,
                         at::opmath_type<scalar_t>* __restrict__ top_vals, int64_t* __restrict__ top_idx,
                         int* __restrict__ top_count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t vals[kWarps][kMaxK];
  __shared__ int64_t idxs[kWarps][kMaxK];
  __shared__ int counts[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t split = blockIdx.x;
  const int64_t j0 = split * split_len, j1 = j0 + split_len < K ? j0 + split_len : K;
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const scalar_t* t = teacher + i * d;
    if (lane == 0) counts[warp] = 0;
    for (int64_t j = j0 + warp; j < j1; j += kWarps) {
      acc_t tq, qq;
      warp_dots(t, queue + j * d, d, lane, &tq, &qq);
      if (lane == 0)
        knn_loss_math::insert_topk(vals[warp], idxs[warp], &counts[warp], k, tq * cosine_math::inv_norm(qq), j);
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // k-way merge of the warps' sorted lists
      const int64_t row = i * S + split;
      int head[kWarps] = {0};
      int n = 0;
      for (; n < k; ++n) {
        int best = -1;
        for (int w = 0; w < kWarps; ++w) {
          if (head[w] >= counts[w]) continue;
          if (best < 0 || knn_loss_math::better(vals[w][head[w]], idxs[w][head[w]], vals[best][head[best]],
                                                idxs[best][head[best]])) {
            best = w;
          }
        }
        if (best < 0) break;  // a split shorter than k
        top_vals[row * k + n] = vals[best][head[best]];
        top_idx[row * k + n] = idxs[best][head[best]++];
      }
      top_count[row] = n;
    }
    __syncthreads();
  }
}

// Selection, pass 2, and the loss: a block per row. k-way merge of the row's S sorted split lists
// (list l belongs to thread l % blockDim.x; at most kListsPerThread each), then a warp per selected
// neighbour computes cos(student, q); the block sums them in a fixed order into row_sums[i].
constexpr int kListsPerThread = static_cast<int>((cuda::kTargetBlocks + kBlock - 1) / kBlock);
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    knn_loss_select_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ queue,
                           const at::opmath_type<scalar_t>* __restrict__ top_vals, const int64_t* __restrict__ top_idx,
                           const int* __restrict__ top_count, int64_t B, int64_t d, int k, int64_t S,
                           int64_t* __restrict__ indices, at::opmath_type<scalar_t>* __restrict__ row_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int win_has[kWarps];
  __shared__ acc_t win_val[kWarps];
  __shared__ int64_t win_idx[kWarps];
  __shared__ int64_t chosen[kMaxK];
  __shared__ acc_t red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    int head[kListsPerThread];
    for (int m = 0; m < kListsPerThread; ++m) head[m] = 0;
    for (int n = 0; n < k; ++n) {
      // this thread's best list head
      int has = 0;
      acc_t bv = 0;
      int64_t bi = 0;
      for (int m = 0; m < kListsPerThread; ++m) {
        const int64_t l = threadIdx.x + static_cast<int64_t>(m) * blockDim.x;
        if (l >= S || head[m] >= top_count[i * S + l]) continue;
        const int64_t pos = (i * S + l) * k + head[m];
        if (!has || knn_loss_math::better(top_vals[pos], top_idx[pos], bv, bi)) {
          has = 1;
          bv = top_vals[pos];
          bi = top_idx[pos];
        }
      }
      // the warp's best (a total order: every lane ends with the same winner)
      for (int off = 16; off > 0; off >>= 1) {
        const int oh = __shfl_xor_sync(0xffffffffu, has, off);
        const acc_t ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (oh && (!has || knn_loss_math::better(ov, oi, bv, bi))) {
          has = 1;
          bv = ov;
          bi = oi;
        }
      }
      if (lane == 0) {
        win_has[warp] = has;
        win_val[warp] = bv;
        win_idx[warp] = bi;
      }
      __syncthreads();
      has = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (win_has[w] && (!has || knn_loss_math::better(win_val[w], win_idx[w], bv, bi))) {
          has = 1;
          bv = win_val[w];
          bi = win_idx[w];
        }
      }
      // the splits together hold >= k entries (k <= K), so there is a winner; its list advances
      CUDA_KERNEL_ASSERT(has && "knn_loss: the split lists hold fewer than k entries");
      if (threadIdx.x == 0) {
        chosen[n] = bi;
        indices[i * k + n] = bi;
      }
      for (int m = 0; m < kListsPerThread; ++m) {
        const int64_t l = threadIdx.x + static_cast<int64_t>(m) * blockDim.x;
        if (l < S && head[m] < top_count[i * S + l] && top_idx[(i * S + l) * k + head[m]] == bi) ++head[m];
      }
      __syncthreads();  // win_* are rewritten by the next step
    }
    const scalar_t* s = student + i * d;
    const acc_t is = [&] {
      acc_t v = 0;
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) v += static_cast<acc_t>(s[c]) * static_cast<acc_t>(s[c]);
      return cosine_math::inv_norm(cuda::block_sum(v, red, kWarps));
    }();
    acc_t sum = 0;
    for (int n = warp; n < k; n += kWarps) {
      acc_t sq, qq;
      warp_dots(s, queue + chosen[n] * d, d, lane, &sq, &qq);
      sum += sq * is * cosine_math::inv_norm(qq);
    }
    const acc_t row = cuda::block_sum(lane == 0 ? sum : acc_t(0), red, kWarps);
    if (threadIdx.x == 0) row_sums[i] = row;
    // No barrier before the next row: block_sum ended with one after the last read of chosen and
    // red, and win_* / chosen are next written after the next row's barriers (race detector).
  }
}

// The loss: one thread averages the rows in order.
template <typename scalar_t>
__global__ void knn_loss_mean_kernel(const at::opmath_type<scalar_t>* __restrict__ row_sums, int64_t B, int64_t k,
                                     scalar_t* __restrict__ loss) {
  using acc_t = at::opmath_type<scalar_t>;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    acc_t total = 0;
    for (int64_t i = 0; i < B; ++i) total += row_sums[i];
    loss[0] = static_cast<scalar_t>(B > 0 ? total * knn_loss_math::neighbour_weight(acc_t(1), B, k) : acc_t(0));
  }
}

// Backward, pass 1: a warp per (row i, neighbour n) (grid: neighbour groups of kWarps x rows):
// sq[i, n] = student_i . q and invq[i, n] = 1 / |q| for q = queue[indices[i, n]].
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    knn_loss_backward_dots_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ queue,
                                  const int64_t* __restrict__ indices, int64_t B, int64_t d, int k,
                                  at::opmath_type<scalar_t>* __restrict__ sq,
                                  at::opmath_type<scalar_t>* __restrict__ invq) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (n >= k) return;  // whole warps only: the shuffles below see no exited lane
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    acc_t dot, qq;
    warp_dots(student + i * d, queue + indices[i * k + n] * d, d, lane, &dot, &qq);
    if (lane == 0) {
      sq[i * k + n] = dot;
      invq[i * k + n] = cosine_math::inv_norm(qq);
    }
  }
}

// Backward, pass 2: a block per (chunk of kGradChunk channels, row), a thread per channel:
// grad[i, c] = chain rule of sum_n a cos(s_i, q_n), with sum_n a q_hat_n[c] taken over the
// neighbours in order (a warp reads consecutive channels of one gathered queue row: coalesced).
constexpr int kGradWarps = 4;
constexpr int kGradChunk = kGradWarps * 32;
template <typename scalar_t>
__global__ void __launch_bounds__(kGradChunk)
    knn_loss_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                             const scalar_t* __restrict__ student, const scalar_t* __restrict__ queue,
                             const int64_t* __restrict__ indices, const at::opmath_type<scalar_t>* __restrict__ sq,
                             const at::opmath_type<scalar_t>* __restrict__ invq, int64_t B, int64_t d, int k,
                             at::opmath_type<scalar_t>* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kGradWarps];
  const acc_t a = knn_loss_math::neighbour_weight(grad_loss[0], B, k);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const scalar_t* s = student + i * d;
    acc_t v = 0;
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) v += static_cast<acc_t>(s[e]) * static_cast<acc_t>(s[e]);
    const acc_t ns2 = cuda::block_sum(v, red, kGradWarps);
    if (c >= d) continue;  // no barrier below
    const acc_t is = cosine_math::inv_norm(ns2), proj = cosine_math::projection(ns2);
    acc_t acos = 0, qsum = 0;
    for (int n = 0; n < k; ++n) {
      const acc_t iq = invq[i * k + n];
      acos += a * (sq[i * k + n] * is * iq);
      qsum += a * iq * static_cast<acc_t>(queue[indices[i * k + n] * d + c]);
    }
    grad[i * d + c] = cosine_math::grad_component(qsum, acos, static_cast<acc_t>(s[c]), is, proj);
  }
}

std::tuple<at::Tensor, at::Tensor> knn_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 const at::Tensor& queue, int64_t k) {
  const char* op = "knn_loss";
  knn_loss_checks::check_inputs(op, student, teacher, queue, k);
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"teacher", teacher}, {"queue", queue}});
  const auto acc = acc_dtype(student.scalar_type());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), q = queue.contiguous();
  at::Tensor indices = at::empty({B, k}, s.options().dtype(at::kLong));
  at::Tensor row_sums = at::empty({B}, s.options().dtype(acc));
  at::Tensor loss = at::empty({}, s.options());
  const cuda::QueueSplits splits = cuda::queue_splits(B, K);
  TORCH_CHECK(splits.count <= static_cast<int64_t>(kListsPerThread) * kBlock, op, ": internal error: ", splits.count,
              " queue splits exceed the select kernel's ", kListsPerThread * kBlock);
  at::Tensor top_vals = at::empty({B, splits.count, k}, s.options().dtype(acc));
  at::Tensor top_idx = at::empty({B, splits.count, k}, s.options().dtype(at::kLong));
  at::Tensor top_count = at::empty({B, splits.count}, s.options().dtype(at::kInt));
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "knn_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B > 0) {
      const unsigned int rows = static_cast<unsigned int>(std::min<int64_t>(B, 65535));
      cuda::launch<knn_loss_topk_kernel<scalar_t>>(
          dim3(static_cast<unsigned int>(splits.count), rows), kBlock, 0, stream, t.data_ptr<scalar_t>(),
          q.data_ptr<scalar_t>(), B, K, d, static_cast<int>(k), splits.count, splits.len, top_vals.data_ptr<acc_t>(),
          top_idx.data_ptr<int64_t>(), top_count.data_ptr<int>());
      cuda::launch<knn_loss_select_kernel<scalar_t>>(
          rows, kBlock, 0, stream, s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), top_vals.data_ptr<acc_t>(),
          top_idx.data_ptr<int64_t>(), top_count.data_ptr<int>(), B, d, static_cast<int>(k), splits.count,
          indices.data_ptr<int64_t>(), row_sums.data_ptr<acc_t>());
    }
    cuda::launch<knn_loss_mean_kernel<scalar_t>>(1, 1, 0, stream, row_sums.data_ptr<acc_t>(), B, k,
                                                 loss.data_ptr<scalar_t>());
  });
  return {loss, indices};
}

at::Tensor knn_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& queue,
                                  const at::Tensor& indices) {
  const char* op = "knn_loss_backward";
  knn_loss_checks::check_backward_inputs(op, student, queue, indices);
  const int64_t B = student.size(0), d = student.size(1), k = indices.size(1);
  if (B == 0 || k == 0) return at::zeros_like(student);
  const cuda::DeviceGuard guard(op, {{"student", student}, {"queue", queue}, {"indices", indices}});
  const auto acc = acc_dtype(student.scalar_type());
  const at::Tensor s = student.contiguous(), q = queue.contiguous(), idx = indices.contiguous();
  const at::Tensor g = grad_loss.to(student.device(), acc).reshape({1}).contiguous();
  at::Tensor grad = at::empty({B, d}, s.options().dtype(acc));
  at::Tensor sq = at::empty({B, k}, s.options().dtype(acc));
  at::Tensor invq = at::empty({B, k}, s.options().dtype(acc));
  const auto stream = cuda::stream();
  const unsigned int rows = static_cast<unsigned int>(std::min<int64_t>(B, 65535));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "knn_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch<knn_loss_backward_dots_kernel<scalar_t>>(
        dim3(static_cast<unsigned int>((k + kWarps - 1) / kWarps), rows), kBlock, 0, stream, s.data_ptr<scalar_t>(),
        q.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), B, d, static_cast<int>(k), sq.data_ptr<acc_t>(),
        invq.data_ptr<acc_t>());
    cuda::launch<knn_loss_backward_kernel<scalar_t>>(
        dim3(static_cast<unsigned int>(std::max<int64_t>(1, (d + kGradChunk - 1) / kGradChunk)), rows), kGradChunk, 0,
        stream, g.data_ptr<acc_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
        sq.data_ptr<acc_t>(), invq.data_ptr<acc_t>(), B, d, static_cast<int>(k), grad.data_ptr<acc_t>());
  });
  return grad.to(student.scalar_type());
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("knn_loss", &knn_loss_cuda);
  m.impl("knn_loss_backward", &knn_loss_backward_cuda);
}

}  // namespace mona
