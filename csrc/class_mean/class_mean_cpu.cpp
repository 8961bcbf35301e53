// mona::class_mean — CPU kernels.
//
// Parallel strategy (every read streams along the contiguous dimension):
// forward, NCHW: image by image, parallel over channels: each row f[b, d, :] is read once and its
//   C class sums are vectorised select-and-add loops (labels as int32 codes), all C in one pass over
//   the row for C <= 8 (class by class above); channels-last / [N, D]: parallel over tiles of kTile pixels of one image,
//   each thread adds pixel rows into its own [C, D] partial sums (fp32, fp64 for double), reduced
//   once at the end. No atomics; deterministic for a fixed thread count.
// backward: NCHW without a weight gradient: parallel over channels, whole rows written in order;
//   otherwise parallel over pixel tiles (channel-outer / pixel-inner for NCHW, pixel-outer /
//   channel-inner for channels-last). Every output element is written by exactly one thread.
// Forward: each thread accumulates into its own [C, D] partial sums (fp32, fp64 for double),
// reduced once at the end — no atomics, deterministic for a fixed thread count.
// Backward: every output element is written by exactly one thread.
// The select-and-add loops only vectorise without -ftrapping-math (exception flags are never read).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "class_mean/class_mean_checks.h"
#include "class_mean/class_mean_math.h"
#include "common/simd_cpu.h"
#include "common/tensor_utils.h"

namespace mona {
namespace {

constexpr int64_t kTile = 64;

// Tiles never straddle two images, so a tile is (b, p0, p1) with one base pointer.
struct Tile {
  int64_t b, p0, p1;
};
inline Tile tile_at(int64_t t, int64_t tiles_per_image, int64_t P) {
  const int64_t b = t / tiles_per_image;
  const int64_t p0 = (t - b * tiles_per_image) * kTile;
  return {b, p0, std::min(P, p0 + kTile)};
}

// sum over the pixels p of class c of w[p] * row[p * stride]; pixels of other classes are skipped,
// not multiplied by 0 (a NaN / inf feature must not reach another class's mean).
template <typename scalar_t, typename acc_t>
MONA_INLINE acc_t class_row_sum(const int32_t* cls, int32_t c, const acc_t* w, const scalar_t* row, int64_t stride,
                                int64_t P) {
  constexpr int U = 16;  // independent accumulators: the compiler vectorises the select + add
  acc_t acc[U] = {};
  int64_t p = 0;
  if (stride == 1) {
    for (; p + U <= P; p += U) {
      for (int u = 0; u < U; ++u) {
        // Written as a select then a plain add: GCC 12 at -O3 with AVX2 miscompiled the fused form
        // `acc += cond ? w * x : 0` (a conditional FMA) here; tests/ops/test_cpu_isa.py checks it.
        const acc_t v = w[p + u] * static_cast<acc_t>(row[p + u]);
        const acc_t keep = cls[p + u] == c ? v : acc_t(0);
        acc[u] = acc[u] + keep;
      }
    }
  }
  acc_t s = 0;
  for (; p < P; ++p) s += cls[p] == c ? w[p] * static_cast<acc_t>(row[p * stride]) : acc_t(0);
  for (int u = 0; u < U; ++u) s += acc[u];
  return s;
}

MONA_MULTIVERSION(float, class_row_sum_f32,
                  (const int32_t* cls, int32_t c, const float* w, const float* row, int64_t stride, int64_t P),
                  (cls, c, w, row, stride, P), (class_row_sum<float, float>))

// All C class sums of one contiguous row in one pass (C = NC <= kFusedClasses): the row, its class
// codes and its weights are read once instead of once per class (4x less L2 traffic at C = 4). Per
// class the same accumulators take the same additions in the same order as class_row_sum: bitwise
// the same sums.
constexpr int kFusedClasses = 8;

template <int NC, typename scalar_t, typename acc_t>
MONA_INLINE void class_row_sums_fixed(const int32_t* cls, const acc_t* w, const scalar_t* row, int64_t P, acc_t* out) {
  constexpr int U = 16;
  acc_t acc[NC][U] = {};
  int64_t p = 0;
  for (; p + U <= P; p += U) {
    acc_t v[U];
    int32_t k[U];
    for (int u = 0; u < U; ++u) {
      v[u] = w[p + u] * static_cast<acc_t>(row[p + u]);
      k[u] = cls[p + u];
    }
    for (int c = 0; c < NC; ++c) {
      for (int u = 0; u < U; ++u) {
        const acc_t keep = k[u] == c ? v[u] : acc_t(0);  // select then add: see class_row_sum
        acc[c][u] = acc[c][u] + keep;
      }
    }
  }
  for (int c = 0; c < NC; ++c) {
    acc_t s = 0;
    for (int64_t q = p; q < P; ++q) s += cls[q] == c ? w[q] * static_cast<acc_t>(row[q]) : acc_t(0);
    for (int u = 0; u < U; ++u) s += acc[c][u];
    out[c] = s;
  }
}

template <typename scalar_t, typename acc_t>
MONA_INLINE void class_row_sums(const int32_t* cls, int64_t C, const acc_t* w, const scalar_t* row, int64_t P,
                                acc_t* out) {
  switch (C) {
    case 1: return class_row_sums_fixed<1>(cls, w, row, P, out);
    case 2: return class_row_sums_fixed<2>(cls, w, row, P, out);
    case 3: return class_row_sums_fixed<3>(cls, w, row, P, out);
    case 4: return class_row_sums_fixed<4>(cls, w, row, P, out);
    case 5: return class_row_sums_fixed<5>(cls, w, row, P, out);
    case 6: return class_row_sums_fixed<6>(cls, w, row, P, out);
    case 7: return class_row_sums_fixed<7>(cls, w, row, P, out);
    default: return class_row_sums_fixed<8>(cls, w, row, P, out);
  }
}

MONA_MULTIVERSION(void, class_row_sums_f32,
                  (const int32_t* cls, int64_t C, const float* w, const float* row, int64_t P, float* out),
                  (cls, C, w, row, P, out), (class_row_sums<float, float>))

template <typename scalar_t, typename acc_t>
acc_t weighted_class_sum(const int32_t* cls, int32_t c, const acc_t* w, const scalar_t* row, int64_t stride,
                         int64_t P) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    return class_row_sum_f32(cls, c, w, row, stride, P);
  } else {
    return class_row_sum(cls, c, w, row, stride, P);
  }
}

template <typename scalar_t, typename index_t>
void class_mean_forward_kernel(const PixelView<const scalar_t>& f, const index_t* labels,
                               const at::opmath_type<scalar_t>* weight, int64_t C, int64_t ignore_index,
                               at::opmath_type<scalar_t>* counts, scalar_t* means) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f.num_pixels(), D = f.D, P = f.P;
  // Pass 1 (serial, N labels): validate labels and total the weights per class.
  for (int64_t n = 0; n < N; ++n) {
    const index_t lab = labels[n];
    TORCH_CHECK_VALUE(!class_mean_math::is_bad(lab, C, ignore_index), "class_mean: labels contain ",
                      static_cast<int64_t>(lab), " (at flat index ", n, "), which is neither in [0, num_classes=", C,
                      ") nor ignore_index=", ignore_index);
    if (class_mean_math::is_valid(lab, C)) counts[lab] += weight ? weight[n] : acc_t(1);
  }
  // Pass 2, NCHW (pixels contiguous): image by image, its labels as int32 class codes (-1: none)
  // and its pixel weights, then, parallel over channels, every feature row f[b, d, :] is read once
  // and its C class sums are vectorised select-and-add loops over the row (no label-dependent
  // stores). Each thread owns its channels' sums.
  if (!f.channels_fastest()) {
    std::vector<acc_t> sums(C * D, acc_t(0)), w_img(P);
    std::vector<int32_t> cls(P);
    for (int64_t b = 0; b < f.B; ++b) {
      const index_t* lab = labels + b * P;
      for (int64_t p = 0; p < P; ++p) {
        cls[p] = class_mean_math::is_valid(lab[p], C) ? static_cast<int32_t>(lab[p]) : -1;
        w_img[p] = weight ? weight[b * P + p] : acc_t(1);
      }
      at::parallel_for(0, D, 8, [&](int64_t d0, int64_t d1) {
        acc_t part[kFusedClasses];
        for (int64_t d = d0; d < d1; ++d) {
          const scalar_t* row = f.data + b * f.stride_b + d * f.stride_d;
          if (C <= kFusedClasses && f.stride_p == 1) {
            if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
              class_row_sums_f32(cls.data(), C, w_img.data(), row, P, part);
            } else {
              class_row_sums(cls.data(), C, w_img.data(), row, P, part);
            }
            for (int64_t c = 0; c < C; ++c) sums[c * D + d] += part[c];
            continue;
          }
          for (int64_t c = 0; c < C; ++c) {
            sums[c * D + d] +=
                weighted_class_sum(cls.data(), static_cast<int32_t>(c), w_img.data(), row, f.stride_p, P);
          }
        }
      });
    }
    for (int64_t i = 0; i < C * D; ++i)
      means[i] = static_cast<scalar_t>(class_mean_math::finalize(sums[i], counts[i / D]));
    return;
  }
  // Pass 2, channels-last / [N, D] (channels contiguous): parallel over tiles of pixels, each
  // thread adding whole pixel rows into its own [C, D] partial sums, reduced at the end.
  const int64_t tiles_per_image = (P + kTile - 1) / kTile;
  const int64_t num_tiles = f.B * tiles_per_image;
  const int nthreads = at::get_num_threads();
  std::vector<acc_t> partial(static_cast<size_t>(nthreads) * C * D, acc_t(0));
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    acc_t* sums = partial.data() + static_cast<size_t>(at::get_thread_num()) * C * D;
    for (int64_t t = begin; t < end; ++t) {
      const Tile tile = tile_at(t, tiles_per_image, P);
      const scalar_t* base = f.data + tile.b * f.stride_b;
      const int64_t n0 = tile.b * P;
      for (int64_t p = tile.p0; p < tile.p1; ++p) {
        const index_t lab = labels[n0 + p];
        if (!class_mean_math::is_valid(lab, C)) continue;
        const acc_t w = weight ? weight[n0 + p] : acc_t(1);
        const scalar_t* px = base + p * f.stride_p;
        acc_t* srow = sums + lab * D;
        for (int64_t d = 0; d < D; ++d) srow[d] += w * static_cast<acc_t>(px[d * f.stride_d]);
      }
    }
  });
  at::parallel_for(0, C * D, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t s = 0;
      for (int th = 0; th < nthreads; ++th) s += partial[static_cast<size_t>(th) * C * D + i];
      means[i] = static_cast<scalar_t>(class_mean_math::finalize(s, counts[i / D]));
    }
  });
}

template <typename scalar_t, typename index_t>
void class_mean_backward_kernel(const PixelView<const scalar_t>& f, const PixelView<scalar_t>& gf,
                                const index_t* labels, const at::opmath_type<scalar_t>* weight, int64_t C,
                                const at::opmath_type<scalar_t>* grad_means,
                                const at::opmath_type<scalar_t>* grad_counts, const at::opmath_type<scalar_t>* means,
                                const at::opmath_type<scalar_t>* counts, at::opmath_type<scalar_t>* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = f.D, P = f.P;
  if (!grad_weight && !gf.channels_fastest()) {
    // NCHW gradient without a weight gradient: parallel over channels, whole rows written in order.
    at::parallel_for(0, D, 1, [&](int64_t d0, int64_t d1) {
      std::vector<acc_t> coef(C);
      for (int64_t d = d0; d < d1; ++d) {
        for (int64_t c = 0; c < C; ++c)
          coef[c] =
              class_mean_math::grad_feature(acc_t(1), grad_means[c * D + d], class_mean_math::inverse_count(counts[c]));
        for (int64_t b = 0; b < gf.B; ++b) {
          scalar_t* row = gf.data + b * gf.stride_b + d * gf.stride_d;
          const index_t* lab = labels + b * P;
          const acc_t* w = weight ? weight + b * P : nullptr;
          for (int64_t p = 0; p < P; ++p) {
            const acc_t g = class_mean_math::is_valid(lab[p], C) ? (w ? w[p] : acc_t(1)) * coef[lab[p]] : acc_t(0);
            row[p * gf.stride_p] = static_cast<scalar_t>(g);
          }
        }
      }
    });
    return;
  }
  const int64_t tiles_per_image = (P + kTile - 1) / kTile;
  at::parallel_for(0, f.B * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
    acc_t gw[kTile];
    for (int64_t t = begin; t < end; ++t) {
      const Tile tile = tile_at(t, tiles_per_image, P);
      const int64_t n0 = tile.b * P;
      for (int64_t i = 0; i < kTile; ++i) gw[i] = acc_t(0);
      if (f.channels_fastest() && gf.channels_fastest()) {
        for (int64_t p = tile.p0; p < tile.p1; ++p) {
          const index_t lab = labels[n0 + p];
          const scalar_t* fx = f.data + tile.b * f.stride_b + p * f.stride_p;
          scalar_t* gx = gf.data + tile.b * gf.stride_b + p * gf.stride_p;
          if (!class_mean_math::is_valid(lab, C)) {
            for (int64_t d = 0; d < D; ++d) gx[d] = scalar_t(0);
            continue;
          }
          const acc_t w = weight ? weight[n0 + p] : acc_t(1);
          const acc_t inv = class_mean_math::inverse_count(counts[lab]);
          const acc_t* gm = grad_means + lab * D;
          for (int64_t d = 0; d < D; ++d) gx[d] = static_cast<scalar_t>(class_mean_math::grad_feature(w, gm[d], inv));
          if (grad_weight) {
            acc_t s = 0;
            for (int64_t d = 0; d < D; ++d) {
              s += class_mean_math::grad_weight_term(gm[d], static_cast<acc_t>(fx[d]), means[lab * D + d], inv);
            }
            gw[p - tile.p0] = s;
          }
        }
      } else {
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* frow = f.data + tile.b * f.stride_b + d * f.stride_d;
          scalar_t* grow = gf.data + tile.b * gf.stride_b + d * gf.stride_d;
          for (int64_t p = tile.p0; p < tile.p1; ++p) {
            const index_t lab = labels[n0 + p];
            acc_t g = 0;
            if (class_mean_math::is_valid(lab, C)) {
              const acc_t w = weight ? weight[n0 + p] : acc_t(1);
              const acc_t gm = grad_means[lab * D + d];
              const acc_t inv = class_mean_math::inverse_count(counts[lab]);
              g = class_mean_math::grad_feature(w, gm, inv);
              if (grad_weight) {
                gw[p - tile.p0] += class_mean_math::grad_weight_term(gm, static_cast<acc_t>(frow[p * f.stride_p]),
                                                                     means[lab * D + d], inv);
              }
            }
            grow[p * gf.stride_p] = static_cast<scalar_t>(g);
          }
        }
      }
      if (grad_weight) {
        for (int64_t p = tile.p0; p < tile.p1; ++p) {
          const index_t lab = labels[n0 + p];
          grad_weight[n0 + p] = class_mean_math::is_valid(lab, C) ? gw[p - tile.p0] + grad_counts[lab] : acc_t(0);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> class_mean_cpu(const at::Tensor& features, const at::Tensor& labels,
                                                  int64_t num_classes, const std::optional<at::Tensor>& weight,
                                                  int64_t ignore_index) {
  class_mean_checks::check_inputs("class_mean", features, labels, weight, num_classes);
  TORCH_CHECK_VALUE(features.device().is_cpu(), "class_mean (CPU kernel): features must be on the CPU");
  const at::Tensor f = view_features(features);
  const at::Tensor lab = labels.contiguous();
  const auto acc = acc_dtype(features.scalar_type());
  const at::Tensor w = weight.has_value() ? weight->to(acc).contiguous() : at::Tensor();
  const int64_t D = features.size(1);
  at::Tensor counts = at::zeros({num_classes}, features.options().dtype(acc));
  at::Tensor means = at::zeros({num_classes, D}, features.options());
  if (lab.numel() == 0 || D == 0) {
    // Still validate nothing (no labels) and return zeros: every class is absent.
    return {means, counts};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_mean_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_mean_cpu_labels", [&] {
      class_mean_forward_kernel<scalar_t, index_t>(make_pixel_view<const scalar_t>(f), lab.data_ptr<index_t>(),
                                                   w.defined() ? w.data_ptr<acc_t>() : nullptr, num_classes,
                                                   ignore_index, counts.data_ptr<acc_t>(), means.data_ptr<scalar_t>());
    });
  });
  return {means, counts};
}

std::tuple<at::Tensor, at::Tensor> class_mean_backward_cpu(const at::Tensor& grad_means, const at::Tensor& grad_counts,
                                                           const at::Tensor& features, const at::Tensor& labels,
                                                           const std::optional<at::Tensor>& weight,
                                                           const at::Tensor& means, const at::Tensor& counts,
                                                           int64_t ignore_index, bool weight_requires_grad) {
  const int64_t C = means.size(0);
  class_mean_checks::check_backward_inputs(features, labels, weight, C, weight_requires_grad);
  const at::Tensor f = view_features(features);
  const at::Tensor lab = labels.contiguous();
  const auto acc = acc_dtype(features.scalar_type());
  const at::Tensor w = weight.has_value() ? weight->to(acc).contiguous() : at::Tensor();
  const at::Tensor gm = grad_means.to(acc).contiguous();
  const at::Tensor gc = grad_counts.to(acc).contiguous();
  const at::Tensor mu = means.to(acc).contiguous();
  const at::Tensor cnt = counts.to(acc).contiguous();
  at::Tensor grad_features = at::empty_like(f);
  at::Tensor grad_weight = weight_requires_grad ? at::empty({lab.numel()}, features.options().dtype(acc))
                                                : at::empty({0}, features.options().dtype(acc));
  if (lab.numel() > 0 && features.size(1) > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_mean_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_mean_backward_cpu_labels", [&] {
        class_mean_backward_kernel<scalar_t, index_t>(
            make_pixel_view<const scalar_t>(f), make_pixel_view<scalar_t>(grad_features), lab.data_ptr<index_t>(),
            w.defined() ? w.data_ptr<acc_t>() : nullptr, C, gm.data_ptr<acc_t>(), gc.data_ptr<acc_t>(),
            mu.data_ptr<acc_t>(), cnt.data_ptr<acc_t>(),
            weight_requires_grad ? grad_weight.data_ptr<acc_t>() : nullptr);
      });
    });
  } else if (weight_requires_grad) {
    grad_weight.zero_();
  }
  if (weight_requires_grad) grad_weight = grad_weight.view(labels.sizes()).to(weight->scalar_type());
  return {grad_features, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(mona, CPU, m) {
  m.impl("class_mean", &class_mean_cpu);
  m.impl("class_mean_backward", &class_mean_backward_cpu);
}

}  // namespace mona
