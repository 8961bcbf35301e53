// Shared by CPU (.cpp) and CUDA (.cu) translation units: MONA_HD marks per-element math that
// both compile, so the CPU tests exercise the exact code the CUDA kernels run.
//
// MONA_DEVICE_CODE selects the device branch of that math (CUDA intrinsics such as rsqrt, expf).
// It is 1 in device compilation under nvcc and in the CPU emulation of the CUDA kernels
// (csrc/emu, MONA_EMULATE_CUDA), so that the emulated kernels run the device branch too.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MONA_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inline on the host as on the device: the CPU kernels' vector loops are compiled once per
// vector ISA (MONA_MULTIVERSION, common/simd_cpu.h), and a call left in such a loop would stop its
// vectorisation.
#define MONA_HD __attribute__((always_inline)) inline
#else
#define MONA_HD inline
#endif

#if defined(__CUDA_ARCH__) || defined(MONA_EMULATE_CUDA)
#define MONA_DEVICE_CODE 1
#else
#define MONA_DEVICE_CODE 0
#endif
