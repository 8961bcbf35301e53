// Host-side helpers shared by every op: small argument-check helpers with messages that name the
// argument (each op's own checks are in its <op>_checks.h), and the PixelView construction from a `[B, D, H, W]` or `[N, D]` tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>

#include "common/pixel_view.h"

namespace mona {

// "features [B, D, H, W] or [N, D]" -> PixelView. Tensors whose H and W cannot be merged into one
// stride (rare: e.g. a crop of a map) must be made contiguous by the caller (see view_features).
template <typename T>
PixelView<T> make_pixel_view(const at::Tensor& t) {
  PixelView<T> v;
  v.data = static_cast<T*>(t.data_ptr());
  if (t.dim() == 2) {
    v.B = 1;
    v.P = t.size(0);
    v.D = t.size(1);
    v.stride_b = 0;
    v.stride_p = t.stride(0);
    v.stride_d = t.stride(1);
  } else {
    v.B = t.size(0);
    v.D = t.size(1);
    v.P = t.size(2) * t.size(3);
    v.stride_b = t.stride(0);
    v.stride_d = t.stride(1);
    v.stride_p = t.size(3) == 1 ? t.stride(2) : t.stride(3);
  }
  return v;
}

// H and W of a `[B, D, H, W]` map merge into one pixel index with a single stride unless the
// map is a non-contiguous crop; only then is a copy made (in the tensor's own memory format).
inline bool pixels_mergeable(const at::Tensor& t) {
  return t.dim() != 4 || t.size(2) <= 1 || t.size(3) <= 1 || t.stride(2) == t.size(3) * t.stride(3);
}
inline at::Tensor view_features(const at::Tensor& t) {
  return pixels_mergeable(t) ? t : t.contiguous(t.suggest_memory_format());
}

// Accumulation dtype of the kernels: float64 for float64 inputs, float32 otherwise (fp16/bf16 too).
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// An argument of an op, by name, for the device checks (an empty optional is skipped).
struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;
  NamedTensor(const char* n, const at::Tensor& t) : name(n), tensor(&t) {}
  NamedTensor(const char* n, const std::optional<at::Tensor>& t) : name(n), tensor(t.has_value() ? &*t : nullptr) {}
};

// Every defined tensor on the device of the first one, else a ValueError naming both arguments
// ("op: labels is on cpu but features is on cuda:0"). Returns that device.
c10::Device check_same_device(const char* op, std::initializer_list<NamedTensor> tensors);

// Checks shared by the ops that take (student [B, d], teacher [B, d], queue [K, d]): similarity_kl and
// knn_loss (their <op>_checks.h call it). Throws c10::Error (ValueError/TypeError in Python)
// naming the argument, prefixed by `op`.
void check_student_teacher_queue(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& queue);

}  // namespace mona
