// mona::contrast_infonce (+ _backward) and mona::contrast_loss — schemas.
// contrast_infonce CPU: contrast_infonce_cpu.cpp; CUDA: contrast_infonce_cuda.cu.
// contrast_loss is a composite (class_pools -> class_mean -> sample_negatives -> contrast_infonce)
// implemented in mona_ext/ops/contrast.py; tests: tests/ops/test_contrast_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Fused InfoNCE over sampled indices: queries and keys are gathered from the feature maps
  // where they lie; the Q x (M+1) x D key tensor is never built.
  //   features [B, D, H, W] / [N, D]: the (student) map the queries come from (gets the gradient);
  //   key_features: same shape, the map negatives are read from (no gradient);
  //   bank: optional [C, K, D] class-aware memory bank (negative_index >= N points into it);
  //   prototypes [C, D]: positive key of each class (no gradient);
  //   query_index [C, Q], negative_index [C, Q, M], class_weight [C]: from sample_negatives.
  // loss = sum_c class_weight[c] * mean_q [ logsumexp_j(l_j) - l_0 ], l_0 = cos(x, proto_c) / t,
  // l_j = cos(x, key_j) / t. Every key is read exactly once: with compute_grad the same pass
  // accumulates (online-softmax style) d loss / d query, returned as grad_rows [C, Q, D]
  // (float32; float64 for float64 features; [0] without compute_grad) for the backward, which
  // only scatters grad_loss * grad_rows into the query pixels.
  m.def("contrast_infonce(Tensor features, Tensor key_features, Tensor? bank, Tensor prototypes, Tensor query_index,"
        " Tensor negative_index, Tensor class_weight, float temperature, bool compute_grad=True)"
        " -> (Tensor loss, Tensor grad_rows)");
  m.def("contrast_infonce_backward(Tensor grad_loss, Tensor features, Tensor query_index, Tensor class_weight,"
        " Tensor grad_rows) -> Tensor grad_features");
  // The whole anatomical contrastive (ACF) loss; see mona_ext.contrast_loss for the arguments.
  m.def("contrast_loss(Tensor features, Tensor labels, Tensor? valid, Tensor? prob, int num_classes,"
        " float strong_threshold=0.97, float temperature=0.5, int num_queries=256, int num_negatives=512,"
        " Tensor? key_features=None, Tensor? bank=None, Tensor? bank_fill=None, str negatives=\"batch\","
        " str query_mode=\"hard\", int ignore_index=-1, Generator? generator=None) -> Tensor");
}
