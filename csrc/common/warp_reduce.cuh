// Warp / block sum reductions shared by the CUDA kernels of similarity_kl and knn_loss.
#pragma once

#include "common/cuda_utils.cuh"

namespace mona {
namespace cuda {

// Butterfly sum: every lane ends with the same value (IEEE addition is commutative).
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over a block of kWarps * 32 threads, broadcast to every thread. `shared` holds kWarps values.
template <int kWarps, typename acc_t>
__device__ __forceinline__ acc_t block_sum_all(acc_t v, acc_t* shared) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += shared[w];
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace mona
