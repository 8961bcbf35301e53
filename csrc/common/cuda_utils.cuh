// Helpers shared by the CUDA kernels. Light headers only (see DESIGN.md section 6: the local
// toolkit lacks cuSPARSE/cuBLAS headers, so ATen/cuda/CUDAContext.h is avoided).
#pragma once

#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace mona {
namespace cuda {

constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n items: enough to fill any current GPU, never more than needed.
inline unsigned int blocks_for(int64_t n, int threads = kThreads, int64_t cap = 65535LL * 8) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, cap)));
}
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace mona
