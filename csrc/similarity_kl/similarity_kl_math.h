// Per-entry math of similarity_kl, shared by the CPU and CUDA kernels: an online (streaming)
// softmax over the queue that also accumulates the KL numerator, so one pass over the queue
// gives the KL and both logsumexps.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace mona {
namespace similarity_kl_math {

template <typename acc_t>
MONA_HD acc_t ex(acc_t x) {
#if MONA_DEVICE_CODE
  return exp(x);
#else
  return std::exp(x);
#endif
}
template <typename acc_t>
MONA_HD acc_t ln(acc_t x) {
#if MONA_DEVICE_CODE
  return log(x);
#else
  return std::log(x);
#endif
}

// Running state over entries seen so far, with us_j = student logit, ut_j = teacher logit:
//   z_s = sum exp(us_j - m_s), z_t = sum exp(ut_j - m_t), w_t = sum exp(ut_j - m_t) (ut_j - us_j).
template <typename acc_t>
struct OnlineKL {
  acc_t m_s, z_s, m_t, z_t, w_t;

  MONA_HD static OnlineKL empty() { return {-INFINITY, acc_t(0), -INFINITY, acc_t(0), acc_t(0)}; }

  MONA_HD void update(acc_t us, acc_t ut) {
    if (us > m_s) {
      z_s = z_s * ex(m_s - us) + acc_t(1);
      m_s = us;
    } else {
      z_s += ex(us - m_s);
    }
    if (ut > m_t) {
      const acc_t f = ex(m_t - ut);
      z_t = z_t * f + acc_t(1);
      w_t = w_t * f + (ut - us);
      m_t = ut;
    } else {
      const acc_t e = ex(ut - m_t);
      z_t += e;
      w_t += e * (ut - us);
    }
  }

  // An empty state (no entry seen) has z == 0 exactly and is skipped; any other state, a NaN one
  // included, is combined, so that a NaN in the inputs reaches the loss on every device.
  MONA_HD void merge(const OnlineKL& o) {
    if (!(o.z_s == acc_t(0))) {
      if (z_s == acc_t(0)) {
        m_s = o.m_s;
        z_s = o.z_s;
      } else {
        const acc_t m = m_s > o.m_s ? m_s : o.m_s;
        z_s = z_s * ex(m_s - m) + o.z_s * ex(o.m_s - m);
        m_s = m;
      }
    }
    if (!(o.z_t == acc_t(0))) {
      if (z_t == acc_t(0)) {
        m_t = o.m_t;
        z_t = o.z_t;
        w_t = o.w_t;
      } else {
        const acc_t m = m_t > o.m_t ? m_t : o.m_t;
        const acc_t fa = ex(m_t - m), fb = ex(o.m_t - m);
        z_t = z_t * fa + o.z_t * fb;
        w_t = w_t * fa + o.w_t * fb;
        m_t = m;
      }
    }
  }

  MONA_HD acc_t lse_s() const { return m_s + ln(z_s); }
  MONA_HD acc_t lse_t() const { return m_t + ln(z_t); }
  // KL(pt || ps) = sum pt (ut - us) - lse_t + lse_s.
  MONA_HD acc_t kl() const { return w_t / z_t - lse_t() + lse_s(); }
};

// Weight of entry j in the student gradient: d kl / d us_j / tau_s-chain = (ps_j - pt_j) / tau_s,
// times the upstream scale (grad_loss / B).
template <typename acc_t>
MONA_HD acc_t entry_weight(acc_t us, acc_t ut, acc_t lse_s, acc_t lse_t, acc_t inv_tau_s, acc_t scale) {
  return scale * (ex(us - lse_s) - ex(ut - lse_t)) * inv_tau_s;
}

}  // namespace similarity_kl_math
}  // namespace mona
