// The online (streaming) log-sum-exp shared by the kernels of contrast_infonce, similarity_kl and
// pixel_kl (CPU and CUDA): values x_1, x_2, ... arrive one at a time, and a running maximum m and
// a sum s = sum_i exp(x_i - m) give logsumexp = m + log(s) after a single pass, without overflow.
// When a new value exceeds m, every sum kept relative to the old maximum is rescaled by
// exp(m_old - m_new); sums weighted by the same softmax weights (sum_i exp(x_i - m) v_i) follow
// the same rescaling. Two partial states merge associatively (split queues, per-warp states).
//
// fold() is the step itself; Lse is the plain (m, s) state built on it, with its merge. The exp
// and log are a policy type: math::Precise by default; pixel_kl passes its kl_exp / kl_log
// (pixel_kl_math::KlMath), contrast_infonce its StepMath (its CPU kernel evaluates the exp of a
// float logit in double, see contrast_infonce_math.h).
//
// Who uses what, and why the arithmetic is not rewritten into one form: results are compared
// bitwise (between layouts, runs, the CUDA kernels and their CPU emulation), and on the device nvcc
// contracts a * b + c into an FMA, so "s = s * r + w" with r = 1 is not always the same bits as
// "s += w" once a second product is involved. Each user therefore keeps its own update arithmetic
// on top of fold():
//   * pixel_kl (CUDA): Lse::add_unless_masked per class (a masked class has logit -inf);
//   * similarity_kl (CUDA): Lse for the student logits; the teacher's state also carries the sum
//     weighted by (ut - us), updated by add_weighted / merge_weighted in lockstep;
//   * contrast_infonce (CPU and CUDA): step(), fold() in the form (rescale, weight), applied to the
//     sum, the weighted cosine sum and the D-vector of the gradient alike. Its CPU kernel merges
//     its per-thread states in one multi-way step (the maximum of all states first, then each
//     state rescaled once) rather than pairwise with Lse::merge: fewer roundings, and the results
//     of that kernel stay as they were.
// Not online: pixel_kl's CPU kernel takes the maximum over the classes first and then sums (two
// passes over a tile kept in L1, vectorised across pixels); similarity_kl's CPU kernel uses ATen's
// logsumexp over the [B, K] logits.
#pragma once

#include <cmath>

#include "common/host_device.h"
#include "common/math.h"

namespace mona {
namespace online_lse {

// Folds x into the running maximum m. Returns true when x is a new maximum: m becomes x and e is
// exp(m_old - x), the factor that rescales every sum kept so far (x itself then weighs 1).
// Otherwise returns false with e = exp(x - m), the weight of x. A NaN x is never a new maximum:
// its weight is NaN, which reaches the sums (NaN inputs propagate to the result).
template <typename Math = math::Precise, typename acc_t>
MONA_HD bool fold(acc_t& m, acc_t x, acc_t& e) {
  if (x > m) {
    e = Math::exp(m - x);
    m = x;
    return true;
  }
  e = Math::exp(x - m);
  return false;
}

// fold() as the factor `rescale` for the sums kept so far and the weight `w` of x:
// then s = s * rescale + w (and likewise every sum weighted by the softmax weights).
template <typename Math = math::Precise, typename acc_t>
MONA_HD void step(acc_t& m, acc_t x, acc_t& rescale, acc_t& w) {
  acc_t e;
  if (fold<Math>(m, x, e)) {
    rescale = e;
    w = acc_t(1);
  } else {
    rescale = acc_t(1);
    w = e;
  }
}

// m + log(s) over the values seen so far. empty(): no value yet (s == 0 exactly).
template <typename acc_t, typename Math = math::Precise>
struct Lse {
  acc_t m, s;

  MONA_HD static Lse empty() { return {-static_cast<acc_t>(INFINITY), acc_t(0)}; }

  MONA_HD void add(acc_t x) {
    acc_t e;
    if (fold<Math>(m, x, e)) {
      s = s * e + acc_t(1);
    } else {
      s += e;
    }
  }

  // add() for values where -inf marks an entry that takes no part (a masked class): it is skipped,
  // where add() would give exp(-inf - (-inf)) = NaN while no finite value has been seen.
  MONA_HD void add_unless_masked(acc_t x) {
    acc_t e;
    if (fold<Math>(m, x, e)) {
      s = s * e + acc_t(1);
    } else if (!(x == -static_cast<acc_t>(INFINITY))) {
      s += e;
    }
  }

  // add(x), and `weighted` (a sum weighted like s: sum_i exp(x_i - m) v_i) gains v.
  MONA_HD void add_weighted(acc_t x, acc_t& weighted, acc_t v) {
    acc_t e;
    if (fold<Math>(m, x, e)) {
      s = s * e + acc_t(1);
      weighted = weighted * e + v;
    } else {
      s += e;
      weighted += e * v;
    }
  }

  // Merges another state in. An empty state (s == 0 exactly) is skipped; any other state, a NaN
  // one included, is combined, so that a NaN in the inputs reaches the result.
  MONA_HD void merge(const Lse& other) {
    acc_t unused = acc_t(0);
    merge_weighted(other, unused, acc_t(0));
  }

  // merge(), and `weighted` (of this state) and `other_weighted` (of other) combine in lockstep.
  MONA_HD void merge_weighted(const Lse& other, acc_t& weighted, acc_t other_weighted) {
    if (other.s == acc_t(0)) return;
    if (s == acc_t(0)) {
      m = other.m;
      s = other.s;
      weighted = other_weighted;
      return;
    }
    const acc_t mx = m > other.m ? m : other.m;
    const acc_t fa = Math::exp(m - mx), fb = Math::exp(other.m - mx);
    s = s * fa + other.s * fb;
    weighted = weighted * fa + other_weighted * fb;
    m = mx;
  }

  MONA_HD acc_t value() const { return m + Math::log(s); }
};

}  // namespace online_lse
}  // namespace mona
