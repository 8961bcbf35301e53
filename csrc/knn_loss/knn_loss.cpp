// mona::knn_loss — schema. CPU kernel: knn_loss_cpu.cpp; CUDA kernel: knn_loss_cuda.cu;
// autograd + fake kernel: mona_ext/ops/knn_loss.py; tests: tests/ops/test_knn_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // MONA's L_nn with a gradient to the student. student, teacher [B, d]; queue [K, d]; 1 <= k <= K.
  // For each row i: N_i = the k queue entries with the largest cos(teacher_i, queue_j) (ties -> lower j);
  // loss = -1 / (B k) * sum_i sum_{j in N_i} cos(student_i, queue_j)  (0-dim, student's dtype; 0 for B = 0).
  // Also returns the neighbour indices [B, k] int64 (most similar first), which the backward uses.
  m.def("knn_loss(Tensor student, Tensor teacher, Tensor queue, int k) -> (Tensor loss, Tensor indices)");
  m.def("knn_loss_backward(Tensor grad_loss, Tensor student, Tensor queue, Tensor indices) -> Tensor grad_student");
}
