// mona::class_pools — schema. CPU: class_pools_cpu.cpp; CUDA: class_pools_cuda.cu;
// fake kernel: mona_ext/ops/class_pools.py; tests: tests/ops/test_class_pools.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Valid pixels grouped by class (a counting sort), each class split into hard | easy.
  //   labels [B, H, W] / [N] (int64/int32), valid: optional labels-shaped mask (nonzero = valid),
  //   prob: optional [B, C, H, W] / [N, C] class probabilities; a pixel of class c is hard when
  //   prob[c] < strong_threshold (every pixel is hard without prob).
  // Returns offsets [C], counts [C], hard_counts [C] (int64) and permutation [N] (int64):
  //   permutation[offsets[c] : offsets[c] + counts[c]] = the flat pixel indices of class c, its
  //   hard pixels first, each part in pixel order; entries past the last valid pixel are -1.
  m.def(
      "class_pools(Tensor labels, int num_classes, Tensor? valid=None, Tensor? prob=None, float strong_threshold=1.0,"
      " int ignore_index=-1) -> (Tensor offsets, Tensor counts, Tensor hard_counts, Tensor permutation)");
}
