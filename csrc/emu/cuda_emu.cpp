// Runtime of the CPU emulation of the CUDA execution model (see cuda_emu.h for what it checks).
//
// Why fibers: a block's threads must be able to stop at __syncthreads() and at warp operations
// and resume when the others arrive. OS threads with a barrier would do that too, but a block of
// 256 threads would then cost 256 OS threads and a kernel launch thousands of futex wake-ups; a
// fiber switch is a dozen instructions (a hand-written swap of the callee-saved registers on
// x86-64, ucontext elsewhere), and a single OS thread makes the schedule reproducible: threads run
// in order 0, 1, ... until they block, so a missing barrier shows up the same way on every run
// (a thread reads shared memory that a later thread has not written yet). Other schedules
// (set_schedule_mode / MONA_EMU_SCHEDULE): reverse order, a seeded shuffle of blocks and ready
// threads (to expose order-dependent results: float atomics), and `interleave`, which switches to
// the next thread at every shared-memory access.
//
// The race detector does not depend on the schedule: a shadow entry per byte of shared memory keeps,
// for the current barrier epoch, up to two distinct writers and two distinct readers (thread, the
// warp's __syncwarp count at the access, the accessing code); an access that conflicts with one of
// another thread (see cuda_emu.h) is a race whatever order the threads ran in. Epochs are numbered
// by one counter for the process ("stamp", +1 at every block start and every barrier), so the
// shadow never needs clearing: an entry whose stamp is not the current one is from an older epoch.
#include "emu/cuda_emu.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <unordered_map>
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
  unsigned char* data = nullptr;  // bytes.data(), bytes.size() (see Launch::th)
  int64_t size = 0;
};

namespace {
// One recorded access of a shadow byte: thread (linear index in the block), the warp's
// __syncwarp count at the access, the accessing code.
struct Acc {
  int32_t tid = -1;
  uint32_t wgen = 0;
  const void* pc = nullptr;
};
// Shadow of one byte of shared memory.
struct Slot {
  uint64_t stamp = 0;   // epoch of w / r (0: none)
  uint64_t wstamp = 0;  // epoch of the latest write (>= the block's first stamp: written in this block)
  Acc w[2], r[2];       // distinct writers / readers in this epoch
  uint8_t watomic = 0;  // bit i: w[i] wrote atomically
};
enum class Region { kStatic, kDynamic };
// The first race (or uninitialised read) of a launch, symbolised after the launch (main stack).
struct RaceReport {
  bool set = false;
  std::string text;
  const void* pc_this = nullptr;
  const void* pc_other = nullptr;
  const void* static_addr = nullptr;  // for the name of a static __shared__ array
};
enum class Schedule { kForward, kReverse, kRandom, kInterleave };
}  // namespace

namespace {

struct Launch {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_bytes = 0;
  uint3 bidx{};
  std::vector<ThreadState> threads;
  std::deque<int> ready;
  Context scheduler;
  ThreadState* cur = nullptr;
  int at_barrier = 0, done = 0;
  uint32_t epoch = 0;
  const char* barrier_file = nullptr;  // the barrier the waiting threads wait at
  int barrier_line = 0;
  const char* last_barrier_file = nullptr;  // the latest completed barrier (the current epoch's start)
  int last_barrier_line = 0;
  SharedBlock shared;
  uint64_t block_stamp = 0;  // stamp of the block's first epoch
  uint32_t block_linear = 0;  // the block's linear index in the grid (global-memory race detector)
  uint64_t stamp = 0;        // stamp of the current epoch
  std::vector<uint32_t> warp_gen;  // per warp: count of __syncwarp() of the whole warp (orders lanes)
  // Raw views of threads / warp_gen for the hot paths: the std containers' accessors are instrumented
  // inline functions that GCC does not inline into the runtime's no_sanitize_thread functions (an
  // out-of-line call, and a __tsan_* hook call, per element access).
  ThreadState* th = nullptr;
  int nthreads = 0;
  uint32_t* wgen = nullptr;
  Schedule schedule = Schedule::kForward;
  RaceReport race;
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
bool g_in_fiber = false;       // a kernel's fiber runs (the instrumentation hooks record only then)
// g_hook_size is the size of the static shared section while a kernel's fiber runs, else 0: one
// subtraction and one comparison decide (in the __tsan_* entry points, inlined) whether an access
// is of interest.
uintptr_t g_hook_lo = 0, g_hook_size = 0;
uint64_t g_stamp = 0;          // epoch counter (see the top of this file)
std::vector<Slot> g_static_shadow, g_dynamic_shadow;
Slot* g_static_shadow_p = nullptr;  // .data() of the two (see Launch::th)
Slot* g_dynamic_shadow_p = nullptr;
Schedule g_schedule = Schedule::kForward;
int64_t g_schedule_seed = -1;  // kRandom: the seed
std::string g_schedule_spec = "forward";
std::map<std::string, dim3> g_grid_limit;  // kernel base name -> largest grid the emulation gives it
std::map<const void*, int> g_max_dynamic_shared;
std::map<std::string, int64_t> g_launches;  // kernel -> number of launches (coverage of the tests)
std::map<std::string, dim3> g_last_grid;     // kernel -> grid of its latest launch (tests of launch shapes)
// The fibers' stacks: one reserved region (pages are touched only when used), reused between
// launches; the race detector ignores accesses inside it (a thread's locals are its own, and the
// same stack serves thread i of every block).
char* g_stack_region = nullptr;
constexpr size_t kMaxThreads = 1024;
uintptr_t g_stack_lo = 0, g_stack_size = 0;  // g_stack_size: while a fiber runs, else 0

// The runtime itself is compiled with the instrumentation too (one set of flags for the library), and
// its std containers and strings are out-of-line instrumented code: every runtime function a kernel's
// fiber calls switches the hooks off while it runs (its heap and its tables are no kernel memory).
// Across a yield to the scheduler the saved values are the ones the scheduler sets again.
struct HooksOff {
  uintptr_t shared, stack;
  MONA_EMU_NOTSAN HooksOff() : shared(g_hook_size), stack(g_stack_size) { g_hook_size = g_stack_size = 0; }
  MONA_EMU_NOTSAN ~HooksOff() {
    g_hook_size = shared;
    g_stack_size = stack;
  }
  HooksOff(const HooksOff&) = delete;
  HooksOff& operator=(const HooksOff&) = delete;
};

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

MONA_EMU_NOTSAN void switch_to(Context& from, Context& to, const void* to_stack_bottom, size_t to_stack_size) {
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
MONA_EMU_NOTSAN void yield_to_scheduler() {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
#if MONA_EMU_ASAN
  switch_to(t->ctx, L.scheduler, L.main_stack_bottom, L.main_stack_size);
#else
  switch_to(t->ctx, L.scheduler, nullptr, 0);
#endif
}

MONA_EMU_NOTSAN void record_failure(const std::string& what) {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  if (!L.failed) {
    L.failed = true;
    L.error = what + " [" + where(L, L.cur) + "]";
  }
}

MONA_EMU_NOTSAN void make_ready(int i) {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  L.th[i].state = State::kReady;
  L.ready.push_back(i);
}

// Called when the fiber of L.cur has finished its kernel body.
MONA_EMU_NOTSAN void thread_exit_checks() {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  if (L.at_barrier > 0) {
    fail("divergent __syncthreads(): this thread exits while " + std::to_string(L.at_barrier) +
         " thread(s) of its block wait at the barrier at " + site(L.barrier_file, L.barrier_line) +
         " (every thread of a block must reach each barrier)");
  }
  const int first = t->warp * 32;
  const int n = std::min<int>(32, L.nthreads - first);
  for (int l = 0; l < n; ++l) {
    const ThreadState& o = L.th[first + l];
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
      const HooksOff hooks_off;  // the runtime's own bookkeeping below
      thread_exit_checks();
      L.cur->state = State::kDone;
      ++L.done;
    } catch (const std::exception& e) {
      const HooksOff hooks_off;
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

// The static __shared__ variables. GCC ignores the section attribute of a local static of a function
// template (every templated kernel's arrays land in .bss with the library's other data), so the
// section is not where they are: the variables are taken from the library's symbol table (nm),
// every writable function-local static of namespace mona outside mona::emu (in the kernel
// sources, only __shared__ variables are function-local statics), and the section's contents.
// Sorted, disjoint [lo, hi) address ranges; g_shared_lo / g_shared_span cover all of them.
std::vector<std::pair<uintptr_t, uintptr_t>> g_shared_ranges;
uintptr_t g_shared_lo = 0, g_shared_span = 0;
std::string run_command(const std::string& cmd);

void find_static_shared() {
  static bool done = false;  // set once the listing succeeded: a failed one fails every launch
  if (done) return;
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  if (__start_mona_emu_shared && __stop_mona_emu_shared > __start_mona_emu_shared) {
    ranges.emplace_back(reinterpret_cast<uintptr_t>(__start_mona_emu_shared),
                        reinterpret_cast<uintptr_t>(__stop_mona_emu_shared));
  }
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&find_static_shared), &info) && info.dli_fname) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(info.dli_fbase);
    const std::string listing = run_command(std::string("nm -S --defined-only '") + info.dli_fname + "' 2>/dev/null");
    // no silent fallback: without the symbol table the templated kernels' arrays would go unchecked
    TORCH_CHECK(!listing.empty(), "cuda_emu: the race detector lists the static __shared__ arrays of ", info.dli_fname,
                " with `nm` (binutils), which printed nothing; install binutils");
    std::istringstream is(listing);
    for (std::string l; std::getline(is, l);) {
      unsigned long long value = 0, size = 0;
      char type = 0, name[64] = {0};
      if (std::sscanf(l.c_str(), "%llx %llx %c %63s", &value, &size, &type, name) < 4 || size == 0) continue;
      if (!std::strchr("bBdD", type)) continue;
      if (std::strncmp(name, "_ZZN4mona", 9) != 0 || std::strncmp(name, "_ZZN4mona3emu", 13) == 0) continue;
      ranges.emplace_back(base + value, base + value + size);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (const auto& r : ranges) {  // merge overlaps (the section's variables are listed too)
    if (!g_shared_ranges.empty() && r.first <= g_shared_ranges.back().second) {
      g_shared_ranges.back().second = std::max(g_shared_ranges.back().second, r.second);
    } else {
      g_shared_ranges.push_back(r);
    }
  }
  if (!g_shared_ranges.empty()) {
    g_shared_lo = g_shared_ranges.front().first;
    g_shared_span = g_shared_ranges.back().second - g_shared_lo;
  }
  done = true;
}

// Whether byte offset `off` (from g_shared_lo) is in a static __shared__ variable.
MONA_EMU_NOTSAN bool in_static_shared(uintptr_t off) {
  const uintptr_t a = g_shared_lo + off;
  size_t lo = 0, hi = g_shared_ranges.size();
  const auto* r = g_shared_ranges.data();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (a < r[mid].first) {
      hi = mid;
    } else if (a >= r[mid].second) {
      lo = mid + 1;
    } else {
      return true;
    }
  }
  return false;
}

void poison_static_shared() {
  for (const auto& r : g_shared_ranges) std::memset(reinterpret_cast<void*>(r.first), 0xff, r.second - r.first);
}

// Runs L.cur until it yields, with the instrumentation hooks on. Not instrumented itself: in
// instrumented code the compiler may move the stores that switch the hooks on before the hook calls
// of those stores (it takes the __tsan_* functions for leaf functions), and a hook that ran on the
// scheduler's stack would record the scheduler's bookkeeping as the thread's.
MONA_EMU_NOTSAN void run_fiber(Launch& L) {
  g_in_fiber = true;
  g_hook_lo = g_shared_lo;
  g_hook_size = g_shared_span;
  g_stack_lo = reinterpret_cast<uintptr_t>(g_stack_region);
  g_stack_size = kMaxThreads * kStackBytes;
  switch_to(L.scheduler, L.cur->ctx, L.cur->stack, kStackBytes);
  g_hook_size = 0;
  g_stack_size = 0;
  g_in_fiber = false;
}

// Runs one block to completion; returns false (with L.error set) on the first reported error.
bool run_block(Launch& L, const FiberBody& body) {
  const int n = static_cast<int>(L.block.x * L.block.y * L.block.z);
  poison_static_shared();
  L.shared.bytes.assign(L.dynamic_bytes, 0xff);
  L.shared.data = L.shared.bytes.data();
  L.shared.size = static_cast<int64_t>(L.dynamic_bytes);
  if (g_dynamic_shadow.size() < L.dynamic_bytes) g_dynamic_shadow.resize(L.dynamic_bytes);
  g_dynamic_shadow_p = g_dynamic_shadow.data();
  L.threads.assign(n, ThreadState{});
  L.warp_gen.assign((n + 31) / 32, 0);
  L.th = L.threads.data();
  L.nthreads = n;
  L.wgen = L.warp_gen.data();
  L.ready.clear();
  L.at_barrier = L.done = 0;
  L.epoch = 0;
  L.block_stamp = L.stamp = ++g_stamp;
  for (int i = 0; i < n; ++i) {
    ThreadState& t = L.threads[i];
    t.idx = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    init_fiber(t, g_stack_region + static_cast<size_t>(i) * kStackBytes);
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
    } else if (L.schedule == Schedule::kReverse) {  // the last thread made ready runs first
      i = L.ready.back();
      L.ready.pop_back();
    } else {
      i = L.ready.front();
      L.ready.pop_front();
    }
    L.cur = &L.threads[i];
    run_fiber(L);
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

// ---- naming the code and the arrays of a report (after the launch, on the main stack) ---------------------
namespace {

std::string run_command(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, got);
  pclose(f);
  return out;
}

// The shared object holding `addr` and its load base.
bool object_of(const void* addr, std::string* path, uintptr_t* base) {
  Dl_info info;
  if (!addr || !dladdr(addr, &info) || !info.dli_fname) return false;
  *path = info.dli_fname;
  *base = reinterpret_cast<uintptr_t>(info.dli_fbase);
  return true;
}

std::string short_path(std::string f) {
  const auto slash = f.rfind("csrc/");
  return slash == std::string::npos ? f : f.substr(slash);
}

// "csrc/x/y.cu:12 (inlined in csrc/x/y.cu:40)" from the line tables (-g1) with addr2line;
// "?" where the tools or the tables are missing.
std::string source_line(const void* pc) {
  std::string path;
  uintptr_t base;
  if (!object_of(pc, &path, &base)) return "an unknown place";
  char off[32];
  std::snprintf(off, sizeof(off), "0x%llx",
                static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(pc) - 1 - base));
  const std::string out = run_command("addr2line -i -e '" + path + "' " + off + " 2>/dev/null");
  std::vector<std::string> lines;
  std::istringstream is(out);
  for (std::string l; std::getline(is, l);) {
    const auto paren = l.find(" (discriminator");
    if (paren != std::string::npos) l = l.substr(0, paren);
    if (!l.empty() && l.find("??") == std::string::npos) lines.push_back(short_path(l));
  }
  if (lines.empty()) return std::string("code offset ") + off + " (no line table)";
  std::string s = lines[0];
  for (size_t i = 1; i < lines.size() && i < 3; ++i) s += (i == 1 ? " (inlined in " : ", in ") + lines[i];
  if (lines.size() > 1) s += ")";
  return s;
}

// The static __shared__ array holding `addr` (from the symbol table) and the byte offset in it.
std::string static_array(const void* addr, long long bytes) {
  std::string fallback = "static __shared__ memory at address " + std::to_string(reinterpret_cast<uintptr_t>(addr));
  std::string path;
  uintptr_t base;
  if (!object_of(addr, &path, &base)) return fallback;
  static std::map<std::string, std::string> symbols;  // object -> `nm` output
  auto it = symbols.find(path);
  if (it == symbols.end()) {
    it = symbols.emplace(path, run_command("nm -C -S --defined-only '" + path + "' 2>/dev/null")).first;
  }
  const uintptr_t rel = reinterpret_cast<uintptr_t>(addr) - base;
  std::istringstream is(it->second);
  for (std::string l; std::getline(is, l);) {
    unsigned long long value = 0, size = 0;
    char type = 0;
    int consumed = 0;
    if (std::sscanf(l.c_str(), "%llx %llx %c %n", &value, &size, &type, &consumed) < 3 || consumed == 0) continue;
    if (rel < value || rel >= value + size) continue;
    std::string name = l.substr(static_cast<size_t>(consumed));
    std::string shortname = name;
    const auto colon = name.rfind("::");
    if (colon != std::string::npos) shortname = name.substr(colon + 2);
    const unsigned long long at = rel - value;
    return "static __shared__ `" + shortname + "` (" + name + "), bytes [" + std::to_string(at) + ", " +
           std::to_string(at + static_cast<unsigned long long>(bytes)) + ") of its " + std::to_string(size);
  }
  return fallback;
}

// Replaces the @PC:..@ and @STATIC:..@ tokens of a report.
std::string symbolise(std::string text) {
  for (size_t at; (at = text.find("@PC:")) != std::string::npos;) {
    const size_t end = text.find('@', at + 4);
    void* pc = nullptr;
    std::sscanf(text.c_str() + at + 4, "%p", &pc);
    text.replace(at, end + 1 - at, pc ? source_line(pc) : std::string("an unknown place"));
  }
  for (size_t at; (at = text.find("@STATIC:")) != std::string::npos;) {
    const size_t end = text.find('@', at + 8);
    void* p = nullptr;
    long long bytes = 0;
    std::sscanf(text.c_str() + at + 8, "%p:%lld", &p, &bytes);
    text.replace(at, end + 1 - at, static_array(p, bytes));
  }
  return text;
}

Schedule parse_schedule(const std::string& spec, int64_t* seed) {
  if (spec == "forward" || spec.empty()) return Schedule::kForward;
  if (spec == "reverse") return Schedule::kReverse;
  if (spec == "interleave") return Schedule::kInterleave;
  if (spec.rfind("random:", 0) == 0) {
    char* end = nullptr;
    const long long v = std::strtoll(spec.c_str() + 7, &end, 10);
    TORCH_CHECK_VALUE(end && *end == '\0' && end != spec.c_str() + 7 && v >= 0, "mona emu: bad schedule '", spec,
                      "' (random:SEED with an integer SEED >= 0)");
    *seed = v;
    return Schedule::kRandom;
  }
  TORCH_CHECK_VALUE(false, "mona emu: unknown schedule '", spec,
                    "' (MONA_EMU_SCHEDULE / set_schedule_mode: forward, reverse, random:SEED or interleave)");
}

std::string default_schedule() {
  const char* env = std::getenv("MONA_EMU_SCHEDULE");
  return env && *env ? env : "forward";
}

}  // namespace

// ---- API used by the emulated kernels ----------------------------------------------------------------
MONA_EMU_NOTSAN ThreadState* current() { return g_launch ? g_launch->cur : nullptr; }

namespace {
[[noreturn]] void outside_kernel(const char* what) {
  std::fprintf(stderr, "mona emu: %s used outside an emulated kernel\n", what);
  std::abort();
}
}  // namespace

MONA_EMU_NOTSAN const uint3& thread_idx() {
  if (!g_launch || !g_launch->cur) outside_kernel("threadIdx");
  return g_launch->cur->idx;
}
MONA_EMU_NOTSAN const uint3& block_idx() {
  if (!g_launch) outside_kernel("blockIdx");
  return g_launch->bidx;
}
MONA_EMU_NOTSAN const dim3& block_dim() {
  if (!g_launch) outside_kernel("blockDim");
  return g_launch->block;
}
MONA_EMU_NOTSAN const dim3& grid_dim() {
  if (!g_launch) outside_kernel("gridDim");
  return g_launch->grid;
}

MONA_EMU_NOTSAN void fail(const std::string& what) {
  const HooksOff hooks_off;
  if (!g_launch || !g_launch->cur) {
    TORCH_CHECK(false, "mona emu: ", what);
  }
  record_failure(what);
  yield_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

MONA_EMU_NOTSAN void device_assert(bool ok, const char* expr, const char* file, int line) {
  const HooksOff hooks_off;
  if (!ok) fail(std::string("device-side assertion failed: ") + expr + " (" + site(file, line) + ")");
}

MONA_EMU_NOTSAN void syncthreads(const char* file, int line) {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  const int n = L.nthreads;
  if (L.done > 0) {
    fail("divergent __syncthreads() at " + site(file, line) + ": " + std::to_string(L.done) +
         " thread(s) of this block have already exited and can never reach it");
  }
  if (L.at_barrier > 0 && (L.barrier_line != line || std::strcmp(L.barrier_file, file) != 0)) {
    fail("divergent __syncthreads(): this thread reaches the barrier at " + site(file, line) + " while " +
         std::to_string(L.at_barrier) + " thread(s) of its block wait at the one at " +
         site(L.barrier_file, L.barrier_line));
  }
  const int first = t->warp * 32, lanes = std::min<int>(32, n - first);
  for (int l = 0; l < lanes; ++l) {
    const ThreadState& o = L.th[first + l];
    if (o.state == State::kWarp && (o.mask >> t->lane & 1u)) {
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
    L.stamp = ++g_stamp;
    L.last_barrier_file = L.barrier_file;
    L.last_barrier_line = L.barrier_line;
    for (int i = 0; i < n; ++i) make_ready(i);
  }
  yield_to_scheduler();
}

MONA_EMU_NOTSAN uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file,
                                 int line) {
  const HooksOff hooks_off;
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
  const int lanes = std::min<int>(32, L.nthreads - first);
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (l >= lanes) {
      fail(std::string(op_name(op)) + " at " + site(file, line) + ": mask " + hex(mask) + " names lane " +
           std::to_string(l) + ", which does not exist (the block has " + std::to_string(L.threads.size()) +
           " threads)");
    }
    if (L.th[first + l].state == State::kDone) {
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
    if ((mask >> l & 1u) && L.th[first + l].state != State::kWarp) all = false;
  }
  if (all) {
    for (int l = 0; l < lanes; ++l) {
      if (!(mask >> l & 1u)) continue;
      const ThreadState& o = L.th[first + l];
      if (o.op != op || o.mask != mask || o.line != line || std::strcmp(o.file, file) != 0) {
        fail(std::string("lanes of one warp wait at different warp operations: lane ") + std::to_string(t->lane) +
             " at " + op_name(op) + " mask " + hex(mask) + " (" + site(file, line) + "), lane " + std::to_string(l) +
             " at " + op_name(o.op) + " mask " + hex(o.mask) + " (" + site(o.file, o.line) + ")");
      }
    }
    uint32_t ballot = 0;
    for (int l = 0; l < lanes; ++l) {
      if ((mask >> l & 1u) && L.th[first + l].value) ballot |= 1u << l;
    }
    for (int l = 0; l < lanes; ++l) {
      if (!(mask >> l & 1u)) continue;
      ThreadState& o = L.th[first + l];
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
        o.result = L.th[first + src].value;
      } else if (op == kBallot) {
        o.result = ballot;
      } else if (op == kAny) {
        o.result = ballot != 0;
      } else if (op == kAll) {
        o.result = ballot == (mask & (lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u)));
      }
    }
    // Only __syncwarp orders memory between lanes (CUDA: shuffles and votes "do not imply a memory
    // barrier"), and only one that names every lane of the warp is counted (a partial mask orders
    // nothing here: conservative).
    if (op == kSyncWarp && (mask | ~(lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u))) == 0xffffffffu) {
      ++L.wgen[t->warp];
    }
    for (int l = 0; l < lanes; ++l) {
      if (mask >> l & 1u) make_ready(first + l);
    }
  }
  yield_to_scheduler();
  return t->result;
}

MONA_EMU_NOTSAN unsigned active_mask() {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  const int first = L.cur->warp * 32;
  const int lanes = std::min<int>(32, L.nthreads - first);
  unsigned m = 0;
  for (int l = 0; l < lanes; ++l) {
    if (L.th[first + l].state != State::kDone) m |= 1u << l;
  }
  return m;
}

namespace {

const char* kind_name(Access a) { return a == kRead ? "read" : a == kWrite ? "write" : "atomic"; }
const char* kind_verb(Access a) { return a == kRead ? "reads" : a == kWrite ? "writes" : "atomically updates"; }

uintptr_t static_size() { return g_shared_span; }

std::string pc_token(const void* pc) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "@PC:%p@", pc);
  return buf;
}

// Where an access is, as the report names it (a static array's name is filled in after the launch).
std::string place(Region region, int64_t off, int64_t bytes) {
  const std::string range = "bytes [" + std::to_string(off) + ", " + std::to_string(off + bytes) + ")";
  if (region == Region::kDynamic) return "dynamic shared memory (MONA_DYNAMIC_SHARED), " + range;
  char buf[48];
  std::snprintf(buf, sizeof(buf), "@STATIC:%p:%lld@", reinterpret_cast<void*>(g_shared_lo + off),
                static_cast<long long>(bytes));
  return buf;
}

std::string epoch_str(const Launch& L) {
  if (L.epoch == 0) return "epoch 0 (from the block's start to its first __syncthreads())";
  return "epoch " + std::to_string(L.epoch) + " (after the block's __syncthreads() number " + std::to_string(L.epoch) +
         ", at " + site(L.last_barrier_file, L.last_barrier_line) + ")";
}

[[noreturn]] void report(const std::string& text, const void* pc_this, const void* pc_other) {
  const HooksOff hooks_off;
  Launch& L = *g_launch;
  if (!L.race.set) {
    L.race.set = true;
    L.race.pc_this = pc_this;
    L.race.pc_other = pc_other;
  }
  fail(text);
}

// Conflict of the current access with a recorded one of another thread: not ordered by a barrier
// (same stamp, checked by the caller) nor, for two lanes of one warp, by a __syncwarp() of the warp.
__attribute__((no_sanitize_thread, always_inline)) inline bool unordered(const Launch& L, const ThreadState* t,
                                                                         uint32_t gen, const Acc& a) {
  if (a.tid < 0 || a.tid == t->linear) return false;
  return !((a.tid >> 5) == t->warp && a.wgen != gen);  // warp = linear index / 32
}

__attribute__((no_sanitize_thread, always_inline)) inline void remember(Acc* slots, const Launch& L,
                                                                        const ThreadState* t, uint32_t gen,
                                                                        const void* pc, bool atomic,
                                                                        uint8_t* atomic_bits) {
  int k;
  if (slots[0].tid == t->linear) {
    k = 0;
  } else if (slots[1].tid == t->linear) {
    k = 1;
  } else if (slots[0].tid < 0 || !unordered(L, t, gen, slots[0])) {
    k = 0;
  } else if (slots[1].tid < 0 || !unordered(L, t, gen, slots[1])) {
    k = 1;
  } else {
    return;  // two other threads already recorded: a later conflicting access finds one of them
  }
  const bool fresh = slots[k].tid != t->linear;
  slots[k] = Acc{t->linear, gen, pc};
  if (atomic_bits) {  // bit k: every write of w[k]'s thread in this epoch was atomic
    const auto bit = static_cast<uint8_t>(1u << k);
    if (fresh) {
      *atomic_bits = atomic ? (*atomic_bits | bit) : (*atomic_bits & ~bit);
    } else if (!atomic) {
      *atomic_bits &= ~bit;
    }
  }
}

// The race detector: records an access of `bytes` bytes at offset `off` of a shared region by the
// current thread and reports the first conflict (see cuda_emu.h).
MONA_EMU_NOTSAN void record(Region region, int64_t off, int64_t bytes, Access kind, const void* pc) {
  // no guard here (the common path runs no instrumented code): the reports below switch the hooks off
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  const uint32_t gen = L.wgen[t->warp];
  Slot* shadow = (region == Region::kStatic ? g_static_shadow_p : g_dynamic_shadow_p) + off;
  for (int64_t i = 0; i < bytes; ++i) {
    Slot& s = shadow[i];
    if (s.stamp != L.stamp) {
      s.stamp = L.stamp;
      s.w[0].tid = s.w[1].tid = s.r[0].tid = s.r[1].tid = -1;
      s.watomic = 0;
    }
    if (kind != kWrite && s.wstamp < L.block_stamp) {
      const HooksOff hooks_off;
      report(std::string("shared memory ") + kind_name(kind) + " of " + place(region, off, bytes) +
                 " before any thread of the block wrote them (uninitialised; a missing __syncthreads() between the "
                 "write and this read?), at " +
                 pc_token(pc),
             pc, nullptr);
    }
    const Acc* other = nullptr;
    const char* hazard = nullptr;
    for (int k = 0; k < 2 && !other; ++k) {
      if (unordered(L, t, gen, s.w[k]) && !(kind == kAtomic && (s.watomic >> k & 1u))) {
        other = &s.w[k];
        hazard = kind == kRead ? "read after write" : kind == kWrite ? "write after write" : "atomic after write";
      }
    }
    for (int k = 0; k < 2 && !other && kind != kRead; ++k) {
      if (unordered(L, t, gen, s.r[k])) {
        other = &s.r[k];
        hazard = kind == kWrite ? "write after read" : "atomic after read";
      }
    }
    if (other) {
      const HooksOff hooks_off;
      const ThreadState& o = L.th[other->tid];
      const bool other_wrote = hazard[std::strlen(hazard) - 5] == 'w';  // "... after write"
      const bool other_atomic = other_wrote && (s.watomic >> (other == &s.w[0] ? 0 : 1) & 1u);
      const bool same_warp = o.warp == t->warp;
      report("shared memory race (" + std::string(hazard) + ") on " + place(region, off, bytes) + " (byte " +
                 std::to_string(off + i) + "): this thread " + kind_verb(kind) + " it at " + pc_token(pc) +
                 ", thread " + dim_str(o.idx) +
                 (other_atomic  ? " atomically updated"
                  : other_wrote ? " wrote"
                                : " read") +
                 " it at " + pc_token(other->pc) + ", both in " + epoch_str(L) + ", with no __syncthreads()" +
                 (same_warp ? " nor __syncwarp() (the two are lanes " + std::to_string(o.lane) + " and " +
                                  std::to_string(t->lane) + " of warp " + std::to_string(t->warp) + ")"
                            : std::string()) +
                 " in between",
             pc, other->pc);
    }
    if (kind == kRead) {
      remember(s.r, L, t, gen, pc, false, nullptr);
    } else {
      remember(s.w, L, t, gen, pc, kind == kAtomic, &s.watomic);
      s.wstamp = L.stamp;
    }
  }
  if (L.schedule == Schedule::kInterleave) {  // the next thread runs before this one goes on
    make_ready(t->linear);
    yield_to_scheduler();
  }
}

// Accesses of instrumented code (-fsanitize=thread): only static shared memory is of interest.
MONA_EMU_NOTSAN void hook_static(uintptr_t off, int64_t bytes, Access kind, const void* pc) {
  record(Region::kStatic, static_cast<int64_t>(off), std::min<int64_t>(bytes, static_cast<int64_t>(g_hook_size - off)),
         kind, pc);
}

// ---- global memory ----
// One shadow entry per byte of global memory written in the current launch (pages of 4 KiB, made on
// the first write of the launch): the latest writer (block, thread, barrier epoch, the warp's
// __syncwarp count, atomic or not, the code). Two threads of different blocks are never ordered
// within a launch; two of one block are ordered by a __syncthreads() (or, lanes of one warp, a
// __syncwarp()) between the accesses. A write that meets another thread's unordered write (not
// both atomic), and a read that meets another thread's unordered write, is a race. Reads are not
// recorded (they would cost a shadow entry per byte of every input): a read that comes before the
// other thread's write in the schedule's order is found under the reverse schedule.
struct GAcc {
  uint32_t launch = 0;  // 0: no access (launch ids start at 1)
  uint32_t block = 0;
  uint32_t epoch = 0;
  uint32_t wgen = 0;
  uint16_t tid = 0;
  uint8_t atomic = 0;
  const void* pc = nullptr;
};
constexpr int kPageBits = 12;
struct GPage {
  GAcc e[1 << kPageBits];
};
uint32_t g_launch_id = 0;
std::unordered_map<uintptr_t, GPage*> g_pages;  // page number -> shadow, this launch
std::vector<GPage*> g_free_pages;                // reused (stale entries carry an older launch id)
constexpr int kCacheSize = 64;
uintptr_t g_cache_tag[kCacheSize];
GPage* g_cache_page[kCacheSize];

void clear_page_cache() {
  for (int i = 0; i < kCacheSize; ++i) g_cache_tag[i] = ~uintptr_t{0};
}

void begin_global_launch() {
  ++g_launch_id;
  clear_page_cache();
}

void end_global_launch() {
  for (auto& kv : g_pages) g_free_pages.push_back(kv.second);
  g_pages.clear();
  clear_page_cache();
}

MONA_EMU_NOTSAN GPage* global_page(uintptr_t page, bool create) {
  const int slot = static_cast<int>(page & (kCacheSize - 1));
  if (g_cache_tag[slot] == page && (g_cache_page[slot] || !create)) return g_cache_page[slot];
  const HooksOff hooks_off;  // the map's code is instrumented
  GPage* pg = nullptr;
  const auto it = g_pages.find(page);
  if (it != g_pages.end()) {
    pg = it->second;
  } else if (create) {
    if (!g_free_pages.empty()) {
      pg = g_free_pages.back();
      g_free_pages.pop_back();
    } else {
      // calloc: all-zero entries carry launch 0 (none); never a GPage temporary on the fiber's stack
      pg = static_cast<GPage*>(std::calloc(1, sizeof(GPage)));
      TORCH_CHECK(pg, "mona emu: out of memory for the global-memory race detector");
    }
    g_pages.emplace(page, pg);
  }
  g_cache_tag[slot] = page;
  g_cache_page[slot] = pg;
  return pg;
}

MONA_EMU_NOTSAN void hook_global(uintptr_t a, int64_t bytes, Access kind, const void* pc) {
  Launch& L = *g_launch;
  ThreadState* t = L.cur;
  const uint32_t gen = L.wgen[t->warp];
  for (int64_t i = 0; i < bytes; ++i) {
    const uintptr_t addr = a + static_cast<uintptr_t>(i);
    GPage* pg = global_page(addr >> kPageBits, kind != kRead);
    if (!pg) {  // nothing written on this page in this launch: skip to the next page
      i += static_cast<int64_t>(((addr | ((uintptr_t{1} << kPageBits) - 1)) - addr));
      continue;
    }
    GAcc& e = pg->e[addr & ((uintptr_t{1} << kPageBits) - 1)];
    if (e.launch == g_launch_id && !(e.block == L.block_linear && e.tid == t->linear)) {
      const bool same_block = e.block == L.block_linear;
      const bool ordered = same_block && (e.epoch != L.epoch || ((e.tid >> 5) == t->warp && e.wgen != gen));
      if (!ordered && !(kind == kAtomic && e.atomic)) {
        const HooksOff hooks_off;
        const char* hazard = kind == kRead    ? "read after write"
                             : kind == kWrite ? "write after write"
                                              : "atomic after write";
        char where_buf[64];
        std::snprintf(where_buf, sizeof(where_buf), "%p", reinterpret_cast<void*>(a));
        const uint3 obl{e.block % L.grid.x, (e.block / L.grid.x) % L.grid.y, e.block / (L.grid.x * L.grid.y)};
        const uint3 oidx{e.tid % L.block.x, (e.tid / L.block.x) % L.block.y, e.tid / (L.block.x * L.block.y)};
        report("global memory race (" + std::string(hazard) + ") on bytes [" + where_buf + ", +" +
                   std::to_string(bytes) + ") (byte +" + std::to_string(i) + "): this thread " + kind_verb(kind) +
                   " it at " + pc_token(pc) + ", thread " + dim_str(oidx) +
                   (same_block ? " of this block" : " of block " + dim_str(obl)) +
                   (e.atomic ? " atomically updated" : " wrote") + " it at " + pc_token(e.pc) + " in the same launch" +
                   (same_block ? ", with no __syncthreads() in between"
                               : " (no barrier orders two blocks of one launch: use an atomic or a second kernel)"),
               pc, e.pc);
      }
    }
    if (kind != kRead) {
      e.launch = g_launch_id;
      e.block = L.block_linear;
      e.epoch = L.epoch;
      e.wgen = gen;
      e.tid = static_cast<uint16_t>(t->linear);
      e.atomic = kind == kAtomic;
      e.pc = pc;
    }
  }
}

__attribute__((always_inline, no_sanitize_thread)) inline void hook(const void* p, int64_t bytes, Access kind,
                                                                    const void* pc) {
#if !defined(__SANITIZE_THREAD__)
  // Without the instrumentation (the AddressSanitizer variant) plain accesses are not seen: an
  // atomic alone would look like an access of unwritten memory. Dynamic shared memory only.
  (void)p, (void)bytes, (void)kind, (void)pc;
  return;
#endif
  const uintptr_t off = reinterpret_cast<uintptr_t>(p) - g_hook_lo;
  if (off < g_hook_size && in_static_shared(off)) {
    hook_static(off, bytes, kind, pc);
    return;
  }
  if (reinterpret_cast<uintptr_t>(p) - g_stack_lo < g_stack_size || !g_stack_size) return;
  hook_global(reinterpret_cast<uintptr_t>(p), bytes, kind, pc);
}

}  // namespace

SharedBlock* dynamic_shared_block() {
  if (!g_launch) outside_kernel("dynamic shared memory");
  return &g_launch->shared;
}

MONA_EMU_NOTSAN void* shared_base(SharedBlock* b) { return b->data; }

MONA_EMU_NOTSAN void shared_access(SharedBlock* b, int64_t offset, int64_t bytes, Access access, const char* type,
                                   const void* pc) {
  const int64_t size = b->size;
  if (offset < 0 || offset + bytes > size) {
    const HooksOff hooks_off;
    fail(std::string("out-of-bounds dynamic shared memory ") + kind_name(access) + ": bytes [" +
         std::to_string(offset) + ", " + std::to_string(offset + bytes) + ") of a " + type +
         " value, but the launch gave " + std::to_string(size) + " bytes of dynamic shared memory");
  }
  record(Region::kDynamic, offset, bytes, access, pc);
}

MONA_EMU_NOTSAN void atomic_access(const void* p, int64_t bytes, const void* pc) { hook(p, bytes, kAtomic, pc); }

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptin) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

namespace {
void ensure_schedule();
}  // namespace

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

  ensure_schedule();
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
  // A test may give a grid-stride kernel fewer blocks than its launcher asks for (set_grid_limit):
  // the kernel sees the smaller gridDim, so its loops over rows beyond the grid run (CUDA caps
  // grid.y at 65535, which the tests cannot afford to reach).
  const auto lim = g_grid_limit.find(name.substr(0, name.find('<')));
  if (lim != g_grid_limit.end()) {
    grid.x = std::min(grid.x, lim->second.x);
    grid.y = std::min(grid.y, lim->second.y);
    grid.z = std::min(grid.z, lim->second.z);
  }
  find_static_shared();
  if (g_static_shadow.size() < static_size()) g_static_shadow.resize(static_size());
  g_static_shadow_p = g_static_shadow.data();

  if (!g_stack_region) {
    void* region = mmap(nullptr, kMaxThreads * kStackBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(region != MAP_FAILED, "mona emu: cannot reserve the fibers' stacks");
    g_stack_region = static_cast<char*>(region);
  }
  begin_global_launch();
  Launch L;
  L.kernel = name;
  L.grid = grid;
  L.block = block;
  L.dynamic_bytes = dynamic_bytes;
  L.schedule = g_schedule;
  std::mt19937_64 rng(static_cast<uint64_t>(g_schedule_seed));
  if (g_schedule == Schedule::kRandom) L.rng = &rng;
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
  if (L.schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  g_launch = &L;
  const FiberBody body{call, obj};
  bool ok = true;
  for (const uint3& b : order) {
    L.bidx = b;
    L.block_linear = b.x + grid.x * (b.y + grid.y * b.z);
    if (!run_block(L, body)) {
      ok = false;
      break;
    }
  }
  g_launch = nullptr;
  end_global_launch();
  TORCH_CHECK(ok, "mona emu: ", ok ? std::string() : symbolise(L.error));
}

namespace {
// The schedule from MONA_EMU_SCHEDULE until a test sets another.
struct ScheduleInit {
  ScheduleInit() {
    g_schedule_spec = default_schedule();
    g_schedule = parse_schedule(g_schedule_spec, &g_schedule_seed);
  }
};
void ensure_schedule() { static ScheduleInit once; }
}  // namespace

std::string set_schedule_mode(const std::string& spec) {
  ensure_schedule();
  const std::string wanted = spec == "default" ? default_schedule() : spec;
  int64_t seed = -1;
  const Schedule mode = parse_schedule(wanted, &seed);
  std::lock_guard<std::mutex> lock(g_mutex);
  std::string old = g_schedule_spec;
  g_schedule = mode;
  g_schedule_seed = seed;
  g_schedule_spec = wanted;
  return old;
}

int64_t set_schedule(int64_t seed) {
  ensure_schedule();
  const int64_t old = g_schedule == Schedule::kRandom ? g_schedule_seed : -1;
  set_schedule_mode(seed >= 0 ? "random:" + std::to_string(seed) : "default");
  return old;
}

void set_grid_limit(const std::string& kernel, int64_t x, int64_t y, int64_t z) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (x <= 0 && y <= 0 && z <= 0) {
    g_grid_limit.erase(kernel);
    return;
  }
  auto cap = [](int64_t v) { return v <= 0 ? ~0u : static_cast<unsigned int>(v); };
  g_grid_limit[kernel] = dim3(cap(x), cap(y), cap(z));
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

// ---- the thread-sanitizer ABI (what -fsanitize=thread makes the compiler call) ---------------------
// The emulated translation units are compiled with -fsanitize=thread but not linked with libtsan:
// these definitions take its place. Plain accesses go to the race detector (static shared memory
// only); the atomics are the C++ atomics the host code uses (refcounts), done as such.
extern "C" {
#define MONA_TSAN_ACCESS(n)                                                \
  MONA_EMU_NOTSAN void __tsan_read##n(void* p) {                           \
    mona::emu::hook(p, n, mona::emu::kRead, __builtin_return_address(0));  \
  }                                                                        \
  MONA_EMU_NOTSAN void __tsan_write##n(void* p) {                          \
    mona::emu::hook(p, n, mona::emu::kWrite, __builtin_return_address(0)); \
  }                                                                        \
  MONA_EMU_NOTSAN void __tsan_unaligned_read##n(void* p) {                 \
    mona::emu::hook(p, n, mona::emu::kRead, __builtin_return_address(0));  \
  }                                                                        \
  MONA_EMU_NOTSAN void __tsan_unaligned_write##n(void* p) {                \
    mona::emu::hook(p, n, mona::emu::kWrite, __builtin_return_address(0)); \
  }                                                                        \
  MONA_EMU_NOTSAN void __tsan_volatile_read##n(void* p) {                  \
    mona::emu::hook(p, n, mona::emu::kRead, __builtin_return_address(0));  \
  }                                                                        \
  MONA_EMU_NOTSAN void __tsan_volatile_write##n(void* p) {                 \
    mona::emu::hook(p, n, mona::emu::kWrite, __builtin_return_address(0)); \
  }
MONA_TSAN_ACCESS(1)
MONA_TSAN_ACCESS(2)
MONA_TSAN_ACCESS(4)
MONA_TSAN_ACCESS(8)
MONA_TSAN_ACCESS(16)
#undef MONA_TSAN_ACCESS
MONA_EMU_NOTSAN void __tsan_read_range(void* p, unsigned long n) {
  mona::emu::hook(p, static_cast<int64_t>(n), mona::emu::kRead, __builtin_return_address(0));
}
MONA_EMU_NOTSAN void __tsan_write_range(void* p, unsigned long n) {
  mona::emu::hook(p, static_cast<int64_t>(n), mona::emu::kWrite, __builtin_return_address(0));
}
MONA_EMU_NOTSAN void __tsan_init() {}
MONA_EMU_NOTSAN void __tsan_func_entry(void*) {}
MONA_EMU_NOTSAN void __tsan_func_exit() {}
MONA_EMU_NOTSAN void __tsan_vptr_update(void**, void*) {}
MONA_EMU_NOTSAN void __tsan_vptr_read(void**) {}
MONA_EMU_NOTSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
MONA_EMU_NOTSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#define MONA_TSAN_ATOMIC(n, T)                                                                                         \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  MONA_EMU_NOTSAN void __tsan_atomic##n##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_exchange(volatile T* a, T v, int) {                                             \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                                \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_add(volatile T* a, T v, int) {                                            \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                                 \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_sub(volatile T* a, T v, int) {                                            \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                                 \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_and(volatile T* a, T v, int) {                                            \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                                 \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_or(volatile T* a, T v, int) {                                             \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                                  \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_xor(volatile T* a, T v, int) {                                            \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                                 \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_fetch_nand(volatile T* a, T v, int) {                                           \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                                \
  }                                                                                                                    \
  MONA_EMU_NOTSAN int __tsan_atomic##n##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                 \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                            \
  }                                                                                                                    \
  MONA_EMU_NOTSAN int __tsan_atomic##n##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                   \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                             \
  }                                                                                                                    \
  MONA_EMU_NOTSAN T __tsan_atomic##n##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                       \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                                  \
    return c;                                                                                                          \
  }
MONA_TSAN_ATOMIC(8, uint8_t)
MONA_TSAN_ATOMIC(16, uint16_t)
MONA_TSAN_ATOMIC(32, uint32_t)
MONA_TSAN_ATOMIC(64, uint64_t)
#undef MONA_TSAN_ATOMIC
}  // extern "C"

// Test-only controls of the emulation, next to the emulated kernels (ops mona_emu::*).
TORCH_LIBRARY_FRAGMENT(mona_emu, m) {
  // Scheduling order: seed < 0 runs blocks and threads in index order (the default); seed >= 0
  // shuffles both with that seed. Returns the previous seed.
  m.def("set_schedule(int seed) -> int", &mona::emu::set_schedule);
  // The schedule: "forward" (index order), "reverse", "random:SEED" (blocks and ready threads
  // shuffled), "interleave" (a switch to the next thread at every shared-memory access) or "default"
  // (MONA_EMU_SCHEDULE, else forward). Returns the previous one.
  m.def("set_schedule_mode(str spec) -> str", &mona::emu::set_schedule_mode);
  // The largest grid the emulation runs `kernel` (base name, no template arguments) with; the kernel
  // sees it as gridDim (a grid-stride kernel must give the same result). 0: no limit in that
  // dimension; all 0: the limit is removed.
  m.def("set_grid_limit(str kernel, int x, int y, int z) -> ()", &mona::emu::set_grid_limit);
  // "kernel=launches" for every kernel launched so far in this process (test coverage).
  m.def("launched_kernels() -> str[]", &mona::emu::launched_kernels);
  // "kernel=x,y,z": the grid of the latest launch of every kernel launched so far (launch shapes).
  m.def("last_grids() -> str[]", &mona::emu::last_grids);
}
