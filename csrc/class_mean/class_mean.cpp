// mona::class_mean — schema. CPU kernel: class_mean_cpu.cpp; CUDA kernel: class_mean_cuda.cu;
// autograd + fake kernel: mona_ext/ops/class_mean.py; tests: tests/ops/test_class_mean.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Per-class weighted mean of pixel features over valid pixels (label != ignore_index).
  //   features [B, D, H, W] (any strides; channels-last is read in place) or [N, D]
  //   labels   [B, H, W] / [N], int64 or int32, values in [0, num_classes) or ignore_index
  //   weight   optional, labels' shape, floating (0/1 mask or soft confidence)
  // Returns means [C, D] (features' dtype; an absent class -> zeros) and counts [C] (sum of
  // weights, or number of pixels; float32, float64 for float64 features).
  m.def(
      "class_mean(Tensor features, Tensor labels, int num_classes, Tensor? weight=None, int ignore_index=-1)"
      " -> (Tensor means, Tensor counts)");
  // Backward of class_mean. grad_weight is [0]-shaped unless weight_requires_grad.
  m.def(
      "class_mean_backward(Tensor grad_means, Tensor grad_counts, Tensor features, Tensor labels,"
      " Tensor? weight, Tensor means, Tensor counts, int ignore_index, bool weight_requires_grad)"
      " -> (Tensor grad_features, Tensor grad_weight)");
}
