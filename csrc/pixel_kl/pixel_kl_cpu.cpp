// mona::pixel_kl — CPU kernels.
//
// Parallel strategy: pixels are cut into tiles of kTile pixels inside one image (a tile never
// straddles two images); at::parallel_for hands ranges of tiles to threads. A tile's C x kTile
// logits of each input are loaded channel-outer / pixel-inner (contiguous rows for NCHW) into a
// small per-thread buffer that stays in L1, and every later step is a loop over the tile's pixels
// for one class at a time, which the compiler vectorises (the float exp / log are the branch-free
// kl_exp / kl_log of pixel_kl_math.h). For float32 the tile loop is compiled for AVX-512, AVX2+FMA
// and baseline x86-64 and picked by the CPU's features (MONA_MULTIVERSION, common/simd_cpu.h).
//
// One pass: when gradients are requested, the forward writes d loss / d logits (for grad_loss = 1)
// while the tile's log-softmaxes are in L1 — the weight sum, their common denominator, is summed
// over the mask first (1/C of the logits' bytes). The backward then only multiplies by grad_loss
// (mona_ext/ops/pixel_kl.py). pixel_kl_backward recomputes everything from the logits, for callers
// of the op that did not ask for gradients in the forward.
// Loss: per-thread partial sums (fp64) of w * kl, reduced in thread order at the end —
// deterministic for a fixed thread count. Every gradient element is written exactly once.
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

#include <cstdint>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#define MONA_PIXEL_KL_STREAM 1
#else
#define MONA_PIXEL_KL_STREAM 0
#endif

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/simd_cpu.h"
#include "common/tensor_utils.h"
#include "pixel_kl/pixel_kl_checks.h"
#include "pixel_kl/pixel_kl_math.h"

namespace mona {
namespace {

using pixel_kl_math::grad_a;
using pixel_kl_math::grad_b;
using pixel_kl_math::kl_exp;
using pixel_kl_math::kl_log;
using pixel_kl_math::kl_term;
using pixel_kl_math::safe_ratio;
constexpr int64_t kTile = 128;
// Gradients at least this large are written with non-temporal stores: no read-for-ownership of
// their lines (a third of the op's memory traffic) and no eviction of the inputs from the caches.
// Smaller ones stay in the cache for whatever reads them next (the optimiser step).
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// Per-thread scratch for one tile: log-probabilities and probabilities of both inputs, per-pixel
// KL terms and gradient scales.
template <typename acc_t>
struct TileBuffers {
  std::vector<acc_t> la, lb, pa, pb;
  acc_t kab[kTile], kba[kTile], mx[kTile], sum[kTile], scale[kTile], out[kTile];
  explicit TileBuffers(int64_t C) : la(C * kTile), lb(C * kTile), pa(C * kTile), pb(C * kTile) {}
};

// What one call computes. weight_t: acc_t (float weights) or bool (a bool mask read in place);
// w == nullptr: every pixel has weight 1. ga / gb == nullptr: that gradient is not written.
template <typename scalar_t, typename weight_t>
struct KlArgs {
  using acc_t = at::opmath_type<scalar_t>;
  PixelView<const scalar_t> a, b;
  const weight_t* w;
  bool symmetric;
  acc_t scale;  // d loss / d (w * kl) of one pixel: grad_loss / sum w
  const PixelView<scalar_t>* ga;
  const PixelView<scalar_t>* gb;
  bool stream;  // non-temporal stores for the gradients (float32, contiguous pixel rows)
};

// Loads n logits of each class (from pixel p0 of image img) and turns them into log-probabilities
// (l) and probabilities (p); mx and sum are scratch.
template <typename scalar_t, typename acc_t>
MONA_INLINE void tile_log_softmax(const PixelView<const scalar_t>& v, int64_t img, int64_t p0, int64_t n, acc_t* l,
                                  acc_t* p, acc_t* mx, acc_t* sum) {
  const int64_t C = v.D;
  const scalar_t* base = v.data + img * v.stride_b + p0 * v.stride_p;
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
      e[i] = kl_exp(z[i] - mx[i]);
      sum[i] += e[i];
    }
  }
  // lse = max + log(sum); mx becomes lse and sum 1 / sum.
  for (int64_t i = 0; i < n; ++i) {
    mx[i] += kl_log(sum[i]);
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

// n floats to dst with 16-byte non-temporal stores (dst aligned to 16 bytes first).
MONA_INLINE void stream_row(float* dst, const float* src, int64_t n) {
#if MONA_PIXEL_KL_STREAM
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
#endif
}

// Writes one class row of a gradient: row[i] = values[i] for the tile's n pixels.
template <typename scalar_t, typename acc_t>
MONA_INLINE void store_row(const PixelView<scalar_t>& g, int64_t img, int64_t c, int64_t p0, int64_t n,
                           const acc_t* values, bool stream) {
  scalar_t* row = g.data + img * g.stride_b + c * g.stride_d + p0 * g.stride_p;
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (stream && g.stride_p == 1) {
      stream_row(row, values, n);
      return;
    }
  }
  if (g.stride_p == 1) {
    for (int64_t i = 0; i < n; ++i) row[i] = static_cast<scalar_t>(values[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) row[i * g.stride_p] = static_cast<scalar_t>(values[i]);
  }
}

// Asks for the next tile's logit rows (C rows of kTile pixels per input, contiguous for NCHW):
// the 2C rows are far apart in memory, more streams than the hardware prefetcher follows at once.
template <typename scalar_t>
MONA_INLINE void prefetch_tile(const PixelView<const scalar_t>& v, int64_t img, int64_t p0, int64_t n) {
#if defined(__GNUC__)
  if (v.stride_p != 1) return;
  const scalar_t* base = v.data + img * v.stride_b + p0;
  for (int64_t c = 0; c < v.D; ++c) {
    const char* row = reinterpret_cast<const char*>(base + c * v.stride_d);
    for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(scalar_t)); o += 64) __builtin_prefetch(row + o, 0, 3);
  }
#endif
}

// Tiles [begin, end): returns sum over their pixels of w * kl and writes the requested gradients.
template <typename scalar_t, typename weight_t>
MONA_INLINE double run_tiles(const KlArgs<scalar_t, weight_t>& args, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = args.a.D, P = args.a.P, per_image = (P + kTile - 1) / kTile;
  const bool sym = args.symmetric;
  TileBuffers<acc_t> t(C);
  double loss = 0;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t img = k / per_image, p0 = (k - img * per_image) * kTile, n = std::min(kTile, P - p0);
    if (k + 1 < end) {
      const int64_t img1 = (k + 1) / per_image, p1 = (k + 1 - img1 * per_image) * kTile, n1 = std::min(kTile, P - p1);
      prefetch_tile(args.a, img1, p1, n1);
      prefetch_tile(args.b, img1, p1, n1);
    }
    tile_log_softmax<scalar_t, acc_t>(args.a, img, p0, n, t.la.data(), t.pa.data(), t.mx, t.sum);
    tile_log_softmax<scalar_t, acc_t>(args.b, img, p0, n, t.lb.data(), t.pb.data(), t.mx, t.sum);
    for (int64_t i = 0; i < n; ++i) t.kab[i] = t.kba[i] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t *la = t.la.data() + c * kTile, *lb = t.lb.data() + c * kTile;
      const acc_t *pa = t.pa.data() + c * kTile, *pb = t.pb.data() + c * kTile;
      for (int64_t i = 0; i < n; ++i) t.kab[i] += kl_term(pa[i], la[i], lb[i]);
      if (sym) {
        for (int64_t i = 0; i < n; ++i) t.kba[i] += kl_term(pb[i], lb[i], la[i]);
      }
    }
    acc_t tile_loss = 0;
    const weight_t* w = args.w ? args.w + img * P + p0 : nullptr;
    if (w) {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t wi = static_cast<acc_t>(w[i]);
        tile_loss += wi * (t.kab[i] + t.kba[i]);
        t.scale[i] = wi * args.scale;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        tile_loss += t.kab[i] + t.kba[i];
        t.scale[i] = args.scale;
      }
    }
    loss += tile_loss;
    for (int64_t c = 0; (args.ga || args.gb) && c < C; ++c) {
      const acc_t *la = t.la.data() + c * kTile, *lb = t.lb.data() + c * kTile;
      const acc_t *pa = t.pa.data() + c * kTile, *pb = t.pb.data() + c * kTile;
      if (args.ga) {
        for (int64_t i = 0; i < n; ++i) t.out[i] = grad_a(pa[i], pb[i], la[i], lb[i], t.kab[i], sym, t.scale[i]);
        store_row(*args.ga, img, c, p0, n, t.out, args.stream);
      }
      if (args.gb) {
        for (int64_t i = 0; i < n; ++i) t.out[i] = grad_b(pa[i], pb[i], la[i], lb[i], t.kba[i], sym, t.scale[i]);
        store_row(*args.gb, img, c, p0, n, t.out, args.stream);
      }
    }
  }
#if MONA_PIXEL_KL_STREAM
  if (args.stream) _mm_sfence();  // the streamed lines are visible before the caller reads them
#endif
  return loss;
}

// float32: the tile loop compiled per vector ISA (the generic template above is inlined into each version).
MONA_MULTIVERSION(double, run_tiles_f32, (const KlArgs<float, float>& args, int64_t begin, int64_t end),
                  (args, begin, end), (run_tiles<float, float>))
MONA_MULTIVERSION(double, run_tiles_f32_bool_mask, (const KlArgs<float, bool>& args, int64_t begin, int64_t end),
                  (args, begin, end), (run_tiles<float, bool>))

template <typename scalar_t, typename weight_t>
double dispatch_tiles(const KlArgs<scalar_t, weight_t>& args, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<weight_t, float>) {
    return run_tiles_f32(args, begin, end);
  } else if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<weight_t, bool>) {
    return run_tiles_f32_bool_mask(args, begin, end);
  } else {
    return run_tiles(args, begin, end);
  }
}

// Sum of w * kl over all pixels (fp64 per-thread partials, summed in thread order).
template <typename scalar_t, typename weight_t>
double run(const KlArgs<scalar_t, weight_t>& args) {
  const int64_t per_image = (args.a.P + kTile - 1) / kTile, total = args.a.B * per_image;
  const int nthreads = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nthreads), 0.0);
  at::parallel_for(0, total, 1,
                   [&](int64_t begin, int64_t end) { part[at::get_thread_num()] += dispatch_tiles(args, begin, end); });
  double sum = 0;
  for (double v : part) sum += v;
  return sum;
}

// The mask as the kernels read it: a bool mask in place, other dtypes as acc-dtype weights.
struct Weights {
  at::Tensor tensor;  // undefined: no mask
  double sum;         // sum of the weights (number of pixels without a mask), fp64, in order
};

template <typename acc_t>
Weights prepare_weights(const std::optional<at::Tensor>& mask, int64_t num_pixels, at::ScalarType acc) {
  if (!mask.has_value()) return {at::Tensor(), static_cast<double>(num_pixels)};
  Weights out;
  if (mask->scalar_type() == at::kBool) {
    out.tensor = mask->contiguous();
    const bool* w = out.tensor.data_ptr<bool>();
    int64_t count = 0;
    for (int64_t i = 0; i < num_pixels; ++i) count += w[i] ? 1 : 0;
    out.sum = static_cast<double>(count);
  } else {
    out.tensor = mask->to(acc).contiguous();
    const acc_t* w = out.tensor.data_ptr<acc_t>();
    double s = 0;
    for (int64_t i = 0; i < num_pixels; ++i) s += static_cast<double>(w[i]);
    out.sum = s;
  }
  return out;
}

// Runs the kernel with the mask's weight type; returns sum w * kl.
template <typename scalar_t>
double run_with_weights(const at::Tensor& a, const at::Tensor& b, const Weights& weights, bool symmetric,
                        at::opmath_type<scalar_t> scale, const at::Tensor* ga, const at::Tensor* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto va = make_pixel_view<const scalar_t>(a), vb = make_pixel_view<const scalar_t>(b);
  if (va.num_pixels() == 0) return 0.0;
  PixelView<scalar_t> pga{}, pgb{};
  if (ga) pga = make_pixel_view<scalar_t>(*ga);
  if (gb) pgb = make_pixel_view<scalar_t>(*gb);
  const PixelView<scalar_t>* oa = ga ? &pga : nullptr;
  const PixelView<scalar_t>* ob = gb ? &pgb : nullptr;
  const bool stream = (ga || gb) && a.numel() * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes;
  if (weights.tensor.defined() && weights.tensor.scalar_type() == at::kBool) {
    return run(KlArgs<scalar_t, bool>{va, vb, weights.tensor.data_ptr<bool>(), symmetric, scale, oa, ob, stream});
  }
  const acc_t* w = weights.tensor.defined() ? weights.tensor.data_ptr<acc_t>() : nullptr;
  return run(KlArgs<scalar_t, acc_t>{va, vb, w, symmetric, scale, oa, ob, stream});
}

at::Tensor gradient_like(const at::Tensor& x, bool needed) {
  return needed ? at::empty_like(x) : at::empty({0}, x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pixel_kl_cpu(const at::Tensor& logits_a,
                                                                        const at::Tensor& logits_b,
                                                                        const std::optional<at::Tensor>& mask,
                                                                        bool symmetric, bool compute_grad_a,
                                                                        bool compute_grad_b) {
  pixel_kl_checks::check_inputs("pixel_kl", logits_a, logits_b, mask);
  TORCH_CHECK_VALUE(logits_a.device().is_cpu(), "pixel_kl (CPU kernel): logits must be on the CPU");
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  // Gradients in the layout of the (pixel-mergeable) views, written through their own strides.
  at::Tensor ga = gradient_like(a, compute_grad_a), gb = gradient_like(b, compute_grad_b);
  double loss_sum = 0, weight_sum = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Weights weights = prepare_weights<acc_t>(mask, a.size(0) * (a.dim() == 4 ? a.size(2) * a.size(3) : 1), acc);
    weight_sum = weights.sum;
    loss_sum = run_with_weights<scalar_t>(a, b, weights, symmetric, static_cast<acc_t>(safe_ratio(1.0, weight_sum)),
                                          compute_grad_a ? &ga : nullptr, compute_grad_b ? &gb : nullptr);
  });
  at::Tensor loss = at::empty({}, a.options().dtype(acc));
  loss.fill_(safe_ratio(loss_sum, weight_sum));
  at::Tensor wsum = at::empty({}, a.options().dtype(acc));
  wsum.fill_(weight_sum);
  return {loss.to(a.scalar_type()), wsum, ga, gb};
}

std::tuple<at::Tensor, at::Tensor> pixel_kl_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_a,
                                                         const at::Tensor& logits_b,
                                                         const std::optional<at::Tensor>& mask,
                                                         const at::Tensor& weight_sum, bool symmetric, bool need_a,
                                                         bool need_b) {
  pixel_kl_checks::check_inputs("pixel_kl_backward", logits_a, logits_b, mask);
  const at::Tensor a = view_features(logits_a), b = view_features(logits_b);
  const auto acc = acc_dtype(a.scalar_type());
  const double den = weight_sum.to(at::kDouble).item<double>();  // a CPU scalar: no device sync
  const double g = grad_loss.to(at::kDouble).item<double>();
  at::Tensor ga = gradient_like(a, need_a), gb = gradient_like(b, need_b);
  if (!need_a && !need_b) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pixel_kl_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Weights weights = prepare_weights<acc_t>(mask, 0, acc);  // the sum is weight_sum (saved)
    run_with_weights<scalar_t>(a, b, weights, symmetric, static_cast<acc_t>(safe_ratio(g, den)), need_a ? &ga : nullptr,
                               need_b ? &gb : nullptr);
  });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("pixel_kl", &pixel_kl_cpu);
  m.impl("pixel_kl_backward", &pixel_kl_backward_cpu);
}

}  // namespace mona
