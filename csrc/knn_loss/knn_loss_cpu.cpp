// mona::knn_loss — CPU kernels.
//
// Parallel strategy: the queue is cut into chunks of kQueueChunk rows; at::parallel_for hands
// ranges of chunks to threads. A thread computes its chunk's inverse row norms, then scores every
// teacher row against the chunk while the chunk (kQueueChunk x d values) stays in L2 and the
// teacher row in L1 — the queue is read from memory once, not once per teacher row — and keeps a
// top-k list per teacher row (knn_loss_math.h, the selection the CUDA kernel runs). The threads'
// lists are merged per row at the end. The neighbour order is a strict total order (similarity,
// then queue index), so the merged top k equals a sequential scan's whatever the split: the result
// does not depend on the thread count. Dot products: one fixed-order vector loop for every pair
// (simd::dot_f32; not a GEMM, whose blocking can give an exact copy of a queue row a last-bit
// different dot product and break the tie rule). Then the k student cosines per row (B x k dots).
// Backward: B x k x d multiply-adds, parallel over rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cosine_math.h"
#include "common/simd_cpu.h"
#include "common/tensor_utils.h"
#include "knn_loss/knn_loss_checks.h"
#include "knn_loss/knn_loss_math.h"

namespace mona {
namespace {

// Queue rows per chunk: 128 x 512 fp32 values = 256 KB, which stays in L2 while all teacher rows
// are scored against it.
constexpr int64_t kQueueChunk = 128;

using simd::dot;

std::tuple<at::Tensor, at::Tensor> knn_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                const at::Tensor& queue, int64_t k) {
  const char* op = "knn_loss";
  knn_loss_checks::check_inputs(op, student, teacher, queue, k);
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  const auto acc = acc_dtype(student.scalar_type());
  at::Tensor indices = at::empty({B, k}, student.options().dtype(at::kLong));
  at::Tensor loss = at::zeros({}, student.options().dtype(acc));
  if (B == 0) return {loss.to(student.scalar_type()), indices};
  const at::Tensor s = student.to(acc).contiguous(), t = teacher.to(acc).contiguous(), q = queue.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "knn_loss_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t *tp = t.data_ptr<acc_t>(), *sp = s.data_ptr<acc_t>(), *qp = q.data_ptr<acc_t>();
    std::vector<acc_t> inq(K), row_sum(B);
    // One top-k list per (thread, teacher row).
    const int64_t threads = at::get_num_threads();
    std::vector<acc_t> part_vals(threads * B * k);
    std::vector<int64_t> part_idx(threads * B * k);
    std::vector<int> part_count(threads * B, 0);
    const int64_t chunks = (K + kQueueChunk - 1) / kQueueChunk;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const int64_t tid = at::get_thread_num();
      acc_t* vals = part_vals.data() + tid * B * k;
      int64_t* idx = part_idx.data() + tid * B * k;
      int* count = part_count.data() + tid * B;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t j0 = c * kQueueChunk, j1 = std::min(K, j0 + kQueueChunk);
        for (int64_t j = j0; j < j1; ++j) inq[j] = cosine_math::inv_norm(dot(qp + j * d, qp + j * d, d));
        // the teacher's own norm is a positive per-row factor: it does not change the ranking
        for (int64_t i = 0; i < B; ++i) {
          for (int64_t j = j0; j < j1; ++j) {
            knn_loss_math::insert_topk(vals + i * k, idx + i * k, count + i, static_cast<int>(k),
                                       dot(tp + i * d, qp + j * d, d) * inq[j], j);
          }
        }
      }
    });
    int64_t* out_idx = indices.data_ptr<int64_t>();
    at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      std::vector<acc_t> vals(k);
      for (int64_t i = b; i < e; ++i) {
        int64_t* idx = out_idx + i * k;
        int count = 0;
        for (int64_t th = 0; th < threads; ++th) {
          const int64_t o = (th * B + i) * k;
          for (int n = 0; n < part_count[th * B + i]; ++n) {
            knn_loss_math::insert_topk(vals.data(), idx, &count, static_cast<int>(k), part_vals[o + n],
                                       part_idx[o + n]);
          }
        }
        const acc_t is = cosine_math::inv_norm(dot(sp + i * d, sp + i * d, d));
        acc_t sum = 0;
        for (int64_t n = 0; n < k; ++n) sum += dot(sp + i * d, qp + idx[n] * d, d) * is * inq[idx[n]];
        row_sum[i] = sum;
      }
    });
    acc_t total = 0;
    for (int64_t i = 0; i < B; ++i) total += row_sum[i];
    loss.fill_(-total / (static_cast<acc_t>(B) * static_cast<acc_t>(k)));
  });
  return {loss.to(student.scalar_type()), indices};
}

at::Tensor knn_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& queue,
                                 const at::Tensor& indices) {
  const char* op = "knn_loss_backward";
  knn_loss_checks::check_backward_inputs(op, student, queue, indices);
  const int64_t B = student.size(0), d = student.size(1), k = indices.size(1);
  if (B == 0 || k == 0) return at::zeros_like(student);
  const auto acc = acc_dtype(student.scalar_type());
  const at::Tensor s = student.to(acc).contiguous(), q = queue.to(acc).contiguous();
  const at::Tensor idx_t = indices.contiguous();
  at::Tensor grad = at::empty({B, d}, s.options());
  const double g = grad_loss.to(at::kDouble).item<double>();  // CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES(acc, "knn_loss_backward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t *sp = s.data_ptr<acc_t>(), *qp = q.data_ptr<acc_t>();
    const int64_t* ip = idx_t.data_ptr<int64_t>();
    acc_t* out = grad.data_ptr<acc_t>();
    const acc_t a = knn_loss_math::neighbour_weight(static_cast<acc_t>(g), B, k);
    at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      std::vector<acc_t> qsum(d);
      for (int64_t i = b; i < e; ++i) {
        const acc_t* si = sp + i * d;
        const acc_t ns2 = dot(si, si, d), is = cosine_math::inv_norm(ns2), proj = cosine_math::projection(ns2);
        std::fill(qsum.begin(), qsum.end(), acc_t(0));
        acc_t acos = 0;
        for (int64_t n = 0; n < k; ++n) {
          const acc_t* qn = qp + ip[i * k + n] * d;
          const acc_t iq = cosine_math::inv_norm(dot(qn, qn, d));
          acos += a * dot(si, qn, d) * is * iq;
          for (int64_t c = 0; c < d; ++c) qsum[c] += a * iq * qn[c];
        }
        for (int64_t c = 0; c < d; ++c) out[i * d + c] = cosine_math::grad_component(qsum[c], acos, si[c], is, proj);
      }
    });
  });
  return grad.to(student.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("knn_loss", &knn_loss_cpu);
  m.impl("knn_loss_backward", &knn_loss_backward_cpu);
}

}  // namespace mona
