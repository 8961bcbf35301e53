// mona::pixel_kl — CPU kernels.
//
// Parallel strategy: pixels are cut into tiles of kTile pixels inside one image (a tile never
// straddles two images); at::parallel_for hands tiles to threads. A tile's C x kTile logits of
// each input are loaded channel-outer / pixel-inner (contiguous rows for NCHW) into a small
// per-thread buffer, and every later step is a loop over the tile's pixels for one class at a
// time, which the compiler vectorises (the float exp is the branch-free kl_exp of
// pixel_kl_math.h). Forward: per-thread partial sums (fp64) of w * kl and of w, reduced at the
// end — deterministic for a fixed thread count. Backward: recomputes the tile's log-softmaxes
// (nothing per pixel was saved) and writes each gradient element exactly once.
// The per-pixel loops only vectorise (if-converted selects in kl_exp / kl_log / kl_term) without
// -ftrapping-math; floating-point exception flags are never read by this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/tensor_utils.h"
#include "pixel_kl/pixel_kl_checks.h"
#include "pixel_kl/pixel_kl_math.h"

namespace mona {
namespace {

namespace km = pixel_kl_math;
constexpr int64_t kTile = 128;


// Per-thread scratch for one tile: log-probabilities and probabilities of both inputs + per-pixel terms.
template <typename acc_t>
struct TileBuffers {
  std::vector<acc_t> la, lb, pa, pb;
  acc_t kab[kTile], kba[kTile], tmp[kTile], tmp2[kTile];
  explicit TileBuffers(int64_t C) : la(C * kTile), lb(C * kTile), pa(C * kTile), pb(C * kTile) {}
};

// Loads a tile's logits and turns them into log-probabilities (l) and probabilities (p).
template <typename scalar_t, typename acc_t>
inline void tile_log_softmax(const PixelView<const scalar_t>& v, int64_t b, int64_t p0, int64_t n, acc_t* l, acc_t* p,
                             acc_t* mx, acc_t* sum) {
  const int64_t C = v.D;
  const scalar_t* base = v.data + b * v.stride_b + p0 * v.stride_p;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* row = base + c * v.stride_d;
    acc_t* out = l + c * kTile;
    if (v.stride_p == 1) {
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<acc_t>(row[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<acc_t>(row[i * v.stride_p]);
    }
  }
  for (int64_t i = 0; i < n; ++i) mx[i] = l[i];
  for (int64_t c = 1; c < C; ++c) {
    const acc_t* z = l + c * kTile;
    for (int64_t i = 0; i < n; ++i) mx[i] = z[i] > mx[i] ? z[i] : mx[i];
  }
  for (int64_t i = 0; i < n; ++i) sum[i] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* z = l + c * kTile;
    acc_t* e = p + c * kTile;
    for (int64_t i = 0; i < n; ++i) {
      e[i] = km::kl_exp(z[i] - mx[i]);
      sum[i] += e[i];
    }
  }
  // lse = max + log(sum); reuse mx for lse and sum for 1 / sum.
  for (int64_t i = 0; i < n; ++i) {
    mx[i] += km::kl_log(sum[i]);
    sum[i] = acc_t(1) / sum[i];
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* z = l + c * kTile;
    acc_t* e = p + c * kTile;
    for (int64_t i = 0; i < n; ++i) {
      z[i] -= mx[i];
      e[i] *= sum[i];
    }
  }
}

template <typename acc_t>
inline void tile_kl(int64_t C, int64_t n, TileBuffers<acc_t>& t, bool symmetric) {
  for (int64_t i = 0; i < n; ++i) t.kab[i] = t.kba[i] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t *la = t.la.data() + c * kTile, *lb = t.lb.data() + c * kTile;
    const acc_t *pa = t.pa.data() + c * kTile, *pb = t.pb.data() + c * kTile;
    for (int64_t i = 0; i < n; ++i) t.kab[i] += km::kl_term(pa[i], la[i], lb[i]);
    if (symmetric) {
      for (int64_t i = 0; i < n; ++i) t.kba[i] += km::kl_term(pb[i], lb[i], la[i]);
    }
  }
}

struct Tiling {
  int64_t per_image, total;
  Tiling(int64_t B, int64_t P) : per_image((P + kTile - 1) / kTile), total(B * ((P + kTile - 1) / kTile)) {}
};

struct TileRef {
  int64_t img, p0, n;
};

// Log-softmaxes of both logit maps and the per-pixel KL terms of tile k (shared by forward and backward).
template <typename scalar_t, typename acc_t>
TileRef load_tile(const PixelView<const scalar_t>& a, const PixelView<const scalar_t>& b, const Tiling& tiling,
                  int64_t k, bool symmetric, TileBuffers<acc_t>& t) {
  const int64_t img = k / tiling.per_image, p0 = (k - img * tiling.per_image) * kTile;
  const int64_t n = std::min(kTile, a.P - p0);
  tile_log_softmax<scalar_t, acc_t>(a, img, p0, n, t.la.data(), t.pa.data(), t.tmp, t.tmp2);
  tile_log_softmax<scalar_t, acc_t>(b, img, p0, n, t.lb.data(), t.pb.data(), t.tmp, t.tmp2);
  tile_kl(a.D, n, t, symmetric);
  return {img, p0, n};
}

template <typename scalar_t>
void forward_kernel(const PixelView<const scalar_t>& a, const PixelView<const scalar_t>& b,
                    const at::opmath_type<scalar_t>* w, bool symmetric, double* loss_sum, double* weight_sum) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.D, P = a.P;
  const Tiling tiling(a.B, P);
  const int nthreads = at::get_num_threads();
  std::vector<double> part(2 * static_cast<size_t>(nthreads), 0.0);
  at::parallel_for(0, tiling.total, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> t(C);
    double ls = 0, ws = 0;
    for (int64_t k = begin; k < end; ++k) {
      const auto [img, p0, n] = load_tile(a, b, tiling, k, symmetric, t);
      const acc_t* wt = w ? w + img * P + p0 : nullptr;
      acc_t tl = 0, tw = 0;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t wi = wt ? wt[i] : acc_t(1);
        tl += wi * (t.kab[i] + t.kba[i]);
        tw += wi;
      }
      ls += tl;
      ws += tw;
    }
    part[2 * at::get_thread_num()] += ls;
    part[2 * at::get_thread_num() + 1] += ws;
  });
  for (int th = 0; th < nthreads; ++th) {
    *loss_sum += part[2 * th];
    *weight_sum += part[2 * th + 1];
  }
}

template <typename scalar_t>
void backward_kernel(const PixelView<const scalar_t>& a, const PixelView<const scalar_t>& b,
                     const at::opmath_type<scalar_t>* w, bool symmetric, at::opmath_type<scalar_t> scale,
                     const PixelView<scalar_t>* ga, const PixelView<scalar_t>* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.D, P = a.P;
  const Tiling tiling(a.B, P);
  // The kba term is needed by grad_b only when symmetric; kab always (grad_a) — tile_kl computes both.
  at::parallel_for(0, tiling.total, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> t(C);
    acc_t s[kTile];
    for (int64_t k = begin; k < end; ++k) {
      const auto [img, p0, n] = load_tile(a, b, tiling, k, symmetric, t);
      const acc_t* wt = w ? w + img * P + p0 : nullptr;
      for (int64_t i = 0; i < n; ++i) s[i] = scale * (wt ? wt[i] : acc_t(1));
      for (int64_t c = 0; c < C; ++c) {
        const acc_t *la = t.la.data() + c * kTile, *lb = t.lb.data() + c * kTile;
        const acc_t *pa = t.pa.data() + c * kTile, *pb = t.pb.data() + c * kTile;
        if (ga) {
          acc_t* out = t.tmp;
          for (int64_t i = 0; i < n; ++i) out[i] = km::grad_a(pa[i], pb[i], la[i], lb[i], t.kab[i], symmetric, s[i]);
          scalar_t* row = ga->data + img * ga->stride_b + c * ga->stride_d + p0 * ga->stride_p;
          for (int64_t i = 0; i < n; ++i) row[i * ga->stride_p] = static_cast<scalar_t>(out[i]);
        }
        if (gb) {
          acc_t* out = t.tmp2;
          for (int64_t i = 0; i < n; ++i) out[i] = km::grad_b(pa[i], pb[i], la[i], lb[i], t.kba[i], symmetric, s[i]);
          scalar_t* row = gb->data + img * gb->stride_b + c * gb->stride_d + p0 * gb->stride_p;
          for (int64_t i = 0; i < n; ++i) row[i * gb->stride_p] = static_cast<scalar_t>(out[i]);
        }
      }
    }
  });
}

at::Tensor mask_as_weight(const std::optional<at::Tensor>& mask, at::ScalarType acc) {
  return mask.has_value() ? mask->to(acc).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> pixel_kl_cpu(const at::Tensor& logits_a, const at::Tensor& logits_b,
                                                const std::optional<at::Tensor>& mask, bool symmetric) {
  pixel_kl_checks::check_inputs("pixel_kl", logits_a, logits_b, mask);
  TORCH_CHECK_VALUE(logits_a.device().is_cpu(), "pixel_kl (CPU kernel): logits must be on the CPU");
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  const at::Tensor w = mask_as_weight(mask, acc);
  double loss_sum = 0, weight_sum = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
    if (va.num_pixels() > 0) {
      forward_kernel<scalar_t>(va, vb, w.defined() ? w.data_ptr<acc_t>() : nullptr, symmetric, &loss_sum, &weight_sum);
    }
  });
  at::Tensor loss = at::empty({}, a.options().dtype(acc));
  loss.fill_(km::safe_ratio(loss_sum, weight_sum));
  at::Tensor wsum = at::empty({}, a.options().dtype(acc));
  wsum.fill_(weight_sum);
  return {loss.to(a.scalar_type()), wsum};
}

std::tuple<at::Tensor, at::Tensor> pixel_kl_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_a,
                                                         const at::Tensor& logits_b, const std::optional<at::Tensor>& mask,
                                                         const at::Tensor& weight_sum, bool symmetric, bool need_a,
                                                         bool need_b) {
  pixel_kl_checks::check_inputs("pixel_kl_backward", logits_a, logits_b, mask);
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  const at::Tensor w = mask_as_weight(mask, acc);
  const double den = weight_sum.to(at::kDouble).item<double>();  // a CPU scalar: no device sync
  const double g = grad_loss.to(at::kDouble).item<double>();
  at::Tensor ga = need_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor gb = need_b ? at::empty_like(b) : at::empty({0}, b.options());
  if (!need_a && !need_b) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
    if (va.num_pixels() == 0) return;
    const acc_t scale = static_cast<acc_t>(km::safe_ratio(g, den));
    PixelView<scalar_t> pga{}, pgb{};
    if (need_a) pga = make_pixel_view<scalar_t>(ga);
    if (need_b) pgb = make_pixel_view<scalar_t>(gb);
    backward_kernel<scalar_t>(va, vb, w.defined() ? w.data_ptr<acc_t>() : nullptr, symmetric, scale,
                              need_a ? &pga : nullptr, need_b ? &pgb : nullptr);
  });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("pixel_kl", &pixel_kl_cpu);
  m.impl("pixel_kl_backward", &pixel_kl_backward_cpu);
}

}  // namespace mona
