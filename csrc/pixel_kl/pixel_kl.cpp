// mona::pixel_kl — schema. CPU kernel: pixel_kl_cpu.cpp; CUDA kernel: pixel_kl_cuda.cu;
// autograd + fake kernel: mona_ext/ops/pixel_kl.py; tests: tests/ops/test_pixel_kl.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // Per-pixel KL divergence between two class distributions given as logits, masked mean over pixels.
  //   logits_a, logits_b [B, C, H, W] (any strides, read in place) or [N, C]; same shape and dtype.
  //   mask optional [B, H, W] / [N], floating or bool: per-pixel weight (0/1 or soft).
  // With p = softmax(logits_a), q = softmax(logits_b) over C (log-softmax computed inside):
  //   kl(pixel) = KL(p || q) = sum_c p_c (log p_c - log q_c)   [= F.kl_div(input=log q, target=p)]
  //   symmetric: kl(pixel) += KL(q || p).
  //   loss = sum_pixels w * kl / sum_pixels w   (0 when sum w == 0, with zero gradients).
  // Returns loss (a 0-dim tensor of the logits' dtype, accumulated in fp32 / fp64), weight_sum
  // (sum w as 0-dim fp32 / fp64) and, when compute_grad_a / compute_grad_b, d loss / d logits_a and
  // d loss / d logits_b (for grad_loss = 1) computed in the same pass over the logits ([0]-shaped
  // otherwise): the autograd backward then only multiplies them by grad_loss.
  m.def(
      "pixel_kl(Tensor logits_a, Tensor logits_b, Tensor? mask=None, bool symmetric=True,"
      " bool compute_grad_a=False, bool compute_grad_b=False)"
      " -> (Tensor loss, Tensor weight_sum, Tensor grad_a, Tensor grad_b)");
  // Backward from the logits alone: recomputes the log-softmaxes (for a forward called without
  // compute_grad_*). Gradients that are not needed come back as [0]-shaped tensors.
  m.def(
      "pixel_kl_backward(Tensor grad_loss, Tensor logits_a, Tensor logits_b, Tensor? mask, Tensor weight_sum,"
      " bool symmetric, bool need_grad_a, bool need_grad_b) -> (Tensor grad_a, Tensor grad_b)");
}
