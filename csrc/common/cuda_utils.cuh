// Helpers shared by the CUDA kernels' host launchers. Light headers only (c10/cuda/CUDAStream.h,
// CUDAGuard.h, CUDAException.h, ATen/cuda/Atomic.cuh): ATen/cuda/CUDAContext.h pulls in cuSPARSE /
// cuBLAS headers that a bare CUDA toolkit may lack ("cusparse.h: No such file"), and costs compile time.
//
// The same sources also build as host C++ for the CPU emulation of the CUDA execution model
// (csrc/emu, -DMONA_EMULATE_CUDA, test-only): every kernel is therefore launched through
// cuda::launch (never `<<<...>>>` directly), declares dynamic shared memory with
// MONA_DYNAMIC_SHARED, takes its device from cuda::DeviceGuard and registers with
// MONA_REGISTER_CUDA_KERNELS. Under nvcc these are the plain CUDA constructs.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "common/tensor_utils.h"

#ifdef MONA_EMULATE_CUDA
#include "emu/cuda_emu.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/Atomic.cuh>
#endif

namespace mona {
namespace emu {
#ifdef MONA_EMULATE_CUDA
void run_grid(const char* pretty, const void* kernel, dim3 grid, dim3 block, size_t dynamic_bytes, void (*call)(void*),
              void* obj);
#endif
}  // namespace emu

namespace cuda {

constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n items: enough to fill any current GPU, never more than needed.
inline unsigned int blocks_for(int64_t n, int threads = kThreads, int64_t cap = 65535LL * 8) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, cap)));
}

// How a per-row scan over a queue of K entries is split across blocks (similarity_kl, knn_loss):
// `count` splits of `len` consecutive entries (the last one may be shorter; none is empty), so that
// rows * count is about kTargetBlocks (enough blocks to fill any current GPU even for a batch of a
// few rows) while every split keeps >= min_len entries (the per-split setup, row norms and
// partial-result write, stays small next to its work). A queue shorter than 2 * min_len is one split.
struct QueueSplits {
  int64_t count;  // number of splits, >= 1
  int64_t len;    // entries per split: split s covers [s * len, min((s + 1) * len, K))
};
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinSplitLen = 256;
inline QueueSplits queue_splits(int64_t rows, int64_t K, int64_t min_len = kMinSplitLen) {
  const int64_t by_blocks = (kTargetBlocks + std::max<int64_t>(rows, 1) - 1) / std::max<int64_t>(rows, 1);
  const int64_t by_len = K / min_len;
  const int64_t wanted = std::max<int64_t>(1, std::min(by_blocks, by_len));
  const int64_t len = std::max<int64_t>(1, (K + wanted - 1) / wanted);
  return {std::max<int64_t>(1, (K + len - 1) / len), len};  // recount: no empty trailing split
}

#ifdef MONA_EMULATE_CUDA
inline cudaStream_t stream() { return nullptr; }
#else
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

// Launches Kernel<<<grid, block, dynamic_shared_bytes, stream>>>(args...) and checks the launch.
// Under the emulation: runs the whole grid on the CPU (see emu/cuda_emu.h).
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, cudaStream_t stream, const Args&... args) {
#ifdef MONA_EMULATE_CUDA
  (void)stream;
  auto body = [&]() { Kernel(args...); };
  emu::run_grid(
      __PRETTY_FUNCTION__, reinterpret_cast<const void*>(Kernel), grid, block, dynamic_shared_bytes,
      [](void* obj) { (*static_cast<decltype(body)*>(obj))(); }, &body);
#else
  // In a .cuh file clang-format does not know CUDA's launch syntax (it would split the `>>>`).
  // clang-format off
  Kernel<<<grid, block, dynamic_shared_bytes, stream>>>(args...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Largest dynamic shared memory a block of the current device may use once opted in.
inline int max_dynamic_shared_optin() {
  int device = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

// Lets Kernel use `bytes` of dynamic shared memory (above the default 48 KiB needs an opt-in).
template <auto Kernel>
void allow_dynamic_shared(size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

// Checks that every given tensor is on one device, and that it is a CUDA device (the emulation:
// the CPU), with a ValueError naming the argument; then makes that device current. Constructed
// before anything touches a device, so mixing devices never reaches a c10 internal error.
class DeviceGuard {
 public:
  DeviceGuard(const char* op, std::initializer_list<NamedTensor> tensors)
#ifdef MONA_EMULATE_CUDA
  {
    const c10::Device d = check_same_device(op, tensors);
    TORCH_CHECK_VALUE(d.is_cpu(), op, " (emulated CUDA kernel): ", tensors.begin()->name,
                      " must be on the CPU under the emulation, got ", d);
  }
#else
      : guard_(checked(op, tensors)) {
  }

 private:
  static c10::Device checked(const char* op, std::initializer_list<NamedTensor> tensors) {
    const c10::Device d = check_same_device(op, tensors);
    TORCH_CHECK_VALUE(d.is_cuda(), op, " (CUDA kernel): ", tensors.begin()->name, " must be on a CUDA device, got ", d);
    return d;
  }
  c10::cuda::CUDAGuard guard_;
#endif
};

}  // namespace cuda
}  // namespace mona

#ifdef MONA_EMULATE_CUDA
// A pointer to the block's dynamic shared memory, bounds and race checked (emu/cuda_emu.h).
#define MONA_DYNAMIC_SHARED(T, name) ::mona::emu::SharedPtr<T> name = ::mona::emu::dynamic_shared<T>()
#define MONA_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(mona_emu, CPU, m)
namespace mona {
template <typename T>
using smem_ptr = emu::SharedPtr<T>;
}  // namespace mona
#else
#define MONA_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char name##_shared_bytes[]; \
  T* name = reinterpret_cast<T*>(name##_shared_bytes)
#define MONA_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(mona, CUDA, m)
namespace mona {
template <typename T>
using smem_ptr = T*;
}  // namespace mona
#endif
