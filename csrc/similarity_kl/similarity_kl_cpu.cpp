// mona::similarity_kl — CPU kernels.
//
// Parallel strategy: the B x K dot products of the student and the teacher against the raw queue
// are ONE BLAS product at::mm([2B, d], [d, K]) (multi-threaded; the queue is read once for both,
// and B x K values are small next to the K x d queue); cosines are formed by scaling with per-row
// inverse norms (one parallel pass over the queue, simd::dot_f32) — no normalised copy of the queue.
// The softmaxes over the queue are ATen's vectorised, multi-threaded row reductions on the B x K
// logits. One pass: when the student needs a gradient, the forward computes it too (the entry
// weights (ps - pt) / tau_s, then one more product [B, K] x [K, d]), so the queue is multiplied
// three times per training step (as in plain PyTorch: two similarity matrices and the gradient),
// never five. similarity_kl_backward recomputes everything from the inputs and the saved
// logsumexps, for callers of the op that did not ask for the gradient in the forward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <vector>

#include "common/cosine_math.h"
#include "common/simd_cpu.h"
#include "common/tensor_utils.h"
#include "similarity_kl/similarity_kl_checks.h"

namespace mona {
namespace {

// Squared norms of the rows of a contiguous [R, d] matrix (fixed-order vector loop per row).
template <typename acc_t>
at::Tensor squared_norms(const at::Tensor& x) {
  const int64_t R = x.size(0), d = x.size(1);
  at::Tensor out = at::empty({R}, x.options());
  const acc_t* p = x.data_ptr<acc_t>();
  acc_t* o = out.data_ptr<acc_t>();
  at::parallel_for(0, R, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) o[r] = simd::dot(p + r * d, p + r * d, d);
  });
  return out;
}

template <typename acc_t>
at::Tensor inv_norms(const at::Tensor& squared) {
  at::Tensor out = at::empty_like(squared);
  const acc_t* n = squared.data_ptr<acc_t>();
  acc_t* o = out.data_ptr<acc_t>();
  for (int64_t r = 0; r < squared.numel(); ++r) o[r] = cosine_math::inv_norm(n[r]);
  return out;
}

// The logits of one call: us = cos(student, queue) / tau_s, ut = cos(teacher, queue) / tau_t, [B, K]
// each (two views of one [2B, K] product), and what the gradient needs besides.
struct Logits {
  at::Tensor s, q;        // student [B, d], queue [K, d], acc dtype, contiguous
  at::Tensor ns, iq;      // student squared norms [B], queue inverse norms [K]
  at::Tensor st, us, ut;  // [2B, K] and its two halves
};

template <typename acc_t>
Logits compute_logits(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& queue, double tau_s,
                      double tau_t) {
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0);
  Logits logits;
  logits.s = student.to(acc).contiguous();
  const at::Tensor t = teacher.to(acc).contiguous();
  logits.q = queue.to(acc).contiguous();
  logits.ns = squared_norms<acc_t>(logits.s);
  logits.iq = inv_norms<acc_t>(squared_norms<acc_t>(logits.q));
  const at::Tensor row_scale =
      at::cat({inv_norms<acc_t>(logits.ns).div_(tau_s), inv_norms<acc_t>(squared_norms<acc_t>(t)).div_(tau_t)});
  logits.st = at::mm(at::cat({logits.s, t}), logits.q.t());
  logits.st.mul_(logits.iq.unsqueeze(0)).mul_(row_scale.unsqueeze(1));
  logits.us = logits.st.narrow(0, 0, B);
  logits.ut = logits.st.narrow(0, B, B);
  return logits;
}

// d loss / d student for loss = scale * sum_i kl_i (scale = grad_loss / B), given the logits,
// log ps = us - lse_s and pt = softmax(ut) (both consumed: log_ps's buffer becomes the entry weights).
template <typename acc_t>
at::Tensor student_grad(const Logits& logits, at::Tensor log_ps, at::Tensor pt, double scale, double tau_s) {
  const int64_t B = logits.s.size(0), d = logits.s.size(1);
  // a_ij = scale * (ps_ij - pt_ij) / tau_s; acos_i = sum_j a_ij cos_s_ij = tau_s * sum_j a_ij us_ij
  at::Tensor a = log_ps.exp_().sub_(pt).mul_(scale / tau_s);
  pt.reset();
  const at::Tensor acos = at::sum(a.mul(logits.us), {1}).mul_(tau_s);
  const at::Tensor G = at::mm(a.mul_(logits.iq.unsqueeze(0)), logits.q);  // sum_j a_ij q_hat_j
  at::Tensor grad = at::empty({B, d}, logits.s.options());
  const acc_t *gq = G.data_ptr<acc_t>(), *sp = logits.s.data_ptr<acc_t>(), *ac = acos.data_ptr<acc_t>();
  const acc_t* ns = logits.ns.data_ptr<acc_t>();
  acc_t* out = grad.data_ptr<acc_t>();
  for (int64_t i = 0; i < B; ++i) {
    const acc_t is = cosine_math::inv_norm(ns[i]), proj = cosine_math::projection(ns[i]);
    for (int64_t c = 0; c < d; ++c)
      out[i * d + c] = cosine_math::grad_component(gq[i * d + c], ac[i], sp[i * d + c], is, proj);
  }
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> similarity_kl_cpu(const at::Tensor& student,
                                                                             const at::Tensor& teacher,
                                                                             const at::Tensor& queue, double tau_s,
                                                                             double tau_t, bool compute_grad) {
  const char* op = "similarity_kl";
  similarity_kl_checks::check_inputs(op, student, teacher, queue, tau_s, tau_t);
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0);
  at::Tensor grad = at::empty({0}, student.options());
  if (B == 0) {
    if (compute_grad) grad = at::zeros_like(student, at::MemoryFormat::Contiguous);
    return {at::zeros({}, student.options()), at::empty({0}, student.options().dtype(acc)),
            at::empty({0}, student.options().dtype(acc)), grad};
  }
  at::Tensor loss, lse_s, lse_t;
  AT_DISPATCH_FLOATING_TYPES(acc, "similarity_kl_cpu", [&] {
    using acc_t = scalar_t;
    Logits logits = compute_logits<acc_t>(student, teacher, queue, tau_s, tau_t);
    lse_s = at::logsumexp(logits.us, {1});
    lse_t = at::logsumexp(logits.ut, {1});
    at::Tensor log_pt = logits.ut.sub(lse_t.unsqueeze(1));
    at::Tensor pt = log_pt.exp();
    at::Tensor log_ps = logits.us.sub(lse_s.unsqueeze(1));
    // kl_i = sum_j pt_ij (log pt_ij - log ps_ij), from the shifted logits: the two ~1/tau_t terms of
    // sum_j pt_ij (ut_ij - us_ij) - lse_t_i + lse_s_i would cancel in float32
    loss = at::sum(log_pt.sub_(log_ps).mul_(pt), {1}).mean();
    log_pt.reset();
    if (compute_grad) {
      grad = student_grad<acc_t>(logits, std::move(log_ps), std::move(pt), 1.0 / static_cast<double>(B), tau_s)
                 .to(student.scalar_type());
    }
  });
  return {loss.to(student.scalar_type()), lse_s, lse_t, grad};
}

at::Tensor similarity_kl_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                      const at::Tensor& queue, const at::Tensor& lse_student,
                                      const at::Tensor& lse_teacher, double tau_s, double tau_t) {
  const char* op = "similarity_kl_backward";
  similarity_kl_checks::check_inputs(op, student, teacher, queue, tau_s, tau_t);
  const auto acc = acc_dtype(student.scalar_type());
  const int64_t B = student.size(0);
  if (B == 0) return at::zeros_like(student, at::MemoryFormat::Contiguous);
  const double g = grad_loss.to(at::kDouble).item<double>();  // CPU scalar: no device sync
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(acc, "similarity_kl_backward_cpu", [&] {
    using acc_t = scalar_t;
    Logits logits = compute_logits<acc_t>(student, teacher, queue, tau_s, tau_t);
    const at::Tensor lse_s = lse_student.to(acc).contiguous(), lse_t = lse_teacher.to(acc).contiguous();
    at::Tensor pt = logits.ut.sub(lse_t.unsqueeze(1)).exp_();
    grad =
        student_grad<acc_t>(logits, logits.us.sub(lse_s.unsqueeze(1)), std::move(pt), g / static_cast<double>(B), tau_s)
            .to(student.scalar_type());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("similarity_kl", &similarity_kl_cpu);
  m.impl("similarity_kl_backward", &similarity_kl_backward_cpu);
}

}  // namespace mona
