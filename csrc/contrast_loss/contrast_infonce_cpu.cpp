// mona::contrast_infonce (+ backward) — CPU kernels.
//
// Strategy: at::parallel_for over the C*Q queries. A query's D-vector is copied once into a
// thread-local fp32/fp64 buffer; each of its M+1 keys is then read once, in place, from the key
// map (a contiguous 4*D-byte row on the channels-last fast path, strided otherwise) or the bank,
// with the dot product and the key's squared norm accumulated together (8-way unrolled so the
// compiler vectorises it) and folded into an online logsumexp. Nothing of size Q x M x D exists.
// Backward recomputes the logits from the saved logsumexp, accumulates the query gradient in a
// thread-local D-vector, writes it per query, then adds the C*Q rows into the dense gradient
// serially (several queries may share a pixel).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/tensor_utils.h"
#include "contrast_loss/contrast_infonce_host.h"
#include "contrast_loss/contrast_infonce_math.h"

namespace mona {
namespace {

namespace cm = contrast_math;

// dot(row, x) and |row|^2 in one pass.
template <typename row_t, typename acc_t>
inline void dot_and_square(const row_t* row, int64_t stride, const acc_t* x, int64_t D, acc_t& dot, acc_t& sq) {
  constexpr int U = 8;
  acc_t a[U] = {}, b[U] = {};
  int64_t d = 0;
  if (stride == 1) {
    for (; d + U <= D; d += U) {
      for (int u = 0; u < U; ++u) {
        const acc_t v = static_cast<acc_t>(row[d + u]);
        a[u] += v * x[d + u];
        b[u] += v * v;
      }
    }
  }
  for (; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(row[d * stride]);
    a[0] += v * x[d];
    b[0] += v * v;
  }
  dot = 0;
  sq = 0;
  for (int u = 0; u < U; ++u) {
    dot += a[u];
    sq += b[u];
  }
}

template <typename row_t, typename acc_t>
inline void axpy(acc_t alpha, const row_t* row, int64_t stride, acc_t* y, int64_t D) {
  if (stride == 1) {
    for (int64_t d = 0; d < D; ++d) y[d] += alpha * static_cast<acc_t>(row[d]);
  } else {
    for (int64_t d = 0; d < D; ++d) y[d] += alpha * static_cast<acc_t>(row[d * stride]);
  }
}

template <typename scalar_t>
infonce::KeySource<scalar_t> key_source(const InfonceArgs& a) {
  const auto v = make_pixel_view<const scalar_t>(a.key_features);
  return {v.data, v.B, v.P, v.stride_b, v.stride_d, v.stride_p,
          a.bank.defined() ? a.bank.data_ptr<scalar_t>() : nullptr, a.N, a.D};
}

// Loads the query's D-vector (features at flat pixel n) into x; returns |x| (eps-clamped).
template <typename scalar_t, typename acc_t>
inline acc_t load_query(const PixelView<const scalar_t>& f, int64_t n, acc_t* x) {
  const int64_t b = n / f.P;
  const scalar_t* base = f.data + b * f.stride_b + (n - b * f.P) * f.stride_p;
  acc_t sq = 0;
  for (int64_t d = 0; d < f.D; ++d) {
    x[d] = static_cast<acc_t>(base[d * f.stride_d]);
    sq += x[d] * x[d];
  }
  return cm::safe_norm(sq);
}

template <typename scalar_t>
void infonce_forward_kernel(const InfonceArgs& a, at::opmath_type<scalar_t>* lse, at::opmath_type<scalar_t>* row_loss) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto f = make_pixel_view<const scalar_t>(a.features);
  const auto keys = key_source<scalar_t>(a);
  const acc_t* protos = a.prototypes.data_ptr<acc_t>();
  const acc_t* weight = a.class_weight.data_ptr<acc_t>();
  const int64_t* qidx = a.query_index.data_ptr<int64_t>();
  const int64_t* nidx = a.negative_index.data_ptr<int64_t>();
  const int64_t D = a.D, M = a.M, Q = a.Q;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(a.temperature);
  at::parallel_for(0, a.C * Q, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(D);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / Q;
      if (!(weight[c] > acc_t(0))) {
        lse[r] = row_loss[r] = acc_t(0);
        continue;
      }
      const acc_t xn = load_query(f, qidx[r], x.data());
      acc_t dot, sq;
      dot_and_square(protos + c * D, 1, x.data(), D, dot, sq);
      const acc_t l0 = dot / (xn * cm::safe_norm(sq)) * inv_t;
      acc_t m = l0, s = 1;
      for (int64_t j = 0; j < M; ++j) {
        int64_t stride;
        const scalar_t* row = keys.row(nidx[r * M + j], stride);
        dot_and_square(row, stride, x.data(), D, dot, sq);
        cm::lse_update(m, s, dot / (xn * cm::safe_norm(sq)) * inv_t);
      }
      lse[r] = m + std::log(s);
      row_loss[r] = lse[r] - l0;
    }
  });
}

template <typename scalar_t>
void infonce_backward_kernel(const InfonceArgs& a, double grad_loss, const at::opmath_type<scalar_t>* lse,
                             at::Tensor& grad_features) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto f = make_pixel_view<const scalar_t>(a.features);
  const auto keys = key_source<scalar_t>(a);
  const acc_t* protos = a.prototypes.data_ptr<acc_t>();
  const acc_t* weight = a.class_weight.data_ptr<acc_t>();
  const int64_t* qidx = a.query_index.data_ptr<int64_t>();
  const int64_t* nidx = a.negative_index.data_ptr<int64_t>();
  const int64_t D = a.D, M = a.M, Q = a.Q;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(a.temperature);
  std::vector<acc_t> grad_rows(static_cast<size_t>(a.C * Q) * D, acc_t(0));
  at::parallel_for(0, a.C * Q, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(D), acc(D);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / Q;
      if (!(weight[c] > acc_t(0))) continue;
      const acc_t xn = load_query(f, qidx[r], x.data());
      std::fill(acc.begin(), acc.end(), acc_t(0));
      acc_t weighted_cos = 0, dot, sq;
      // positive key (the class prototype)
      dot_and_square(protos + c * D, 1, x.data(), D, dot, sq);
      acc_t kn = cm::safe_norm(sq), cosine = dot / (xn * kn);
      acc_t g = infonce::logit_grad(cosine * inv_t, lse[r], true);
      axpy(g / kn, protos + c * D, 1, acc.data(), D);
      weighted_cos += g * cosine;
      for (int64_t j = 0; j < M; ++j) {
        int64_t stride;
        const scalar_t* row = keys.row(nidx[r * M + j], stride);
        dot_and_square(row, stride, x.data(), D, dot, sq);
        kn = cm::safe_norm(sq);
        cosine = dot / (xn * kn);
        g = infonce::logit_grad(cosine * inv_t, lse[r], false);
        axpy(g / kn, row, stride, acc.data(), D);
        weighted_cos += g * cosine;
      }
      // d cos(x, k) / dx = (k/|k| - cos * x/|x|) / |x|
      const acc_t coef = static_cast<acc_t>(grad_loss) * weight[c] / static_cast<acc_t>(Q) * inv_t / xn;
      acc_t* out = grad_rows.data() + r * D;
      for (int64_t d = 0; d < D; ++d) out[d] = coef * (acc[d] - weighted_cos * x[d] / xn);
    }
  });
  const auto gv = make_pixel_view<scalar_t>(grad_features);
  for (int64_t r = 0; r < a.C * Q; ++r) {
    if (!(weight[r / Q] > acc_t(0))) continue;
    const int64_t n = qidx[r], b = n / gv.P;
    scalar_t* base = gv.data + b * gv.stride_b + (n - b * gv.P) * gv.stride_p;
    const acc_t* src = grad_rows.data() + r * D;
    for (int64_t d = 0; d < D; ++d) {
      scalar_t& dst = base[d * gv.stride_d];
      dst = static_cast<scalar_t>(static_cast<acc_t>(dst) + src[d]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> contrast_infonce_cpu(const at::Tensor& features, const at::Tensor& key_features,
                                                        const std::optional<at::Tensor>& bank,
                                                        const at::Tensor& prototypes, const at::Tensor& query_index,
                                                        const at::Tensor& negative_index,
                                                        const at::Tensor& class_weight, double temperature) {
  InfonceArgs a = prepare_infonce("contrast_infonce", features, key_features, bank, prototypes, query_index,
                                  negative_index, class_weight, temperature);
  const auto acc = a.prototypes.scalar_type();
  at::Tensor lse = at::empty({a.C, a.Q}, features.options().dtype(acc));
  at::Tensor row_loss = at::empty({a.C, a.Q}, features.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_cpu", [&] {
    infonce_forward_kernel<scalar_t>(a, lse.data_ptr<at::opmath_type<scalar_t>>(),
                                     row_loss.data_ptr<at::opmath_type<scalar_t>>());
  });
  return {reduce_infonce_loss(row_loss, a.class_weight, a.Q), lse};
}

at::Tensor contrast_infonce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features,
                                         const at::Tensor& key_features, const std::optional<at::Tensor>& bank,
                                         const at::Tensor& prototypes, const at::Tensor& query_index,
                                         const at::Tensor& negative_index, const at::Tensor& class_weight,
                                         const at::Tensor& lse, double temperature) {
  InfonceArgs a = prepare_infonce("contrast_infonce_backward", features, key_features, bank, prototypes, query_index,
                                  negative_index, class_weight, temperature);
  at::Tensor grad = at::zeros_like(a.features);
  const at::Tensor lse_c = lse.to(a.prototypes.scalar_type()).contiguous();
  const double g = grad_loss.item<double>();  // a CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_backward_cpu", [&] {
    infonce_backward_kernel<scalar_t>(a, g, lse_c.data_ptr<at::opmath_type<scalar_t>>(), grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("contrast_infonce", &contrast_infonce_cpu);
  m.impl("contrast_infonce_backward", &contrast_infonce_backward_cpu);
}

}  // namespace mona
