// Test-only kernels with planted bugs, and their fixed twins, to prove that the CUDA emulation
// reports what it is for (tests/ops/test_emu_harness.py). Compiled only into the emulation
// library (tests/ops/emu.py), never into the extension: csrc/emu is excluded from the build.
//
// Each op takes x [n] float32 (n <= 1024, one block of n threads) and `fixed`:
//   planted_missing_barrier: reverses x through shared memory; the bug omits the __syncthreads()
//     between the writes and the reads.
//   planted_shared_oob: each thread reads its right neighbour's staged value; the bug lets the last
//     thread read one element past the dynamic shared memory.
//   planted_divergent_barrier: a block sum whose barrier sits inside `if (threadIdx.x < 16)`.
//   planted_warp_exited_lane: lanes >= 16 return before a full-mask warp shuffle.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"

namespace mona {
namespace {

__global__ void reverse_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  MONA_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  s[t] = x[t];
  if (fixed) __syncthreads();
  y[t] = s[n - 1 - t];
}

__global__ void neighbour_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  MONA_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  y[t] = fixed ? s[(t + 1) % n] : s[t + 1];
}

__global__ void divergent_sum_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  MONA_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  s[t] = x[t];
  float total = 0;
  if (fixed || t < 16) {  // the bug: only the first 16 threads reach the barrier
    __syncthreads();
    for (int i = 0; i < n; ++i) total += s[i];
  }
  y[t] = total;
}

__global__ void exited_lane_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  const int t = threadIdx.x;
  if (!fixed && (t & 31) >= 16) return;
  const float v = __shfl_xor_sync(0xffffffffu, x[t], 1);
  y[t] = v;
}

template <auto Kernel>
at::Tensor run(const at::Tensor& x, bool fixed, size_t shared_per_thread) {
  TORCH_CHECK_VALUE(x.dim() == 1 && x.scalar_type() == at::kFloat && x.numel() >= 1 && x.numel() <= 1024,
                    "planted bug ops: x must be float32 [n], 1 <= n <= 1024");
  const cuda::DeviceGuard guard("planted", {{"x", x}});
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int n = static_cast<int>(xc.numel());
  cuda::launch<Kernel>(1, n, shared_per_thread * n, cuda::stream(), xc.data_ptr<float>(), y.data_ptr<float>(), n,
                       fixed);
  return y;
}

at::Tensor planted_missing_barrier(const at::Tensor& x, bool fixed) {
  return run<reverse_kernel>(x, fixed, sizeof(float));
}
at::Tensor planted_shared_oob(const at::Tensor& x, bool fixed) {
  return run<neighbour_kernel>(x, fixed, sizeof(float));
}
at::Tensor planted_divergent_barrier(const at::Tensor& x, bool fixed) {
  return run<divergent_sum_kernel>(x, fixed, sizeof(float));
}
at::Tensor planted_warp_exited_lane(const at::Tensor& x, bool fixed) { return run<exited_lane_kernel>(x, fixed, 0); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mona_emu, m) {
  m.def("planted_missing_barrier(Tensor x, bool fixed) -> Tensor");
  m.def("planted_shared_oob(Tensor x, bool fixed) -> Tensor");
  m.def("planted_divergent_barrier(Tensor x, bool fixed) -> Tensor");
  m.def("planted_warp_exited_lane(Tensor x, bool fixed) -> Tensor");
}

TORCH_LIBRARY_IMPL(mona_emu, CPU, m) {
  m.impl("planted_missing_barrier", &planted_missing_barrier);
  m.impl("planted_shared_oob", &planted_shared_oob);
  m.impl("planted_divergent_barrier", &planted_divergent_barrier);
  m.impl("planted_warp_exited_lane", &planted_warp_exited_lane);
}

}  // namespace mona
