// Runtime of the CPU emulation of the CUDA execution model (see cuda_emu.h for what it checks).
//
// Why fibers: a block's threads must be able to stop at __syncthreads() and at warp operations
// and resume when the others arrive. OS threads with a barrier would do that too, but a block of
// 256 threads would then cost 256 OS threads and a kernel launch thousands of futex wake-ups; a
// fiber switch is a dozen instructions (a hand-written swap of the callee-saved registers on
// x86-64, ucontext elsewhere), and a single OS thread makes the schedule reproducible: threads run
// in order 0, 1, ... until they block, so a missing barrier shows up the same way on every run
// (a thread reads shared memory that a later thread has not written yet). `set_schedule(seed)`
// shuffles the order of blocks and of ready threads instead, to expose order-dependent results
// (float atomics).
#include "emu/cuda_emu.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MONA_EMU_ASAN 1
#else
#define MONA_EMU_ASAN 0
#endif

extern "C" {
extern char __start_mona_emu_shared[] __attribute__((weak));
extern char __stop_mona_emu_shared[] __attribute__((weak));
}

// ---- context switch ------------------------------------------------------------------------------
#if defined(__x86_64__)
// void mona_emu_swap(void** save_sp, void* load_sp): saves the callee-saved registers, MXCSR and
// the x87 control word on the current stack, stores the stack pointer in *save_sp and resumes the
// context whose stack pointer is load_sp.
extern "C" void mona_emu_swap(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl mona_emu_swap
  .hidden mona_emu_swap
  .type mona_emu_swap,@function
mona_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw 12(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw 12(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mona_emu_swap, .-mona_emu_swap
)");
#endif

namespace mona {
namespace emu {
namespace {

enum class State { kReady, kBarrier, kWarp, kDone };

#if MONA_EMU_ASAN
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

}  // namespace

struct ThreadState {
  Context ctx;
  char* stack = nullptr;
  uint3 idx{};
  int linear = 0, warp = 0, lane = 0;
  State state = State::kReady;
  // pending barrier / warp operation
  const char* file = nullptr;
  int line = 0;
  WarpOp op = kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = 32;
};

struct SharedBlock {
  std::vector<unsigned char> bytes;
  std::vector<int32_t> writer;    // thread that last wrote each byte, -1 = not written in this block
  std::vector<uint32_t> epoch;    // block barrier count at that write
  std::vector<uint32_t> wepoch;   // writer's warp sync count at that write
};

namespace {

struct Launch {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_bytes = 0;
  uint3 bidx{};
  std::vector<ThreadState> threads;
  std::vector<uint32_t> warp_epoch;  // __syncwarp count per warp (orders shared memory within a warp)
  std::deque<int> ready;
  Context scheduler;
  ThreadState* cur = nullptr;
  int at_barrier = 0, done = 0;
  uint32_t epoch = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  SharedBlock shared;
  bool failed = false;
  std::string error;
  std::mt19937_64* rng = nullptr;
#if MONA_EMU_ASAN
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

std::mutex g_mutex;            // one emulated launch at a time (the runtime state is global)
Launch* g_launch = nullptr;
int64_t g_schedule_seed = -1;  // < 0: in order
std::map<const void*, int> g_max_dynamic_shared;
std::map<std::string, int64_t> g_launches;  // kernel -> number of launches (coverage of the tests)
std::map<std::string, dim3> g_last_grid;     // kernel -> grid of its latest launch (tests of launch shapes)
std::vector<std::vector<char>> g_stacks;    // reused between launches

std::string dim_str(const uint3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}
std::string dim_str(const dim3& d) { return dim_str(uint3{d.x, d.y, d.z}); }

std::string where(const Launch& L, const ThreadState* t) {
  std::string s = "kernel " + L.kernel + ", block " + dim_str(L.bidx);
  if (t) s += ", thread " + dim_str(t->idx);
  return s;
}

std::string site(const char* file, int line) {
  std::string f = file ? file : "?";
  const auto slash = f.find("csrc/");
  if (slash != std::string::npos) f = f.substr(slash);
  return f + ":" + std::to_string(line);
}

const char* op_name(WarpOp op) {
  switch (op) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kSyncWarp: return "__syncwarp";
  }
  return "?";
}

std::string hex(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", m);
  return buf;
}

void switch_to(Context& from, Context& to, const void* to_stack_bottom, size_t to_stack_size) {
#if MONA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, to_stack_bottom, to_stack_size);
#else
  (void)to_stack_bottom;
  (void)to_stack_size;
#endif
#if defined(__x86_64__)
  mona_emu_swap(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if MONA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// Back to the scheduler (from a fiber).
void yield_to_scheduler() {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
#if MONA_EMU_ASAN
  switch_to(t->ctx, L.scheduler, L.main_stack_bottom, L.main_stack_size);
#else
  switch_to(t->ctx, L.scheduler, nullptr, 0);
#endif
}

void record_failure(const std::string& what) {
  Launch& L = *g_launch;
  if (!L.failed) {
    L.failed = true;
    L.error = what + " [" + where(L, L.cur) + "]";
  }
}

void make_ready(int i) {
  Launch& L = *g_launch;
  L.threads[i].state = State::kReady;
  L.ready.push_back(i);
}

// Called when the fiber of L.cur has finished its kernel body.
void thread_exit_checks() {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  if (L.at_barrier > 0) {
    fail("divergent __syncthreads(): this thread exits while " + std::to_string(L.at_barrier) +
         " thread(s) of its block wait at the barrier at " + site(L.barrier_file, L.barrier_line) +
         " (every thread of a block must reach each barrier)");
  }
  const int first = t->warp * 32;
  const int n = std::min<int>(32, static_cast<int>(L.threads.size()) - first);
  for (int l = 0; l < n; ++l) {
    const ThreadState& o = L.threads[first + l];
    if (o.state == State::kWarp && (o.mask >> t->lane & 1u)) {
      fail(std::string("lane ") + std::to_string(t->lane) + " exits while lane " + std::to_string(l) + " waits at " +
           op_name(o.op) + " (" + site(o.file, o.line) + ") with mask " + hex(o.mask) +
           ", which names the exited lane");
    }
  }
}

struct FiberBody {
  void (*call)(void*);
  void* obj;
};
FiberBody g_body;

[[noreturn]] void fiber_entry() {
#if MONA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  {
    Launch& L = *g_launch;
    try {
      g_body.call(g_body.obj);
      thread_exit_checks();
      L.cur->state = State::kDone;
      ++L.done;
    } catch (const std::exception& e) {
      record_failure(std::string("exception in the kernel: ") + e.what());
    }
  }
  yield_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_entry_c() { fiber_entry(); }
#endif

void init_fiber(ThreadState& t, char* stack) {
  t.stack = stack;
#if MONA_EMU_ASAN
  // A reused stack still carries the redzones of the frames its last fiber left behind.
  ASAN_UNPOISON_MEMORY_REGION(stack, kStackBytes);
#endif
#if defined(__x86_64__)
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                             // fake return address of fiber_entry
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);      // `ret` target
  for (int i = 0; i < 6; ++i) *--sp = 0;                 // rbp rbx r12 r13 r14 r15
  sp -= 2;                                               // MXCSR and x87 control word
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 12, &fcw, 2);
  t.ctx.sp = sp;
#else
  getcontext(&t.ctx.uc);
  t.ctx.uc.uc_stack.ss_sp = stack;
  t.ctx.uc.uc_stack.ss_size = kStackBytes;
  t.ctx.uc.uc_link = nullptr;
  makecontext(&t.ctx.uc, fiber_entry_c, 0);
#endif
}

void poison_static_shared() {
  if (__start_mona_emu_shared && __stop_mona_emu_shared && __stop_mona_emu_shared > __start_mona_emu_shared) {
    std::memset(__start_mona_emu_shared, 0xff, static_cast<size_t>(__stop_mona_emu_shared - __start_mona_emu_shared));
  }
}

// Runs one block to completion; returns false (with L.error set) on the first reported error.
bool run_block(Launch& L, const FiberBody& body) {
  const int n = static_cast<int>(L.block.x * L.block.y * L.block.z);
  poison_static_shared();
  L.shared.bytes.assign(L.dynamic_bytes, 0xff);
  L.shared.writer.assign(L.dynamic_bytes, -1);
  L.shared.epoch.assign(L.dynamic_bytes, 0);
  L.shared.wepoch.assign(L.dynamic_bytes, 0);
  L.threads.assign(n, ThreadState{});
  L.warp_epoch.assign((n + 31) / 32, 0);
  L.ready.clear();
  L.at_barrier = L.done = 0;
  L.epoch = 0;
  for (int i = 0; i < n; ++i) {
    ThreadState& t = L.threads[i];
    t.idx = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    init_fiber(t, g_stacks[i].data());
    L.ready.push_back(i);
  }
  if (L.rng) std::shuffle(L.ready.begin(), L.ready.end(), *L.rng);
  g_body = body;
  while (!L.ready.empty() && !L.failed) {
    int i;
    if (L.rng && L.ready.size() > 1) {
      const size_t k = (*L.rng)() % L.ready.size();
      i = L.ready[k];
      L.ready.erase(L.ready.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      i = L.ready.front();
      L.ready.pop_front();
    }
    L.cur = &L.threads[i];
    switch_to(L.scheduler, L.cur->ctx, L.cur->stack, kStackBytes);
  }
  L.cur = nullptr;
  if (L.failed) return false;
  if (L.done != n) {
    std::ostringstream os;
    os << "deadlock: no thread can run, " << (n - L.done) << " of " << n << " threads of the block wait:";
    int shown = 0;
    for (const ThreadState& t : L.threads) {
      if (t.state == State::kDone || shown >= 6) continue;
      ++shown;
      os << " thread " << dim_str(t.idx) << " at "
         << (t.state == State::kBarrier ? std::string("__syncthreads()")
                                        : std::string(op_name(t.op)) + " mask " + hex(t.mask))
         << " (" << site(t.file, t.line) << ");";
    }
    L.error = os.str() + " [kernel " + L.kernel + ", block " + dim_str(L.bidx) + "]";
    return false;
  }
  return true;
}

}  // namespace

// ---- API used by the emulated kernels ----------------------------------------------------------------
ThreadState* current() { return g_launch ? g_launch->cur : nullptr; }

namespace {
[[noreturn]] void outside_kernel(const char* what) {
  std::fprintf(stderr, "mona emu: %s used outside an emulated kernel\n", what);
  std::abort();
}
}  // namespace

const uint3& thread_idx() {
  if (!g_launch || !g_launch->cur) outside_kernel("threadIdx");
  return g_launch->cur->idx;
}
const uint3& block_idx() {
  if (!g_launch) outside_kernel("blockIdx");
  return g_launch->bidx;
}
const dim3& block_dim() {
  if (!g_launch) outside_kernel("blockDim");
  return g_launch->block;
}
const dim3& grid_dim() {
  if (!g_launch) outside_kernel("gridDim");
  return g_launch->grid;
}

void fail(const std::string& what) {
  if (!g_launch || !g_launch->cur) {
    TORCH_CHECK(false, "mona emu: ", what);
  }
  record_failure(what);
  yield_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

void device_assert(bool ok, const char* expr, const char* file, int line) {
  if (!ok) fail(std::string("device-side assertion failed: ") + expr + " (" + site(file, line) + ")");
}

void syncthreads(const char* file, int line) {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  const int n = static_cast<int>(L.threads.size());
  if (L.done > 0) {
    fail("divergent __syncthreads() at " + site(file, line) + ": " + std::to_string(L.done) +
         " thread(s) of this block have already exited and can never reach it");
  }
  if (L.at_barrier > 0 && (L.barrier_line != line || std::strcmp(L.barrier_file, file) != 0)) {
    fail("divergent __syncthreads(): this thread reaches the barrier at " + site(file, line) + " while " +
         std::to_string(L.at_barrier) + " thread(s) of its block wait at the one at " +
         site(L.barrier_file, L.barrier_line));
  }
  for (const ThreadState& o : L.threads) {
    if (o.state == State::kWarp && o.warp == t->warp && (o.mask >> t->lane & 1u)) {
      fail("__syncthreads() at " + site(file, line) + " while lane " + std::to_string(o.lane) +
           " of this warp waits at " + op_name(o.op) + " (" + site(o.file, o.line) +
           ") with a mask that names this thread");
    }
  }
  t->state = State::kBarrier;
  t->file = file;
  t->line = line;
  if (L.at_barrier == 0) {
    L.barrier_file = file;
    L.barrier_line = line;
  }
  if (++L.at_barrier == n) {
    L.at_barrier = 0;
    ++L.epoch;
    for (int i = 0; i < n; ++i) make_ready(i);
  }
  yield_to_scheduler();
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line) {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  if (!(mask >> t->lane & 1u)) {
    fail(std::string(op_name(op)) + " at " + site(file, line) + ": lane " + std::to_string(t->lane) +
         " calls it with mask " + hex(mask) + ", which does not include the calling lane");
  }
  if (op <= kShflXor && (width <= 0 || width > 32 || (width & (width - 1)) != 0)) {
    fail(std::string(op_name(op)) + " at " + site(file, line) + ": width " + std::to_string(width) +
         " is not a power of 2 in [1, 32]");
  }
  const int first = t->warp * 32;
  const int lanes = std::min<int>(32, static_cast<int>(L.threads.size()) - first);
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (l >= lanes) {
      fail(std::string(op_name(op)) + " at " + site(file, line) + ": mask " + hex(mask) + " names lane " +
           std::to_string(l) + ", which does not exist (the block has " + std::to_string(L.threads.size()) +
           " threads)");
    }
    if (L.threads[first + l].state == State::kDone) {
      fail(std::string(op_name(op)) + " at " + site(file, line) + ": mask " + hex(mask) + " names lane " +
           std::to_string(l) + ", which has exited");
    }
  }
  t->state = State::kWarp;
  t->op = op;
  t->mask = mask;
  t->value = value;
  t->param = param;
  t->width = width;
  t->file = file;
  t->line = line;
  // Released when every lane of the mask waits at a warp operation.
  bool all = true;
  for (int l = 0; l < lanes && all; ++l) {
    if ((mask >> l & 1u) && L.threads[first + l].state != State::kWarp) all = false;
  }
  if (all) {
    for (int l = 0; l < lanes; ++l) {
      if (!(mask >> l & 1u)) continue;
      const ThreadState& o = L.threads[first + l];
      if (o.op != op || o.mask != mask || o.line != line || std::strcmp(o.file, file) != 0) {
        fail(std::string("lanes of one warp wait at different warp operations: lane ") + std::to_string(t->lane) +
             " at " + op_name(op) + " mask " + hex(mask) + " (" + site(file, line) + "), lane " + std::to_string(l) +
             " at " + op_name(o.op) + " mask " + hex(o.mask) + " (" + site(o.file, o.line) + ")");
      }
    }
    uint32_t ballot = 0;
    for (int l = 0; l < lanes; ++l) {
      if ((mask >> l & 1u) && L.threads[first + l].value) ballot |= 1u << l;
    }
    for (int l = 0; l < lanes; ++l) {
      if (!(mask >> l & 1u)) continue;
      ThreadState& o = L.threads[first + l];
      const int seg = l & ~(o.width - 1);  // first lane of this lane's width-segment
      int src = l;
      switch (op) {
        case kShflIdx: src = seg + (o.param & (o.width - 1)); break;
        case kShflUp: src = (l - seg) >= o.param ? l - o.param : l; break;
        case kShflDown: src = (l - seg) + o.param < o.width ? l + o.param : l; break;
        case kShflXor: src = seg + (((l - seg) ^ o.param) & (o.width - 1)); break;
        default: break;
      }
      if (op <= kShflXor) {
        if (src >= lanes || !(mask >> src & 1u)) {
          fail(std::string(op_name(op)) + " at " + site(file, line) + ": lane " + std::to_string(l) + " reads lane " +
               std::to_string(src) + ", which is not in the mask " + hex(mask) + " (undefined value)");
        }
        o.result = L.threads[first + src].value;
      } else if (op == kBallot) {
        o.result = ballot;
      } else if (op == kAny) {
        o.result = ballot != 0;
      } else if (op == kAll) {
        o.result = ballot == (mask & (lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u)));
      }
    }
    if (op == kSyncWarp || op == kBallot || op == kAny || op == kAll) ++L.warp_epoch[t->warp];
    for (int l = 0; l < lanes; ++l) {
      if (mask >> l & 1u) make_ready(first + l);
    }
  }
  yield_to_scheduler();
  return t->result;
}

unsigned active_mask() {
  Launch& L = *g_launch;
  const int first = L.cur->warp * 32;
  const int lanes = std::min<int>(32, static_cast<int>(L.threads.size()) - first);
  unsigned m = 0;
  for (int l = 0; l < lanes; ++l) {
    if (L.threads[first + l].state != State::kDone) m |= 1u << l;
  }
  return m;
}

SharedBlock* dynamic_shared_block() {
  if (!g_launch) outside_kernel("dynamic shared memory");
  return &g_launch->shared;
}

void* shared_base(SharedBlock* b) { return b->bytes.data(); }

void shared_access(SharedBlock* b, int64_t offset, int64_t bytes, Access access, const char* type) {
  Launch& L = *g_launch;
  const int64_t size = static_cast<int64_t>(b->bytes.size());
  const char* verb = access == kRead ? "read" : access == kWrite ? "write" : "atomic";
  if (offset < 0 || offset + bytes > size) {
    fail(std::string("out-of-bounds dynamic shared memory ") + verb + ": bytes [" + std::to_string(offset) + ", " +
         std::to_string(offset + bytes) + ") of a " + type + " value, but the launch gave " + std::to_string(size) +
         " bytes of dynamic shared memory");
  }
  const int me = L.cur->linear;
  if (access != kWrite) {
    // A value's bytes are written together: its first byte's shadow stands for all of them.
    const int w = b->writer[offset];
    if (w < 0) {
      fail(std::string("dynamic shared memory ") + verb + " of bytes [" + std::to_string(offset) + ", " +
           std::to_string(offset + bytes) +
           ") before any thread of the block wrote them (uninitialised; a missing "
           "__syncthreads() between the write and this read?)");
    }
    if (access == kRead && w != me) {
      const ThreadState& wt = L.threads[w];
      const bool block_ordered = b->epoch[offset] != L.epoch;
      const bool warp_ordered = wt.warp == L.cur->warp && b->wepoch[offset] != L.warp_epoch[L.cur->warp];
      if (!block_ordered && !warp_ordered) {
        fail("shared memory race: this thread reads bytes [" + std::to_string(offset) + ", " +
             std::to_string(offset + bytes) + ") that thread " + dim_str(wt.idx) +
             " wrote with no __syncthreads() (or __syncwarp() within a warp) in between");
      }
    }
  }
  if (access != kRead) {
    for (int64_t i = offset; i < offset + bytes; ++i) {
      b->writer[i] = me;
      b->epoch[i] = L.epoch;
      b->wepoch[i] = L.warp_epoch[L.cur->warp];
    }
  }
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptin) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

void run_grid(const char* pretty, const void* kernel_ptr, dim3 grid, dim3 block, size_t dynamic_bytes,
              void (*call)(void*), void* obj) {
  // The kernel's name from the launcher's __PRETTY_FUNCTION__ ("... [with auto Kernel = name; ...]").
  std::string name = pretty;
  const auto k = name.find("Kernel = ");
  if (k != std::string::npos) {
    name = name.substr(k + 9);
    int depth = 0;
    size_t end = 0;
    for (; end < name.size(); ++end) {
      const char c = name[end];
      if (c == '<' || c == '(') ++depth;
      if (c == '>' || c == ')') --depth;
      if (depth == 0 && (c == ';' || c == ']')) break;
    }
    name = name.substr(0, end);
  }
  if (name.rfind("& ", 0) == 0) name = name.substr(2);
  if (name.rfind("mona::{anonymous}::", 0) == 0) name = name.substr(19);

  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 && block.z <= 64 &&
                  threads <= 1024,
              "mona emu: invalid configuration argument: block ", dim_str(block), " of kernel ", name,
              " (CUDA allows at most 1024 threads, x <= 1024, y <= 1024, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535,
              "mona emu: invalid configuration argument: grid ", dim_str(grid), " of kernel ", name,
              " (CUDA allows x in [1, 2^31 - 1], y and z in [1, 65535])");

  std::lock_guard<std::mutex> lock(g_mutex);
  const auto limit_it = g_max_dynamic_shared.find(kernel_ptr);
  const int limit = limit_it == g_max_dynamic_shared.end() ? kDefaultDynamicShared : limit_it->second;
  TORCH_CHECK(dynamic_bytes <= static_cast<size_t>(limit), "mona emu: kernel ", name, " is launched with ",
              dynamic_bytes, " bytes of dynamic shared memory, above its limit of ", limit,
              " bytes (48 KiB unless raised with cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize), "
              "at most ",
              kMaxSharedOptin, " on an RTX 3090)");
  ++g_launches[name];
  g_last_grid[name] = grid;

  while (g_stacks.size() < threads) g_stacks.emplace_back(kStackBytes);
  Launch L;
  L.kernel = name;
  L.grid = grid;
  L.block = block;
  L.dynamic_bytes = dynamic_bytes;
  std::mt19937_64 rng(static_cast<uint64_t>(g_schedule_seed));
  if (g_schedule_seed >= 0) L.rng = &rng;
#if MONA_EMU_ASAN
  pthread_attr_t attr;
  pthread_getattr_np(pthread_self(), &attr);
  void* bottom;
  pthread_attr_getstack(&attr, &bottom, &L.main_stack_size);
  pthread_attr_destroy(&attr);
  L.main_stack_bottom = bottom;
#endif
  std::vector<uint3> order;
  order.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
  if (L.rng) std::shuffle(order.begin(), order.end(), *L.rng);
  g_launch = &L;
  const FiberBody body{call, obj};
  bool ok = true;
  for (const uint3& b : order) {
    L.bidx = b;
    if (!run_block(L, body)) {
      ok = false;
      break;
    }
  }
  g_launch = nullptr;
  TORCH_CHECK(ok, "mona emu: ", L.error);
}

int64_t set_schedule(int64_t seed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const int64_t old = g_schedule_seed;
  g_schedule_seed = seed;
  return old;
}

std::vector<std::string> launched_kernels() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> names;
  for (const auto& [name, count] : g_launches) names.push_back(name + "=" + std::to_string(count));
  return names;
}

std::vector<std::string> last_grids() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> out;
  for (const auto& [name, g] : g_last_grid) {
    out.push_back(name + "=" + std::to_string(g.x) + "," + std::to_string(g.y) + "," + std::to_string(g.z));
  }
  return out;
}

}  // namespace emu
}  // namespace mona

// Test-only controls of the emulation, next to the emulated kernels (ops mona_emu::*).
TORCH_LIBRARY_FRAGMENT(mona_emu, m) {
  // Scheduling order: seed < 0 runs blocks and threads in index order (the default); seed >= 0
  // shuffles both with that seed. Returns the previous seed.
  m.def("set_schedule(int seed) -> int", &mona::emu::set_schedule);
  // "kernel=launches" for every kernel launched so far in this process (test coverage).
  m.def("launched_kernels() -> str[]", &mona::emu::launched_kernels);
  // "kernel=x,y,z": the grid of the latest launch of every kernel launched so far (launch shapes).
  m.def("last_grids() -> str[]", &mona::emu::last_grids);
}
