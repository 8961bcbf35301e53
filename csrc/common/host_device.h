// Shared by CPU (.cpp) and CUDA (.cu) translation units: MONA_HD marks per-element math that
// both compile, so the CPU tests exercise the exact code the CUDA kernels run.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MONA_HD __host__ __device__ __forceinline__
#else
#define MONA_HD inline
#endif
