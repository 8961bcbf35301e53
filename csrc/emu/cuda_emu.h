// The CUDA execution model on the CPU, for running the project's real `*_cuda.cu` sources as host
// C++ in tests (never part of the wheel). Force-included (`-include emu/cuda_emu.h`) before any
// other header of an emulated translation unit, which is compiled with -DMONA_EMULATE_CUDA.
//
// What it provides (runtime in cuda_emu.cpp):
//   * the keywords (__global__, __device__, __shared__, __launch_bounds__, ...) and the built-in
//     variables threadIdx / blockIdx / blockDim / gridDim / warpSize;
//   * a launch (mona::cuda::launch in common/cuda_utils.cuh) that runs the whole grid, block after
//     block, each block's threads as cooperatively scheduled fibers: a thread runs until it reaches a
//     barrier or a warp operation, so __syncthreads() really waits for every thread of the block;
//     the order of threads is a schedule (forward, reverse, seeded random, or a switch at every
//     shared-memory access: MONA_EMU_SCHEDULE / set_schedule_mode);
//   * a shared-memory race detector (the idea of compute-sanitizer's racecheck), independent of the
//     schedule: every access to shared memory, static __shared__ arrays and dynamic shared memory
//     alike, is recorded per byte with the thread and the barrier epoch; two accesses of one byte by
//     two threads in one epoch (between two __syncthreads), at least one a write and not both
//     atomics, are a race (read-after-write, write-after-read, write-after-write). Two lanes of one
//     warp are also ordered by a __syncwarp() of the whole warp between the accesses (shuffles and
//     votes do not order memory). Static arrays are seen through the compiler's thread-sanitizer
//     instrumentation (-fsanitize=thread, whose __tsan_* hooks the runtime implements itself: no
//     libtsan), dynamic shared memory through SharedPtr below;
//   * errors, reported as a c10::Error naming the kernel, block and thread, for: a race as above
//     (with the shared array, byte offset, both threads, the epoch and both source lines), a
//     __syncthreads() that not every thread of the block reaches (threads at different barriers, or
//     a thread that exits while others wait), a warp operation whose mask names an exited / absent
//     lane or lanes of one mask waiting at different operations, a dynamic shared-memory access
//     outside the launch's byte count, a read of shared memory that no thread wrote in this block, a
//     failed CUDA_KERNEL_ASSERT, an invalid launch configuration (CUDA's limits), and dynamic shared
//     memory above 48 KiB without cudaFuncSetAttribute (opt-in limit of an RTX 3090, sm_86);
//   * shared memory poisoned with 0xFF bytes (a NaN in every float type) at each block's start;
//   * warp operations with CUDA's semantics (__shfl_*_sync, __ballot_sync, __syncwarp, ...),
//     atomics (plain read-modify-write: one fiber runs at a time), __ldg, __popc, __ffs.
//   * a global-memory race detector: two threads of one launch writing one byte (not both atomics),
//     or one reading a byte another wrote, are a race unless ordered (two blocks never are; two
//     threads of a block by a __syncthreads(), lanes of a warp by a __syncwarp(), in between).
//     Writes are recorded, reads only checked against them: a read the schedule runs before the
//     other thread's write is found under the reverse schedule;
// What it does not model: timing, memory coalescing, true concurrency, and out-of-bounds indices
// into *static* __shared__ arrays (only poisoned, not bounds checked).
#pragma once

#ifndef MONA_EMULATE_CUDA
#error "emu/cuda_emu.h is only for the CPU emulation build (-DMONA_EMULATE_CUDA)"
#endif

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

// The runtime's own functions and the accessors below are not instrumented (they report their
// accesses themselves, with their kind: read, write or atomic).
#define MONA_EMU_NOTSAN __attribute__((no_sanitize_thread, noinline))

// ---- keywords ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared variables: one instance for the process (blocks run one at a time). The section
// holds those of non-template kernels only (GCC ignores the attribute on a function template's
// local statics); the runtime finds all of them in the library's symbol table (cuda_emu.cpp,
// find_static_shared) to poison them at each block's start and to race check them.
#define __shared__ __attribute__((section("mona_emu_shared"), aligned(16))) static

// ---- types and built-in variables ----------------------------------------------------------------
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned int x, y, z;
};
struct float2 {
  float x, y;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
using cudaStream_t = struct mona_emu_stream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlock = 8, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

namespace mona {
namespace emu {

// The emulated device: an RTX 3090 (sm_86).
constexpr int kDefaultDynamicShared = 48 * 1024;
constexpr int kMaxSharedOptin = 101376;  // 99 KiB

struct ThreadState;
ThreadState* current();
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

[[noreturn]] void fail(const std::string& what);
void device_assert(bool ok, const char* expr, const char* file, int line);
void syncthreads(const char* file, int line);

enum WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line);
unsigned active_mask();

// Dynamic shared memory of the running block (see SharedPtr).
struct SharedBlock;
SharedBlock* dynamic_shared_block();
void* shared_base(SharedBlock* b);
// Checks an access of `bytes` bytes at byte offset `offset` of the dynamic shared memory (bounds)
// and records it in the race detector; atomic = read-modify-write. `pc`: the accessing code.
enum Access : int { kRead, kWrite, kAtomic };
void shared_access(SharedBlock* b, int64_t offset, int64_t bytes, Access access, const char* type, const void* pc);
// An atomic read-modify-write at `p` (static shared memory: recorded; elsewhere: nothing).
void atomic_access(const void* p, int64_t bytes, const void* pc);

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// A pointer into the dynamic shared memory of the running block: every element access is bounds
// checked against the launch's byte count and race checked (see shared_access).
template <typename T>
class SharedRef {
 public:
  SharedRef(SharedBlock* b, T* p, int64_t offset) : b_(b), p_(p), offset_(offset) {}
  MONA_EMU_NOTSAN operator T() const {
    shared_access(b_, offset_, sizeof(T), kRead, type_name(), __builtin_return_address(0));
    return *p_;
  }
  MONA_EMU_NOTSAN SharedRef& operator=(const T& v) {
    shared_access(b_, offset_, sizeof(T), kWrite, type_name(), __builtin_return_address(0));
    *p_ = v;
    return *this;
  }
  __attribute__((always_inline)) SharedRef& operator=(const SharedRef& o) { return *this = static_cast<T>(o); }
  template <typename U>
  __attribute__((always_inline)) SharedRef& operator+=(const U& v) {
    return *this = static_cast<T>(static_cast<T>(*this) + v);
  }
  template <typename U>
  __attribute__((always_inline)) SharedRef& operator-=(const U& v) {
    return *this = static_cast<T>(static_cast<T>(*this) - v);
  }
  template <typename U>
  __attribute__((always_inline)) SharedRef& operator*=(const U& v) {
    return *this = static_cast<T>(static_cast<T>(*this) * v);
  }
  // Atomic read-modify-write (atomicAdd on shared memory).
  MONA_EMU_NOTSAN T atomic_add(T v, const void* pc) {
    shared_access(b_, offset_, sizeof(T), kAtomic, type_name(), pc);
    const T old = *p_;
    *p_ = static_cast<T>(old + v);
    return old;
  }

 private:
  static const char* type_name() { return sizeof(T) == 8 ? "8-byte" : sizeof(T) == 4 ? "4-byte" : "element"; }
  SharedBlock* b_;
  T* p_;
  int64_t offset_;  // bytes from the start of the dynamic shared memory
};

template <typename T>
class SharedPtr {
 public:
  SharedPtr() = default;
  SharedPtr(SharedBlock* b, int64_t offset) : b_(b), offset_(offset) {}
  template <typename U, typename = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  SharedPtr(const SharedPtr<U>& o) : b_(o.block()), offset_(o.byte_offset()) {}  // T* -> const T*

  SharedRef<T> operator[](int64_t i) const {
    const int64_t off = offset_ + i * static_cast<int64_t>(sizeof(T));
    return SharedRef<T>(b_, reinterpret_cast<T*>(static_cast<char*>(shared_base(b_)) + off), off);
  }
  SharedRef<T> operator*() const { return (*this)[0]; }
  SharedPtr operator+(int64_t i) const { return SharedPtr(b_, offset_ + i * static_cast<int64_t>(sizeof(T))); }
  SharedPtr operator-(int64_t i) const { return SharedPtr(b_, offset_ - i * static_cast<int64_t>(sizeof(T))); }
  SharedBlock* block() const { return b_; }
  int64_t byte_offset() const { return offset_; }

 private:
  SharedBlock* b_ = nullptr;
  int64_t offset_ = 0;
};

template <typename T>
SharedPtr<T> dynamic_shared() {
  return SharedPtr<T>(dynamic_shared_block(), 0);
}

template <typename T>
T shfl(WarpOp op, unsigned mask, T v, int param, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_op(op, mask, bits, param, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace mona

#define threadIdx (::mona::emu::thread_idx())
#define blockIdx (::mona::emu::block_idx())
#define blockDim (::mona::emu::block_dim())
#define gridDim (::mona::emu::grid_dim())
#define warpSize 32

// ---- synchronisation and warp operations -----------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::mona::emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::mona::emu::warp_op(::mona::emu::kSyncWarp, mask, 0, 0, 32, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return ::mona::emu::shfl(::mona::emu::kShflIdx, mask, v, src, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return ::mona::emu::shfl(::mona::emu::kShflUp, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return ::mona::emu::shfl(::mona::emu::kShflDown, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return ::mona::emu::shfl(::mona::emu::kShflXor, mask, v, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(::mona::emu::warp_op(::mona::emu::kBallot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::mona::emu::warp_op(::mona::emu::kAny, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::mona::emu::warp_op(::mona::emu::kAll, mask, pred != 0, 0, 32, file, line));
}
inline unsigned __activemask() { return ::mona::emu::active_mask(); }

// ---- integer and float intrinsics -------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
// Float overloads as in CUDA's math library (the device code calls exp(float) etc. unqualified).
using std::exp;
using std::fabs;
using std::log;
using std::sqrt;
inline float expf(float x) { return std::exp(x); }
inline float logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// ---- atomics (one fiber runs at a time: a plain read-modify-write is atomic) ---------------------------
// An atomic on static shared memory is recorded as such by the race detector (atomics do not race
// with each other, but do with plain reads and writes); one on global memory is not checked.
template <typename T>
MONA_EMU_NOTSAN T atomicAdd(T* p, T v) {
  ::mona::emu::atomic_access(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  *p = static_cast<T>(old + v);
  return old;
}
template <typename T, typename U>
MONA_EMU_NOTSAN T atomicAdd(::mona::emu::SharedPtr<T> p, U v) {
  return p[0].atomic_add(static_cast<T>(v), __builtin_return_address(0));
}
template <typename T>
MONA_EMU_NOTSAN T atomicMax(T* p, T v) {
  ::mona::emu::atomic_access(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <typename T>
MONA_EMU_NOTSAN T atomicMin(T* p, T v) {
  ::mona::emu::atomic_access(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <typename T>
MONA_EMU_NOTSAN T atomicExch(T* p, T v) {
  ::mona::emu::atomic_access(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  *p = v;
  return old;
}
// PyTorch's atomic add for every dtype (ATen/cuda/Atomic.cuh on the device); half and bfloat16
// round the sum to their precision as the device's 16-bit atomics do.
template <typename T, typename U>
MONA_EMU_NOTSAN void gpuAtomicAdd(T* p, U v) {
  ::mona::emu::atomic_access(p, sizeof(T), __builtin_return_address(0));
  *p = static_cast<T>(*p + static_cast<T>(v));
}
template <typename T, typename U>
MONA_EMU_NOTSAN void gpuAtomicAdd(::mona::emu::SharedPtr<T> p, U v) {
  p[0].atomic_add(static_cast<T>(v), __builtin_return_address(0));
}

// ---- runtime API used by the host launchers ----------------------------------------------------------------
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? ::mona::emu::kMaxSharedOptin
                                                           : ::mona::emu::kDefaultDynamicShared;
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::mona::emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid argument"; }

// Device-side assertion: a failure stops the launch with the condition and its place.
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) ::mona::emu::device_assert(static_cast<bool>(cond), #cond, __FILE__, __LINE__)

#define C10_CUDA_CHECK(expr)                                                                                      \
  do {                                                                                                            \
    const cudaError_t mona_emu_err = (expr);                                                                      \
    TORCH_CHECK(mona_emu_err == cudaSuccess, "CUDA error: ", cudaGetErrorString(mona_emu_err), " (", #expr, ")"); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
