// mona::bank_push / mona::queue_push — schemas. CPU kernels: bank_cpu.cpp; CUDA kernels:
// bank_cuda.cu; Python wrappers + fake kernels: mona_ext/ops/bank.py; nn.Modules: mona_ext/banks.py;
// tests: tests/ops/test_bank.py, tests/ops/test_bank_distributed.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Class-aware ring buffer, updated in place (no host sync, no allocation that depends on data).
  //   storage [C, K, D] float (any float dtype), ptr [C] int64 (next write slot), fill [C] int64 (<= K)
  //   keys [M, D] (same dtype and device as storage), labels [M] int64/int32: a class in [0, C) or
  //   ignore_index (skipped); valid optional [M] bool (false -> skipped);
  //   cap: at most `cap` keys per class per push (-1: no cap). With cap >= 0, `priority` [M] float32
  //   is required: per class the `cap` valid keys of highest priority are kept (ties -> lower index),
  //   in input order. Uniform random priorities (the Python wrapper draws them from a Generator)
  //   make this a uniform random subset without replacement.
  // The n_c selected keys of class c are written as if pushed one by one in input order: the key of
  // rank j goes to slot (ptr[c] + j) mod K, so only the last min(n_c, K) are actually written;
  // then ptr[c] = (ptr[c] + n_c) mod K and fill[c] = min(fill[c] + n_c, K).
  m.def(
      "bank_push(Tensor(a!) storage, Tensor(b!) ptr, Tensor(c!) fill, Tensor keys, Tensor labels,"
      " Tensor? valid=None, Tensor? priority=None, int cap=-1, int ignore_index=-1) -> ()");
  // Plain FIFO queue: queue [K, D], ptr [1] int64, fill [1] int64; keys [M, D] all pushed in order
  // (the last min(M, K) are kept). Same semantics as bank_push with one class.
  m.def("queue_push(Tensor(a!) queue, Tensor(b!) ptr, Tensor(c!) fill, Tensor keys) -> ()");
}
