// Per-entry math of similarity_kl, shared by the CPU and CUDA kernels: an online (streaming)
// softmax over the queue that also accumulates the KL numerator, so one pass over the queue
// gives the KL and both logsumexps.
#pragma once

#include "common/host_device.h"
#include "common/math.h"
#include "common/online_lse.h"

namespace mona {
namespace similarity_kl_math {

// Running state over the entries seen so far, with us_j = student logit, ut_j = teacher logit
// (common/online_lse.h):
//   student: m_s, z_s = sum exp(us_j - m_s);   teacher: m_t, z_t = sum exp(ut_j - m_t);
//   w_t = sum exp(ut_j - m_t) (ut_j - us_j), the KL numerator, rescaled with the teacher's state.
// Five packed acc_t (m_s, z_s, m_t, z_t, w_t): the CUDA kernel keeps the states in a [B, S, 5] tensor.
template <typename acc_t>
struct OnlineKL {
  online_lse::Lse<acc_t> student, teacher;
  acc_t w_t;

  MONA_HD static OnlineKL empty() {
    return {online_lse::Lse<acc_t>::empty(), online_lse::Lse<acc_t>::empty(), acc_t(0)};
  }

  MONA_HD void update(acc_t us, acc_t ut) {
    student.add(us);
    teacher.add_weighted(ut, w_t, ut - us);
  }

  // An empty state (no entry seen) is skipped; any other state, a NaN one included, is combined, so
  // that a NaN in the inputs reaches the loss on every device.
  MONA_HD void merge(const OnlineKL& other) {
    student.merge(other.student);
    teacher.merge_weighted(other.teacher, w_t, other.w_t);
  }

  MONA_HD acc_t lse_s() const { return student.value(); }
  MONA_HD acc_t lse_t() const { return teacher.value(); }
  // KL(pt || ps) = sum pt (ut - us) - lse_t + lse_s.
  MONA_HD acc_t kl() const { return w_t / teacher.s - lse_t() + lse_s(); }
};

// Weight of entry j in the student gradient: d kl / d us_j / tau_s-chain = (ps_j - pt_j) / tau_s,
// times the upstream scale (grad_loss / B).
template <typename acc_t>
MONA_HD acc_t entry_weight(acc_t us, acc_t ut, acc_t lse_s, acc_t lse_t, acc_t inv_tau_s, acc_t scale) {
  return scale * (math::exp(us - lse_s) - math::exp(ut - lse_t)) * inv_tau_s;
}

}  // namespace similarity_kl_math
}  // namespace mona
