// Per-key math of the ring-buffer push, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace mona {
namespace bank_math {

// A key with this rank among its class's n selected keys survives the push iff it is one of the
// last K (earlier ones would be overwritten by later ones of the same push).
MONA_HD bool survives(int64_t rank, int64_t n, int64_t K) { return rank >= n - K; }

// Slot of the key of rank j when the class's write pointer was ptr before the push.
MONA_HD int64_t slot(int64_t ptr, int64_t rank, int64_t K) { return (ptr + rank) % K; }

MONA_HD int64_t next_ptr(int64_t ptr, int64_t n, int64_t K) { return (ptr + n % K) % K; }

MONA_HD int64_t next_fill(int64_t fill, int64_t n, int64_t K) { return fill + n < K ? fill + n : K; }

// Total order used by the capped selection: smaller = kept first. Higher priority first, then
// lower index. float -> uint32 monotone map (negative floats flipped), then inverted.
MONA_HD uint64_t order_key(float priority, int64_t index) {
  uint32_t bits;
#if MONA_DEVICE_CODE
  bits = __float_as_uint(priority);
#else
  std::memcpy(&bits, &priority, sizeof(bits));
#endif
  const uint32_t mono = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(~mono) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(index));
}

template <typename index_t>
MONA_HD bool is_class(index_t label, int64_t C) {
  return label >= 0 && static_cast<int64_t>(label) < C;
}

}  // namespace bank_math
}  // namespace mona
