// Host-side argument checks of similarity_kl and similarity_kl_backward, shared by the CPU and CUDA
// kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/tensor_utils.h"

namespace mona {
namespace similarity_kl_checks {

inline void check_inputs(const char* op, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& queue,
                         double tau_s, double tau_t) {
  check_student_teacher_queue(op, student, teacher, queue);
  TORCH_CHECK_VALUE(tau_s > 0 && tau_t > 0, op, ": temperatures must be positive, got tau_student=", tau_s,
                    " and tau_teacher=", tau_t);
}

}  // namespace similarity_kl_checks
}  // namespace mona
