#include "common/tensor_utils.h"

namespace mona {

c10::Device check_same_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& t : tensors) {
    if (t.tensor == nullptr || !t.tensor->defined()) continue;
    if (first == nullptr) {
      first = &t;
      continue;
    }
    TORCH_CHECK_VALUE(t.tensor->device() == first->tensor->device(), op, ": ", t.name, " is on ", t.tensor->device(),
                      " but ", first->name, " is on ", first->tensor->device(), "; all tensors must be on one device");
  }
  TORCH_CHECK_VALUE(first != nullptr, op, ": no tensor argument is defined");
  return first->tensor->device();
}

void check_student_teacher_queue(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& queue) {
  TORCH_CHECK_VALUE(student.dim() == 2, op, ": student must be [B, d], got shape ", shape_str(student));
  TORCH_CHECK_VALUE(teacher.sizes() == student.sizes(), op, ": teacher must have the student's shape ",
                    shape_str(student), ", got ", shape_str(teacher));
  TORCH_CHECK_VALUE(queue.dim() == 2 && queue.size(1) == student.size(1), op,
                    ": queue must be [K, d] with d = ", student.size(1), ", got shape ", shape_str(queue));
  TORCH_CHECK_VALUE(queue.size(0) > 0, op, ": queue must hold at least one entry, got shape ", shape_str(queue));
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()), op,
                   ": student must be float32/float64/float16/bfloat16, got ", student.scalar_type());
  TORCH_CHECK_TYPE(teacher.scalar_type() == student.scalar_type() && queue.scalar_type() == student.scalar_type(), op,
                   ": teacher and queue must have the student's dtype ", student.scalar_type(), ", got ",
                   teacher.scalar_type(), " and ", queue.scalar_type());
  TORCH_CHECK_VALUE(teacher.device() == student.device() && queue.device() == student.device(), op, ": teacher (",
                    teacher.device(), ") and queue (", queue.device(), ") must be on the student's device ",
                    student.device());
}

}  // namespace mona
