// mona::similarity_kl — CPU kernels.
//
// Parallel strategy: the B x K dot products (student and teacher against the raw queue) are two
// BLAS matrix products (at::mm, multi-threaded; by far the fastest way on a CPU, and only B x K
// floats, B small); cosines are formed on the fly from per-row inverse norms — no normalised copy
// of the queue. Then at::parallel_for over rows runs the online softmax / KL of
// similarity_kl_math.h. Backward: the same two products, per-entry weights (ps - pt) / tau_s
// scaled by 1 / |q_j|, and one more product [B, K] x [K, d] for sum_j a_j q_hat_j.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <vector>

#include "common/cosine_math.h"
#include "common/tensor_utils.h"
#include "common/embedding_checks.h"
#include "similarity_kl/similarity_kl_math.h"

namespace mona {
namespace {

namespace sk = similarity_kl_math;
namespace cm = cosine_math;


template <typename acc_t>
std::vector<acc_t> squared_norms(const at::Tensor& x) {
  const int64_t R = x.size(0), d = x.size(1);
  std::vector<acc_t> out(R);
  const acc_t* p = x.data_ptr<acc_t>();
  at::parallel_for(0, R, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      acc_t s = 0;
      for (int64_t k = 0; k < d; ++k) s += p[r * d + k] * p[r * d + k];
      out[r] = s;
    }
  });
  return out;
}

void check_taus(const char* op, double tau_s, double tau_t) {
  TORCH_CHECK_VALUE(tau_s > 0 && tau_t > 0, op, ": temperatures must be positive, got tau_student=", tau_s,
                    " and tau_teacher=", tau_t);
}

struct Prepared {
  at::Tensor s, t, q, S, T;
};

Prepared prepare(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& queue) {
  const auto acc = acc_dtype(student.scalar_type());
  Prepared p;
  p.s = student.to(acc).contiguous();
  p.t = teacher.to(acc).contiguous();
  p.q = queue.to(acc).contiguous();
  p.S = at::mm(p.s, p.q.t());
  p.T = at::mm(p.t, p.q.t());
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_kl_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                                 const at::Tensor& queue, double tau_s, double tau_t) {
  const char* op = "similarity_kl";
  check_student_teacher_queue(op, student, teacher, queue);
  check_taus(op, tau_s, tau_t);
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0), K = queue.size(0);
  at::Tensor lse_s = at::empty({B}, student.options().dtype(acc));
  at::Tensor lse_t = at::empty({B}, student.options().dtype(acc));
  at::Tensor loss = at::zeros({}, student.options().dtype(acc));
  if (B == 0) return {loss.to(student.scalar_type()), lse_s, lse_t};
  const Prepared p = prepare(student, teacher, queue);
  AT_DISPATCH_FLOATING_TYPES(acc, "similarity_kl_cpu", [&] {
    using acc_t = scalar_t;
    const auto nq = squared_norms<acc_t>(p.q), ns = squared_norms<acc_t>(p.s), nt = squared_norms<acc_t>(p.t);
    std::vector<acc_t> inq(K);
    for (int64_t j = 0; j < K; ++j) inq[j] = cm::inv_norm(nq[j]);
    const acc_t *S = p.S.data_ptr<acc_t>(), *T = p.T.data_ptr<acc_t>();
    std::vector<acc_t> kl(B);
    acc_t *ls = lse_s.data_ptr<acc_t>(), *lt = lse_t.data_ptr<acc_t>();
    at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t cs = cm::inv_norm(ns[i]) / static_cast<acc_t>(tau_s);
        const acc_t ct = cm::inv_norm(nt[i]) / static_cast<acc_t>(tau_t);
        auto st = sk::OnlineKL<acc_t>::empty();
        for (int64_t j = 0; j < K; ++j) st.update(S[i * K + j] * cs * inq[j], T[i * K + j] * ct * inq[j]);
        kl[i] = st.kl();
        ls[i] = st.lse_s();
        lt[i] = st.lse_t();
      }
    });
    acc_t total = 0;
    for (int64_t i = 0; i < B; ++i) total += kl[i];
    loss.fill_(total / static_cast<acc_t>(B));
  });
  return {loss.to(student.scalar_type()), lse_s, lse_t};
}

at::Tensor similarity_kl_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                      const at::Tensor& queue, const at::Tensor& lse_student,
                                      const at::Tensor& lse_teacher, double tau_s, double tau_t) {
  const char* op = "similarity_kl_backward";
  check_student_teacher_queue(op, student, teacher, queue);
  check_taus(op, tau_s, tau_t);
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0), K = queue.size(0), d = student.size(1);
  if (B == 0) return at::zeros_like(student);
  const Prepared p = prepare(student, teacher, queue);
  at::Tensor A = at::empty({B, K}, student.options().dtype(acc));
  at::Tensor grad = at::empty({B, d}, student.options().dtype(acc));
  const at::Tensor ls_t = lse_student.to(acc).contiguous(), lt_t = lse_teacher.to(acc).contiguous();
  const double g = grad_loss.to(at::kDouble).item<double>();  // CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES(acc, "similarity_kl_backward_cpu", [&] {
    using acc_t = scalar_t;
    const auto nq = squared_norms<acc_t>(p.q), ns = squared_norms<acc_t>(p.s), nt = squared_norms<acc_t>(p.t);
    std::vector<acc_t> inq(K), acos(B);
    for (int64_t j = 0; j < K; ++j) inq[j] = cm::inv_norm(nq[j]);
    const acc_t *S = p.S.data_ptr<acc_t>(), *T = p.T.data_ptr<acc_t>();
    const acc_t *ls = ls_t.data_ptr<acc_t>(), *lt = lt_t.data_ptr<acc_t>();
    acc_t* a = A.data_ptr<acc_t>();
    const acc_t scale = static_cast<acc_t>(g / static_cast<double>(B)), inv_tau_s = acc_t(1) / static_cast<acc_t>(tau_s);
    at::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t is = cm::inv_norm(ns[i]), it = cm::inv_norm(nt[i]);
        acc_t c = 0;
        for (int64_t j = 0; j < K; ++j) {
          const acc_t cos_s = S[i * K + j] * is * inq[j];
          const acc_t w = sk::entry_weight(cos_s * inv_tau_s, T[i * K + j] * it * inq[j] / static_cast<acc_t>(tau_t),
                                           ls[i], lt[i], inv_tau_s, scale);
          c += w * cos_s;
          a[i * K + j] = w * inq[j];  // a_j / |q_j|: the product with q gives sum_j a_j q_hat_j
        }
        acos[i] = c;
      }
    });
    const at::Tensor G = at::mm(A, p.q);
    const acc_t *gq = G.data_ptr<acc_t>(), *s = p.s.data_ptr<acc_t>();
    acc_t* out = grad.data_ptr<acc_t>();
    for (int64_t i = 0; i < B; ++i) {
      const acc_t is = cm::inv_norm(ns[i]), proj = cm::projection(ns[i]);
      for (int64_t k = 0; k < d; ++k) out[i * d + k] = cm::grad_component(gq[i * d + k], acos[i], s[i * d + k], is, proj);
    }
  });
  return grad.to(student.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("similarity_kl", &similarity_kl_cpu);
  m.impl("similarity_kl_backward", &similarity_kl_backward_cpu);
}

}  // namespace mona
