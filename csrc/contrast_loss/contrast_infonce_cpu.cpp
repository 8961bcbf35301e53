// mona::contrast_infonce (+ backward) — CPU kernels.
//
// Strategy: at::parallel_for over the C*Q queries. A query's D-vector is copied once into a
// thread-local fp32/fp64 buffer; each of its M+1 keys is then read exactly once, in place, from the
// key map (a contiguous row on the channels-last fast path, strided otherwise) or the bank: one
// pass computes dot product and squared norm (AVX2/FMA-multiversioned for float32 rows, next rows
// prefetched), the logit is folded into an online logsumexp and, when the gradient is wanted,
// the key (still in L1) into an online-softmax-weighted sum, which yields d loss / d query without
// a second read of the keys. Nothing of size Q x M x D exists.
// Backward: grad_loss * grad_rows [C*Q, D] added serially into the dense gradient (several
// queries may share a pixel).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/simd_cpu.h"
#include "common/tensor_utils.h"
#include "contrast_loss/contrast_infonce_host.h"
#include "contrast_loss/contrast_infonce_math.h"

namespace mona {
namespace {

namespace cm = contrast_math;

// dot(row, x) and |row|^2 in one pass.
template <typename row_t, typename acc_t>
inline void dot_and_square(const row_t* row, int64_t stride, const acc_t* x, int64_t D, acc_t& dot, acc_t& sq) {
  if constexpr (std::is_same_v<row_t, float> && std::is_same_v<acc_t, float>) {
    if (stride == 1) {
      dot = simd::dot_and_square_f32(row, x, D, &sq);
      return;
    }
  }
  acc_t a = 0, b = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(row[d * stride]);
    a += v * x[d];
    b += v * v;
  }
  dot = a;
  sq = b;
}

template <typename row_t, typename acc_t>
inline void axpy(acc_t alpha, const row_t* row, int64_t stride, acc_t* y, int64_t D) {
  if constexpr (std::is_same_v<row_t, float> && std::is_same_v<acc_t, float>) {
    if (stride == 1) return simd::axpy_f32(alpha, row, y, D);
  }
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * static_cast<acc_t>(row[d * stride]);
}

constexpr int64_t kPrefetchDistance = 4;  // keys ahead

// Prefetch negative j of row r (channels-contiguous rows only; strided rows span many lines).
template <typename scalar_t>
inline void prefetch_key(const infonce::KeySource<scalar_t>& keys, const int64_t* nidx, int64_t M, int64_t j) {
  if (j >= M) return;
  int64_t stride;
  const scalar_t* row = keys.row(nidx[j], stride);
  if (stride == 1) simd::prefetch_row(row, keys.D * static_cast<int64_t>(sizeof(scalar_t)));
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
void infonce_forward_kernel(const InfonceArgs& a, at::opmath_type<scalar_t>* row_loss,
                            at::opmath_type<scalar_t>* grad_rows) {
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
    std::vector<acc_t> x(D), acc(grad_rows ? D : 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / Q;
      acc_t* out = grad_rows ? grad_rows + r * D : nullptr;
      if (!(weight[c] > acc_t(0))) {
        row_loss[r] = acc_t(0);
        if (out) std::fill(out, out + D, acc_t(0));
        continue;
      }
      const acc_t xn = load_query(f, qidx[r], x.data());
      const acc_t* proto = protos + c * D;
      acc_t dot, sq;
      dot_and_square(proto, 1, x.data(), D, dot, sq);
      const acc_t inv0 = acc_t(1) / cm::safe_norm(sq);
      const acc_t cos0 = dot * inv0 / xn, l0 = cos0 * inv_t;
      acc_t m = l0, s = 1, wcos = cos0;  // running sums weighted by exp(l_j - m)
      if (out) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        axpy(inv0, proto, 1, acc.data(), D);
      }
      const int64_t* nr = nidx + r * M;
      for (int64_t j = 0; j < kPrefetchDistance; ++j) prefetch_key(keys, nr, M, j);
      for (int64_t j = 0; j < M; ++j) {
        prefetch_key(keys, nr, M, j + kPrefetchDistance);
        int64_t stride;
        const scalar_t* row = keys.row(nr[j], stride);
        dot_and_square(row, stride, x.data(), D, dot, sq);
        const acc_t inv_kn = acc_t(1) / cm::safe_norm(sq);
        const acc_t cosine = dot * inv_kn / xn;
        acc_t rescale, w;
        infonce::online_step(m, cosine * inv_t, rescale, w);
        s = s * rescale + w;
        wcos = wcos * rescale + w * cosine;
        if (out) {
          if (rescale != acc_t(1)) {
            for (int64_t d = 0; d < D; ++d) acc[d] *= rescale;
          }
          axpy(w * inv_kn, row, stride, acc.data(), D);
        }
      }
      row_loss[r] = m + std::log(s) - l0;
      if (out) {
        const acc_t scale = weight[c] / static_cast<acc_t>(Q) * inv_t / xn;
        for (int64_t d = 0; d < D; ++d) {
          out[d] = infonce::query_grad(scale, acc[d], s, proto[d] * inv0, wcos, cos0, x[d], xn);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> contrast_infonce_cpu(const at::Tensor& features, const at::Tensor& key_features,
                                                        const std::optional<at::Tensor>& bank,
                                                        const at::Tensor& prototypes, const at::Tensor& query_index,
                                                        const at::Tensor& negative_index,
                                                        const at::Tensor& class_weight, double temperature,
                                                        bool compute_grad) {
  InfonceArgs a = prepare_infonce("contrast_infonce", features, key_features, bank, prototypes, query_index,
                                  negative_index, class_weight, temperature);
  const auto opts = features.options().dtype(a.prototypes.scalar_type());
  at::Tensor row_loss = at::empty({a.C, a.Q}, opts);
  at::Tensor grad_rows = compute_grad ? at::empty({a.C, a.Q, a.D}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    infonce_forward_kernel<scalar_t>(a, row_loss.data_ptr<acc_t>(),
                                     compute_grad ? grad_rows.data_ptr<acc_t>() : nullptr);
  });
  return {reduce_infonce_loss(row_loss, a.class_weight, a.Q), grad_rows};
}

at::Tensor contrast_infonce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features,
                                         const at::Tensor& query_index, const at::Tensor& class_weight,
                                         const at::Tensor& grad_rows) {
  check_backward_args("contrast_infonce_backward", features, query_index, class_weight, grad_rows);
  const at::Tensor f = view_features(features);
  at::Tensor grad = at::zeros_like(f);
  const int64_t C = query_index.size(0), Q = query_index.size(1), D = f.size(1);
  const at::Tensor qidx = query_index.contiguous();
  const double g = grad_loss.item<double>();  // a CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor rows = grad_rows.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const at::Tensor w = class_weight.to(rows.scalar_type()).contiguous();
    const acc_t* src_all = rows.data_ptr<acc_t>();
    const acc_t* wp = w.data_ptr<acc_t>();
    const int64_t* qp = qidx.data_ptr<int64_t>();
    const auto gv = make_pixel_view<scalar_t>(grad);
    for (int64_t r = 0; r < C * Q; ++r) {
      if (!(wp[r / Q] > acc_t(0))) continue;
      const int64_t n = qp[r], b = n / gv.P;
      scalar_t* base = gv.data + b * gv.stride_b + (n - b * gv.P) * gv.stride_p;
      const acc_t* src = src_all + r * D;
      for (int64_t d = 0; d < D; ++d) {
        scalar_t& dst = base[d * gv.stride_d];
        dst = static_cast<scalar_t>(static_cast<acc_t>(dst) + static_cast<acc_t>(g) * src[d]);
      }
    }
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("contrast_infonce", &contrast_infonce_cpu);
  m.impl("contrast_infonce_backward", &contrast_infonce_backward_cpu);
}

}  // namespace mona
