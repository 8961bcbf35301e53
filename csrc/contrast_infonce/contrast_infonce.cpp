// mona::contrast_infonce (+ _backward) — schemas. CPU kernel: contrast_infonce_cpu.cpp; CUDA kernel:
// contrast_infonce_cuda.cu; autograd + fake kernel: mona_ext/ops/contrast_infonce.py;
// tests: tests/ops/test_contrast_infonce.py. (mona::contrast_loss, the composite built from this op, is
// defined and implemented in Python: mona_ext/ops/contrast_loss.py.)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Fused InfoNCE over sampled indices: queries and keys are gathered from the feature maps
  // where they lie; the Q x (M+1) x D key tensor is never built.
  //   features [B, D, H, W] / [N, D]: the (student) map the queries come from (gets the gradient);
  //   key_features: same shape, the map negatives are read from (no gradient);
  //   prototypes [C, D]: positive key of each class (no gradient);
  //   query_index [C, Q], negative_index [C, Q, M], class_weight [C]: from sample_negatives;
  //   bank: optional [C, K, D] class-aware memory bank (negative_index >= N points into it).
  // loss = sum_c class_weight[c] * mean_q [ logsumexp_j(l_j) - l_0 ], l_0 = cos(x, proto_c) / t,
  // l_j = cos(x, key_j) / t. Every key is read exactly once: with compute_grad the same pass
  // accumulates (online-softmax style) d loss / d query, returned as grad_rows [C, Q, D]
  // (float32; float64 for float64 features; [0] without compute_grad) for the backward, which
  // only scatters grad_loss * grad_rows into the query pixels.
  m.def(
      "contrast_infonce(Tensor features, Tensor key_features, Tensor prototypes, Tensor query_index,"
      " Tensor negative_index, Tensor class_weight, float temperature=0.5, Tensor? bank=None,"
      " bool compute_grad=True)"
      " -> (Tensor loss, Tensor grad_rows)");
  m.def(
      "contrast_infonce_backward(Tensor grad_loss, Tensor features, Tensor query_index, Tensor class_weight,"
      " Tensor grad_rows) -> Tensor grad_features");
}
