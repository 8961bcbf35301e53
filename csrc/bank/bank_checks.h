// Host-side argument checks of bank_push / queue_push, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/tensor_utils.h"

namespace mona {
namespace bank_checks {

inline void check_state(const char* op, const char* name, const at::Tensor& storage, const at::Tensor& ptr,
                        const at::Tensor& fill) {
  TORCH_CHECK_TYPE(at::isFloatingType(storage.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   storage.scalar_type());
  TORCH_CHECK_VALUE(storage.is_contiguous(), op, ": ", name, " must be contiguous (a registered buffer)");
  const int64_t C = storage.size(0);
  TORCH_CHECK_VALUE(storage.size(1) > 0, op, ": ", name, " must have K > 0 slots, got shape ", shape_str(storage));
  TORCH_CHECK_TYPE(ptr.scalar_type() == at::kLong && fill.scalar_type() == at::kLong, op,
                   ": ptr and fill must be int64, got ", ptr.scalar_type(), " and ", fill.scalar_type());
  TORCH_CHECK_VALUE(ptr.numel() == C && fill.numel() == C && ptr.is_contiguous() && fill.is_contiguous(), op,
                    ": ptr and fill must be contiguous with ", C, " element(s), got shapes ", shape_str(ptr), " and ",
                    shape_str(fill));
  TORCH_CHECK_VALUE(ptr.device() == storage.device() && fill.device() == storage.device(), op, ": ptr (", ptr.device(),
                    ") and fill (", fill.device(), ") must be on the ", name, "'s device ", storage.device());
}

inline void check_keys(const char* op, const at::Tensor& storage, const at::Tensor& keys) {
  TORCH_CHECK_VALUE(keys.dim() == 2 && keys.size(1) == storage.size(-1), op,
                    ": keys must be [M, D] with D = ", storage.size(-1), ", got shape ", shape_str(keys));
  TORCH_CHECK_TYPE(at::isFloatingType(keys.scalar_type()), op, ": keys must be floating, got ", keys.scalar_type());
  TORCH_CHECK_VALUE(keys.device() == storage.device(), op, ": keys are on ", keys.device(), " but the bank is on ",
                    storage.device());
  TORCH_CHECK_VALUE(keys.size(0) < (int64_t{1} << 31), op, ": at most 2^31 - 1 keys per push, got ", keys.size(0));
}

inline void check_bank_push(const at::Tensor& storage, const at::Tensor& ptr, const at::Tensor& fill,
                            const at::Tensor& keys, const at::Tensor& labels, const std::optional<at::Tensor>& valid,
                            const std::optional<at::Tensor>& priority, int64_t cap) {
  const char* op = "bank_push";
  TORCH_CHECK_VALUE(storage.dim() == 3, op, ": storage must be [C, K, D], got shape ", shape_str(storage));
  check_state(op, "storage", storage, ptr, fill);
  check_keys(op, storage, keys);
  const int64_t M = keys.size(0);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, op,
                   ": labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == M, op, ": labels must be [M] = [", M,
                    "] to match keys, got shape ", shape_str(labels));
  TORCH_CHECK_VALUE(labels.device() == storage.device(), op, ": labels are on ", labels.device(),
                    " but the bank is on ", storage.device());
  if (valid.has_value()) {
    TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, op, ": valid must be bool, got ", valid->scalar_type());
    TORCH_CHECK_VALUE(valid->dim() == 1 && valid->size(0) == M && valid->device() == storage.device(), op,
                      ": valid must be [M] = [", M, "] on ", storage.device(), ", got shape ", shape_str(*valid),
                      " on ", valid->device());
  }
  TORCH_CHECK_VALUE(cap >= -1, op, ": cap must be -1 (no cap) or >= 0, got ", cap);
  if (cap >= 0) {
    TORCH_CHECK_VALUE(priority.has_value(), op, ": cap=", cap,
                      " needs a priority tensor (the random subset is the cap keys of highest priority)");
  }
  if (priority.has_value()) {
    TORCH_CHECK_TYPE(priority->scalar_type() == at::kFloat, op, ": priority must be float32, got ",
                     priority->scalar_type());
    TORCH_CHECK_VALUE(priority->dim() == 1 && priority->size(0) == M && priority->device() == storage.device(), op,
                      ": priority must be [M] = [", M, "] on ", storage.device(), ", got shape ", shape_str(*priority),
                      " on ", priority->device());
  }
}

inline void check_queue_push(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& fill,
                             const at::Tensor& keys) {
  const char* op = "queue_push";
  TORCH_CHECK_VALUE(queue.dim() == 2, op, ": queue must be [K, D], got shape ", shape_str(queue));
  check_state(op, "queue", queue.unsqueeze(0), ptr, fill);
  check_keys(op, queue, keys);
}

}  // namespace bank_checks
}  // namespace mona
