// mona::bank_push / mona::queue_push — CPU kernels.
//
// Parallel strategy: the rank of every key inside its class (a per-class prefix count over the
// input order) is one serial pass over the M labels (cheap: M integers); with a cap, each class's
// threshold is found with std::nth_element on its (priority, index) order keys. The row copies —
// the only O(M * D) work — run in parallel over keys with at::parallel_for; two surviving keys
// never share a slot, so no synchronisation is needed. ptr / fill are updated at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "bank/bank_checks.h"
#include "bank/bank_math.h"

namespace mona {
namespace {

// labels == nullptr: every key belongs to class 0 (the FIFO queue).
template <typename index_t>
void push_impl(at::Tensor& storage, at::Tensor& ptr, at::Tensor& fill, const at::Tensor& keys_in, const index_t* labels,
               const bool* valid, const float* priority, int64_t cap, int64_t ignore_index) {
  const int64_t C = storage.size(0), K = storage.size(1), D = storage.size(2), M = keys_in.size(0);
  if (M == 0) return;
  const at::Tensor keys = keys_in.to(storage.scalar_type()).contiguous();
  auto class_of = [&](int64_t i) -> int64_t {
    if (!labels) return 0;
    const index_t lab = labels[i];
    TORCH_CHECK_VALUE(bank_math::is_class(lab, C) || static_cast<int64_t>(lab) == ignore_index,
                      "bank_push: labels contain ", static_cast<int64_t>(lab), " (at index ", i,
                      "), which is neither in [0, num_classes=", C, ") nor ignore_index=", ignore_index);
    if (!bank_math::is_class(lab, C) || (valid && !valid[i])) return -1;
    return static_cast<int64_t>(lab);
  };
  std::vector<int64_t> cls(M), rank(M, -1), n(C, 0);
  for (int64_t i = 0; i < M; ++i) cls[i] = class_of(i);
  std::vector<uint64_t> threshold(C, ~uint64_t{0});
  std::vector<char> none(C, 0);
  if (cap >= 0) {
    std::vector<std::vector<uint64_t>> keys_of(C);
    for (int64_t i = 0; i < M; ++i) {
      if (cls[i] >= 0) keys_of[cls[i]].push_back(bank_math::order_key(priority[i], i));
    }
    for (int64_t c = 0; c < C; ++c) {
      auto& v = keys_of[c];
      if (cap == 0) {
        none[c] = 1;
      } else if (static_cast<int64_t>(v.size()) > cap) {
        std::nth_element(v.begin(), v.begin() + (cap - 1), v.end());
        threshold[c] = v[cap - 1];
      }
    }
  }
  for (int64_t i = 0; i < M; ++i) {
    const int64_t c = cls[i];
    if (c < 0 || none[c]) continue;
    if (cap >= 0 && bank_math::order_key(priority[i], i) > threshold[c]) continue;
    rank[i] = n[c]++;
  }
  int64_t* p = ptr.data_ptr<int64_t>();
  int64_t* f = fill.data_ptr<int64_t>();
  const size_t row_bytes = static_cast<size_t>(D) * storage.element_size();
  char* dst = static_cast<char*>(storage.data_ptr());
  const char* src = static_cast<const char*>(keys.data_ptr());
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = cls[i], r = rank[i];
      if (r < 0 || !bank_math::survives(r, n[c], K)) continue;
      const int64_t s = bank_math::slot(p[c], r, K);
      std::memcpy(dst + (c * K + s) * row_bytes, src + i * row_bytes, row_bytes);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    p[c] = bank_math::next_ptr(p[c], n[c], K);
    f[c] = bank_math::next_fill(f[c], n[c], K);
  }
}

void bank_push_cpu(at::Tensor storage, at::Tensor ptr, at::Tensor fill, const at::Tensor& keys,
                   const at::Tensor& labels, const std::optional<at::Tensor>& valid,
                   const std::optional<at::Tensor>& priority, int64_t cap, int64_t ignore_index) {
  bank_checks::check_bank_push(storage, ptr, fill, keys, labels, valid, priority, cap);
  const at::Tensor lab = labels.contiguous();
  const at::Tensor v = valid.has_value() ? valid->contiguous() : at::Tensor();
  const at::Tensor pr = priority.has_value() ? priority->contiguous() : at::Tensor();
  AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "bank_push_cpu", [&] {
    push_impl<index_t>(storage, ptr, fill, keys, lab.data_ptr<index_t>(), v.defined() ? v.data_ptr<bool>() : nullptr,
                       pr.defined() ? pr.data_ptr<float>() : nullptr, cap, ignore_index);
  });
}

void queue_push_cpu(at::Tensor queue, at::Tensor ptr, at::Tensor fill, const at::Tensor& keys) {
  bank_checks::check_queue_push(queue, ptr, fill, keys);
  at::Tensor storage = queue.unsqueeze(0);
  push_impl<int64_t>(storage, ptr, fill, keys, nullptr, nullptr, nullptr, -1, -1);
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("bank_push", &bank_push_cpu);
  m.impl("queue_push", &queue_push_cpu);
}

}  // namespace mona
