// Host-side argument checks of knn_loss and knn_loss_backward, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/tensor_utils.h"

namespace mona {
namespace knn_loss_checks {

// Largest k on every device: the CUDA kernel keeps each warp's sorted top-k list in shared memory
// (8 warps x k x (value + index) <= 32 KiB in float64). The CPU kernel applies the same limit so
// that a configuration that runs on one device runs on the other.
constexpr int64_t kMaxK = 256;

inline void check_k(const char* op, int64_t k, int64_t K) {
  TORCH_CHECK_VALUE(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK_VALUE(k <= kMaxK, op, ": k must be <= ", kMaxK, " (on every device), got k=", k);
  TORCH_CHECK_VALUE(k <= K, op, ": k=", k, " exceeds the queue size K=", K, " (need k <= K)");
}

// knn_loss: the (student, teacher, queue) triple and k.
inline void check_inputs(const char* op, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& queue,
                         int64_t k) {
  check_student_teacher_queue(op, student, teacher, queue);
  check_k(op, k, queue.size(0));
}

inline void check_indices(const char* op, const at::Tensor& student, const at::Tensor& indices) {
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(0) == student.size(0) && indices.scalar_type() == at::kLong, op,
                    ": indices must be [B, k] int64 with B = ", student.size(0), ", got ", shape_str(indices), " ",
                    indices.scalar_type());
  TORCH_CHECK_VALUE(indices.size(1) <= kMaxK, op, ": indices has k=", indices.size(1), " columns, at most ", kMaxK);
}

// knn_loss_backward: student and queue (the teacher's place is taken by the student), and the
// forward's indices.
inline void check_backward_inputs(const char* op, const at::Tensor& student, const at::Tensor& queue,
                                  const at::Tensor& indices) {
  check_student_teacher_queue(op, student, student, queue);
  check_indices(op, student, indices);
}

}  // namespace knn_loss_checks
}  // namespace mona
