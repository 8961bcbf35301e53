// Warp / block sum reductions of the CUDA kernels (every kernel that sums across lanes uses these).
//
// All are butterfly (xor) shuffles in a fixed order, so a sum is reproducible run to run. In a
// butterfly, every lane ends with the same value (IEEE addition is commutative); lane 0's value
// is also the value of the down-shuffle tree (v += shfl_down(v, 16), ..., 1) that some kernels
// used before: the same additions of the same operands.
#pragma once

#include "common/cuda_utils.cuh"

namespace mona {
namespace cuda {

// Sum over aligned groups of `width` lanes (a power of two <= 32, e.g. the lanes that share a
// pixel); every lane of a group ends with the group's sum. All 32 lanes of the warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the warp, on every lane.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  return group_sum(v, 32);
}

// Sum over a block of num_warps * 32 threads (blockDim.x == num_warps * 32), on every thread, in a
// fixed order: each warp's sum, then the warps' sums in warp order. `shared` holds num_warps values.
// Every thread of the block must call it (it has two barriers).
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared, int num_warps) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < num_warps; ++w) total += shared[w];
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace mona
