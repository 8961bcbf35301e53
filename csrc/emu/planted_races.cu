// Test-only kernels with planted data races, and their race-free twins, to prove that the
// emulation's race detector reports them (tests/ops/test_emu_races.py). Compiled only into the
// emulation library (tests/ops/emu.py), never into the extension.
//
// Each op takes x [n] float32 (1 <= n <= 1024) and `fixed`, and runs one block of n threads (the
// global one: two blocks). The shared-memory kernels first fill a static __shared__ array and pass
// a __syncthreads(), so every race below is one between two threads of one barrier epoch, found
// whatever order the threads run in:
//   planted_race_raw: thread t writes buf[t] and reads its left neighbour's buf[t - 1]; the bug
//     omits the __syncthreads() between (read after write under the forward schedule).
//   planted_race_war: thread t reads buf[t + 1] and then overwrites buf[t]; the bug omits the
//     __syncthreads() between (write after read).
//   planted_race_waw: every thread stores its x into one shared `total`; the fixed twin adds it
//     with atomicAdd (atomics do not race with each other).
//   planted_race_warp: lanes exchange values through shared memory (lane t reads lane t ^ 1's
//     slot); the bug omits the __syncwarp() between the write and the read.
//   planted_race_global: two blocks of n threads; thread t of each block writes y[t] (the bug: a
//     plain store, so the blocks write one address) or adds to it with atomicAdd (the twin).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"

namespace mona {
namespace {

__global__ void race_raw_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  __shared__ float raw_buf[1024];
  const int t = threadIdx.x;
  raw_buf[t] = 0.0f;
  __syncthreads();
  raw_buf[t] = x[t];
  if (fixed) __syncthreads();
  y[t] = raw_buf[(t + n - 1) % n];
}

__global__ void race_war_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  __shared__ float war_buf[1024];
  const int t = threadIdx.x;
  war_buf[t] = x[t];
  __syncthreads();
  const float right = war_buf[(t + 1) % n];
  if (fixed) __syncthreads();
  war_buf[t] = 2.0f * right;
  __syncthreads();
  y[t] = war_buf[t];
}

__global__ void race_waw_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  __shared__ float waw_total;
  const int t = threadIdx.x;
  if (t == 0) waw_total = 0.0f;
  __syncthreads();
  if (fixed) {
    atomicAdd(&waw_total, x[t]);
  } else {
    waw_total = x[t];
  }
  __syncthreads();
  y[t] = waw_total;
}

__global__ void race_warp_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  __shared__ float warp_buf[1024];
  const int t = threadIdx.x;
  warp_buf[t] = 0.0f;
  __syncthreads();
  warp_buf[t] = x[t];
  if (fixed) __syncwarp();
  y[t] = warp_buf[t ^ 1];
}

__global__ void race_global_kernel(const float* __restrict__ x, float* __restrict__ y, int n, bool fixed) {
  const int t = threadIdx.x;
  if (fixed) {
    atomicAdd(&y[t], x[t]);
  } else {
    y[t] = x[t] + static_cast<float>(blockIdx.x);
  }
}

template <auto Kernel>
at::Tensor run(const at::Tensor& x, bool fixed, int blocks, bool even) {
  TORCH_CHECK_VALUE(x.dim() == 1 && x.scalar_type() == at::kFloat && x.numel() >= 1 && x.numel() <= 1024 &&
                        (!even || x.numel() % 2 == 0),
                    "planted race ops: x must be float32 [n], 1 <= n <= 1024", even ? ", n even" : "");
  const cuda::DeviceGuard guard("planted", {{"x", x}});
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::zeros_like(xc);
  const int n = static_cast<int>(xc.numel());
  cuda::launch<Kernel>(blocks, n, 0, cuda::stream(), xc.data_ptr<float>(), y.data_ptr<float>(), n, fixed);
  return y;
}

at::Tensor planted_race_raw(const at::Tensor& x, bool fixed) { return run<race_raw_kernel>(x, fixed, 1, false); }
at::Tensor planted_race_war(const at::Tensor& x, bool fixed) { return run<race_war_kernel>(x, fixed, 1, false); }
at::Tensor planted_race_waw(const at::Tensor& x, bool fixed) { return run<race_waw_kernel>(x, fixed, 1, false); }
at::Tensor planted_race_warp(const at::Tensor& x, bool fixed) { return run<race_warp_kernel>(x, fixed, 1, true); }
at::Tensor planted_race_global(const at::Tensor& x, bool fixed) { return run<race_global_kernel>(x, fixed, 2, false); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mona_emu, m) {
  m.def("planted_race_raw(Tensor x, bool fixed) -> Tensor");
  m.def("planted_race_war(Tensor x, bool fixed) -> Tensor");
  m.def("planted_race_waw(Tensor x, bool fixed) -> Tensor");
  m.def("planted_race_warp(Tensor x, bool fixed) -> Tensor");
  m.def("planted_race_global(Tensor x, bool fixed) -> Tensor");
}

TORCH_LIBRARY_IMPL(mona_emu, CPU, m) {
  m.impl("planted_race_raw", &planted_race_raw);
  m.impl("planted_race_war", &planted_race_war);
  m.impl("planted_race_waw", &planted_race_waw);
  m.impl("planted_race_warp", &planted_race_warp);
  m.impl("planted_race_global", &planted_race_global);
}

}  // namespace mona
