// mona::contrast_infonce (+ backward) — CPU kernels.
//
// Strategy (key-major): the C*Q*M (query, negative) pairs are bucketed by key index with a
// counting sort, and the key space is walked in memory order, split into one contiguous range per
// thread. Every distinct key row is read once (keys drawn several times are reused from cache, and
// the walk is nearly sequential, friendly to prefetchers and the TLB); its squared norm is computed
// once; each of its pairs takes a dot product with the pair's query vector (all C*Q query vectors,
// copied once into a fp32/fp64 matrix, stay in cache) and folds the logit into that query's online
// logsumexp — and, with compute_grad, the key into the query's online-softmax-weighted sum, which
// yields d loss / d query without a second read of the keys. Each thread keeps its own per-query
// state; states are merged (an associative log-sum-exp merge) at the end. Float32 rows use
// AVX2/FMA-multiversioned loops. Nothing of size Q x M x D exists. An NCHW key map is walked in
// tiles of 16 channels instead of rows (walk_keys_channel_tiled), so no transposed copy is needed.
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
#include <limits>
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
inline acc_t dot_only(const row_t* row, int64_t stride, const acc_t* x, int64_t D) {
  if constexpr (std::is_same_v<row_t, float> && std::is_same_v<acc_t, float>) {
    if (stride == 1) return simd::dot_f32(row, x, D);
  }
  acc_t a = 0;
  for (int64_t d = 0; d < D; ++d) a += static_cast<acc_t>(row[d * stride]) * x[d];
  return a;
}

template <typename row_t, typename acc_t>
inline void axpy(acc_t alpha, const row_t* row, int64_t stride, acc_t* y, int64_t D) {
  if constexpr (std::is_same_v<row_t, float> && std::is_same_v<acc_t, float>) {
    if (stride == 1) return simd::axpy_f32(alpha, row, y, D);
  }
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * static_cast<acc_t>(row[d * stride]);
}

template <typename scalar_t>
infonce::KeySource<scalar_t> key_source(const InfonceArgs& a) {
  const auto v = make_pixel_view<const scalar_t>(a.key_features);
  return {v.data, v.B, v.P, v.stride_b, v.stride_d, v.stride_p,
          a.bank.defined() ? a.bank.data_ptr<scalar_t>() : nullptr, a.N, a.D};
}

// Per-query online-softmax state of one thread: logits l_j enter as exp(l_j - m).
template <typename acc_t>
struct QueryState {
  std::vector<acc_t> m, s, wcos, acc;  // [R], [R], [R], [R * D] (acc only with the gradient)
  QueryState(int64_t R, int64_t D, bool grad)
      : m(R, -std::numeric_limits<acc_t>::infinity()), s(R, 0), wcos(R, 0), acc(grad ? R * D : 0, 0) {}
};

// The key walk of one thread over keys [k_lo, k_hi) when the map's channels are strided (NCHW): a
// key's D values lie in D different rows, so reading it as a row would touch D cache lines for
// D values. Instead the keys are read in tiles of kChannelTile channels: for each tile, the sorted
// keys advance through kChannelTile rows in step (neighbouring keys share cache lines), and every
// pair adds the tile's part of its dot product. Pass 1 (tiles): dot products and squared norms.
// Pass 2 (pairs): the thread's softmax state per query (m = the largest logit, s, wcos), exactly
// the state the row walk reaches. Pass 3 (tiles, with the gradient): acc += exp(l - m) / |k| * k.
// Bank keys (rows of the bank, contiguous) go through the same tiles.
constexpr int64_t kChannelTile = 16;

// dot(v, x) over one tile: for a full tile, products then a fixed tree (vectorised; a running sum
// would be a chain of dependent adds).
template <typename acc_t>
MONA_INLINE acc_t tile_dot(const acc_t* v, const acc_t* x, int64_t T) {
  if (T == kChannelTile) {
    acc_t prod[kChannelTile];
    for (int64_t t = 0; t < kChannelTile; ++t) prod[t] = v[t] * x[t];
    for (int64_t h = kChannelTile / 2; h > 0; h /= 2) {
      for (int64_t t = 0; t < h; ++t) prod[t] += prod[t + h];
    }
    return prod[0];
  }
  acc_t s = 0;
  for (int64_t t = 0; t < T; ++t) s += v[t] * x[t];
  return s;
}

template <typename scalar_t, typename acc_t>
MONA_INLINE void walk_keys_channel_tiled(const infonce::KeySource<scalar_t>& keys, const int64_t* start, const int32_t* pair_query,
                             int64_t k_lo, int64_t k_hi, const acc_t* X, const acc_t* xn, int64_t D, acc_t inv_t,
                             QueryState<acc_t>& st) {
  const int64_t p0 = start[k_lo], np = start[k_hi] - p0;
  if (np == 0) return;
  std::vector<acc_t> dot(np, acc_t(0)), sq(k_hi - k_lo, acc_t(0));
  acc_t v[kChannelTile];
  // Pass 1: dots and norms, tile by tile.
  for (int64_t d0 = 0; d0 < D; d0 += kChannelTile) {
    const int64_t T = std::min(kChannelTile, D - d0);
    for (int64_t k = k_lo; k < k_hi; ++k) {
      if (start[k] == start[k + 1]) continue;
      int64_t stride;
      const scalar_t* row = keys.row(k, stride) + d0 * stride;
      acc_t s2 = 0;
      for (int64_t t = 0; t < T; ++t) {
        v[t] = static_cast<acc_t>(row[t * stride]);
        s2 += v[t] * v[t];
      }
      sq[k - k_lo] += s2;
      for (int64_t p = start[k]; p < start[k + 1]; ++p) {
        dot[p - p0] += tile_dot(v, X + static_cast<int64_t>(pair_query[p]) * D + d0, T);
      }
    }
  }
  // Pass 2: logits and the softmax state; dot[] becomes the logit.
  for (int64_t k = k_lo; k < k_hi; ++k) {
    if (start[k] == start[k + 1]) continue;
    const acc_t inv_kn = acc_t(1) / cm::safe_norm(sq[k - k_lo]);
    sq[k - k_lo] = inv_kn;
    for (int64_t p = start[k]; p < start[k + 1]; ++p) {
      const int64_t r = pair_query[p];
      const acc_t cosine = dot[p - p0] * inv_kn / xn[r];
      acc_t rescale, w;
      infonce::online_step(st.m[r], cosine * inv_t, rescale, w);
      st.s[r] = st.s[r] * rescale + w;
      st.wcos[r] = st.wcos[r] * rescale + w * cosine;
      dot[p - p0] = cosine * inv_t;
    }
  }
  if (st.acc.empty()) return;
  // Pass 3: acc[r] += exp(l - m[r]) / |k| * k, tile by tile (m[r] is final now: no rescaling).
  for (int64_t p = 0; p < np; ++p) dot[p] = std::exp(dot[p] - st.m[pair_query[p0 + p]]);
  for (int64_t d0 = 0; d0 < D; d0 += kChannelTile) {
    const int64_t T = std::min(kChannelTile, D - d0);
    for (int64_t k = k_lo; k < k_hi; ++k) {
      if (start[k] == start[k + 1]) continue;
      int64_t stride;
      const scalar_t* row = keys.row(k, stride) + d0 * stride;
      for (int64_t t = 0; t < T; ++t) v[t] = static_cast<acc_t>(row[t * stride]) * sq[k - k_lo];
      for (int64_t p = start[k]; p < start[k + 1]; ++p) {
        acc_t* acc = st.acc.data() + static_cast<int64_t>(pair_query[p]) * D + d0;
        const acc_t w = dot[p - p0];
        for (int64_t t = 0; t < T; ++t) acc[t] += w * v[t];
      }
    }
  }
}

// float32: the tiled walk compiled per vector ISA (common/simd_cpu.h).
MONA_MULTIVERSION(void, walk_keys_channel_tiled_f32,
                  (const infonce::KeySource<float>& keys, const int64_t* start, const int32_t* pair_query,
                   int64_t k_lo, int64_t k_hi, const float* X, const float* xn, int64_t D, float inv_t,
                   QueryState<float>& st),
                  (keys, start, pair_query, k_lo, k_hi, X, xn, D, inv_t, st), (walk_keys_channel_tiled<float, float>))

template <typename scalar_t, typename acc_t>
void walk_keys_channel_tiled_any(const infonce::KeySource<scalar_t>& keys, const int64_t* start,
                                 const int32_t* pair_query, int64_t k_lo, int64_t k_hi, const acc_t* X,
                                 const acc_t* xn, int64_t D, acc_t inv_t, QueryState<acc_t>& st) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    walk_keys_channel_tiled_f32(keys, start, pair_query, k_lo, k_hi, X, xn, D, inv_t, st);
  } else {
    walk_keys_channel_tiled(keys, start, pair_query, k_lo, k_hi, X, xn, D, inv_t, st);
  }
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
  const int64_t D = a.D, M = a.M, Q = a.Q, R = a.C * a.Q;
  const int64_t num_keys = a.N + a.C * a.K;
  const bool grad = grad_rows != nullptr;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(a.temperature);
  auto active = [&](int64_t r) { return weight[r / Q] > acc_t(0); };

  // 1. Query vectors (fp32/fp64 copies) and norms; the positive key (the class prototype).
  std::vector<acc_t> X(R * D), xn(R), inv0(R, 0), cos0(R, 0);
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (!active(r)) continue;
      const int64_t n = qidx[r], b = n / f.P;
      const scalar_t* base = f.data + b * f.stride_b + (n - b * f.P) * f.stride_p;
      acc_t* x = X.data() + r * D;
      acc_t sq = 0;
      for (int64_t d = 0; d < D; ++d) {
        x[d] = static_cast<acc_t>(base[d * f.stride_d]);
        sq += x[d] * x[d];
      }
      xn[r] = cm::safe_norm(sq);
      acc_t dot, psq;
      dot_and_square(protos + (r / Q) * D, 1, x, D, dot, psq);
      inv0[r] = acc_t(1) / cm::safe_norm(psq);
      cos0[r] = dot * inv0[r] / xn[r];
    }
  });

  // 2. Counting sort of the (query, negative) pairs by key index.
  std::vector<int64_t> start(num_keys + 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    if (!active(r)) continue;
    for (int64_t j = 0; j < M; ++j) ++start[nidx[r * M + j] + 1];
  }
  for (int64_t k = 0; k < num_keys; ++k) start[k + 1] += start[k];
  const int64_t num_pairs = start[num_keys];
  std::vector<int32_t> pair_query(num_pairs);
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < R; ++r) {
      if (!active(r)) continue;
      for (int64_t j = 0; j < M; ++j) pair_query[next[nidx[r * M + j]]++] = static_cast<int32_t>(r);
    }
  }

  // 3. Walk the keys in memory order, one contiguous range of pairs per thread. Keys whose channels
  //    are contiguous (channels-last map, bank rows) are read row by row; an NCHW map is read in
  //    channel tiles (walk_keys_channel_tiled), without a transposed copy.
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<QueryState<acc_t>> states;
  states.reserve(nthreads);
  for (int t = 0; t < nthreads; ++t) states.emplace_back(R, D, grad);
  const bool channel_tiled = keys.stride_d != 1 && a.N > 0;
  at::parallel_for(0, nthreads, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      QueryState<acc_t>& st = states[t];
      // keys whose first pair falls in this thread's share of the pairs
      const int64_t p_lo = num_pairs * t / nthreads, p_hi = num_pairs * (t + 1) / nthreads;
      int64_t k_lo = std::upper_bound(start.begin(), start.end(), p_lo) - start.begin() - 1;
      if (t > 0 && start[k_lo] < p_lo) ++k_lo;  // a key straddling the boundary belongs to the previous thread
      int64_t k_hi = k_lo;
      while (k_hi < num_keys && start[k_hi] < p_hi) ++k_hi;
      if (channel_tiled) {
        walk_keys_channel_tiled_any(keys, start.data(), pair_query.data(), k_lo, k_hi, X.data(), xn.data(), D, inv_t,
                                    st);
        continue;
      }
      for (int64_t k = k_lo; k < k_hi; ++k) {
        if (start[k] == start[k + 1]) continue;
        int64_t stride;
        const scalar_t* row = keys.row(k, stride);
        acc_t inv_kn = 0;
        for (int64_t p = start[k]; p < start[k + 1]; ++p) {
          const int64_t r = pair_query[p];
          acc_t dot;
          if (p == start[k]) {  // the key's norm, once per key, in the same pass as its first dot
            acc_t sq;
            dot_and_square(row, stride, X.data() + r * D, D, dot, sq);
            inv_kn = acc_t(1) / cm::safe_norm(sq);
          } else {
            dot = dot_only(row, stride, X.data() + r * D, D);
          }
          const acc_t cosine = dot * inv_kn / xn[r];
          acc_t rescale, w;
          infonce::online_step(st.m[r], cosine * inv_t, rescale, w);
          st.s[r] = st.s[r] * rescale + w;
          st.wcos[r] = st.wcos[r] * rescale + w * cosine;
          if (grad) {
            acc_t* acc = st.acc.data() + r * D;
            if (rescale != acc_t(1)) {
              for (int64_t d = 0; d < D; ++d) acc[d] *= rescale;
            }
            axpy(w * inv_kn, row, stride, acc, D);
          }
        }
      }
    }
  });

  // 4. Merge the threads' states with the positive key; loss and gradient per query.
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t* out = grad ? grad_rows + r * D : nullptr;
      if (!active(r)) {
        row_loss[r] = acc_t(0);
        if (out) std::fill(out, out + D, acc_t(0));
        continue;
      }
      const acc_t* proto = protos + (r / Q) * D;
      const acc_t l0 = cos0[r] * inv_t;
      acc_t m = l0;
      for (const auto& st : states) m = std::max(m, st.m[r]);
      acc_t s = std::exp(l0 - m), wcos = s * cos0[r];
      if (out) {
        for (int64_t d = 0; d < D; ++d) out[d] = s * proto[d] * inv0[r];
      }
      for (const auto& st : states) {
        // An empty state (no key seen) has s == 0 exactly; a NaN state must reach the loss.
        if (st.s[r] == acc_t(0)) continue;
        const acc_t scale = std::exp(st.m[r] - m);
        s += scale * st.s[r];
        wcos += scale * st.wcos[r];
        if (out) {
          const acc_t* acc = st.acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) out[d] += scale * acc[d];
        }
      }
      row_loss[r] = m + std::log(s) - l0;
      if (out) {
        const acc_t scale = weight[r / Q] / static_cast<acc_t>(Q) * inv_t / xn[r];
        const acc_t* x = X.data() + r * D;
        for (int64_t d = 0; d < D; ++d) {
          out[d] = infonce::query_grad(scale, out[d], s, proto[d] * inv0[r], wcos, cos0[r], x[d], xn[r]);
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
