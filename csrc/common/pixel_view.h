// A feature map seen as pixels x channels, whatever its layout.
//
// `[B, D, H, W]` maps (any strides as long as H and W can be merged) and `[N, D]` matrices are
// both described as a 3-D strided view `[B, D, P]`: element (b, d, p) lies at
//   data + b * stride_b + d * stride_d + p * stride_p.
// NCHW-contiguous: stride_p == 1; channels-last: stride_d == 1; `[N, D]`: B == 1.
// Kernels read features where they lie through this view: no permuted copy is made.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mona {

template <typename T>
struct PixelView {
  T* data;
  int64_t B, D, P;
  int64_t stride_b, stride_d, stride_p;

  MONA_HD int64_t num_pixels() const { return B * P; }
  // Offset of (pixel n = b * P + p, channel d).
  MONA_HD int64_t offset(int64_t n, int64_t d) const {
    const int64_t b = n / P;
    const int64_t p = n - b * P;
    return b * stride_b + d * stride_d + p * stride_p;
  }
  MONA_HD T& at(int64_t n, int64_t d) const { return data[offset(n, d)]; }
  // True when consecutive channels of a pixel are adjacent in memory (channels-last, [N, D]).
  MONA_HD bool channels_fastest() const { return stride_d == 1 && stride_p != 1; }
};

}  // namespace mona
