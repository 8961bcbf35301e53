// mona::similarity_kl — schema. CPU kernel: similarity_kl_cpu.cpp; CUDA kernel: similarity_kl_cuda.cu;
// autograd + fake kernel: mona_ext/ops/similarity_kl.py; tests: tests/ops/test_similarity_kl.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // ISD / GLCon relational KL. student, teacher [B, d]; queue [K, d] (same dtype and device).
  // Per row i, over queue entries j (cosines computed inside, no normalised copies):
  //   us_j = cos(student_i, queue_j) / tau_student, ut_j = cos(teacher_i, queue_j) / tau_teacher,
  //   kl_i = KL(softmax(ut) || softmax(us)) = sum_j pt_j (log pt_j - log ps_j).
  // Returns loss = mean_i kl_i (0-dim, student's dtype; 0 for B = 0), the per-row logsumexps of
  // us and ut ([B], fp32 / fp64), which are all similarity_kl_backward needs besides the inputs,
  // and, with compute_grad, d loss / d student ([B, d], for grad_loss = 1; else an empty [0]):
  // the autograd formula then only scales it (one pass over the queue instead of two).
  // Gradient flows to the student only.
  m.def(
      "similarity_kl(Tensor student, Tensor teacher, Tensor queue, float tau_student, float tau_teacher,"
      " bool compute_grad=False) -> (Tensor loss, Tensor lse_student, Tensor lse_teacher, Tensor grad_student)");
  m.def(
      "similarity_kl_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor queue,"
      " Tensor lse_student, Tensor lse_teacher, float tau_student, float tau_teacher) -> Tensor grad_student");
}
