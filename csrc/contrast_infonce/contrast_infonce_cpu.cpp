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
// AVX2/FMA-multiversioned loops. Nothing of size Q x M x D exists. An NCHW key map is read in
// blocks of 32 keys transposed into a small row buffer (gather_key_block), not copied as a whole.
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

#include "common/cosine_math.h"
#include "common/math.h"
#include "common/simd_cpu.h"
#include "common/tensor_utils.h"
#include "contrast_infonce/contrast_infonce_checks.h"
#include "contrast_infonce/contrast_infonce_host.h"
#include "contrast_infonce/contrast_infonce_math.h"

namespace mona {
namespace {

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

// Per-query online-softmax state of one thread: logits l_j enter as exp(l_j - m).
template <typename acc_t>
struct QueryState {
  std::vector<acc_t> m, s, wcos, acc;  // [R], [R], [R], [R * D] (acc only with the gradient)
  QueryState(int64_t R, int64_t D, bool grad)
      : m(R, -std::numeric_limits<acc_t>::infinity()), s(R, 0), wcos(R, 0), acc(grad ? R * D : 0, 0) {}
};

// An NCHW key map: a key's D values lie in D channel planes, so reading it as a row touches one
// cache line per value — and the planes are a power of two apart (H*W values), so those lines
// collide in a handful of cache sets and evict each other. The walk instead copies blocks of
// kKeyBlock keys (neighbouring pixels: the keys are sorted) into a row-major buffer and runs the
// row walk on the buffer. The copy reads each plane along the block's pixels (a short sequential
// run, every line used up before the next plane) for kKeyTile keys at a time, whose output rows
// (kChannels values each, one line) stay in L1; the buffer's rows are padded by one line
// (key_row_stride) so that they do not collide in the same sets either. Same values in the same
// order as the channels-last walk: bitwise the same result, and no transposed copy of the map.
constexpr int64_t kKeyBlock = 1024;
constexpr int64_t kKeyTile = 64;
constexpr int64_t kChannels = 16;
constexpr int64_t kAhead = 8;

inline int64_t key_row_stride(int64_t D) { return (D + kChannels - 1) / kChannels * kChannels + kChannels; }

struct KeyBlock {
  int64_t key[kKeyBlock];
  int64_t n = 0;
};

// Up to kKeyBlock keys of [k, k_hi) that have pairs; advances k past them.
inline void next_key_block(const int64_t* start, int64_t& k, int64_t k_hi, KeyBlock& block) {
  block.n = 0;
  for (; k < k_hi && block.n < kKeyBlock; ++k) {
    if (start[k] != start[k + 1]) block.key[block.n++] = k;
  }
}

// rows[j * ld + d] = key(block.key[j])[d], ld = key_row_stride(D).
template <typename scalar_t>
void gather_key_block(const contrast_infonce_math::KeySource<scalar_t>& keys, const KeyBlock& block, int64_t D,
                      scalar_t* rows) {
  const int64_t ld = key_row_stride(D);
  const scalar_t* base[kKeyTile];
  int64_t stride[kKeyTile];
  for (int64_t j0 = 0; j0 < block.n; j0 += kKeyTile) {
    const int64_t nj = std::min(kKeyTile, block.n - j0);
    for (int64_t j = 0; j < nj; ++j) base[j] = keys.row(block.key[j0 + j], stride[j]);
    scalar_t* out = rows + j0 * ld;
    // The tile's pixels in plane d + kAhead, requested while plane d is copied. Not further ahead:
    // the planes are a power of two apart, so their lines share a few cache sets (L1 and L2) and
    // lines requested many planes ahead are evicted before they are used.
    const scalar_t* first = base[0];
    const int64_t span = base[nj - 1] - first, s = stride[0];
    constexpr int64_t kLine = 64 / sizeof(scalar_t);
    const bool prefetch = s != 1 && stride[nj - 1] == s && span >= 0 && span < 32 * kLine;
    for (int64_t d0 = 0; d0 < D; d0 += kChannels) {
      const int64_t d1 = std::min(D, d0 + kChannels);
      for (int64_t d = d0; d < d1; ++d) {
        if (prefetch && d + kAhead < D) {
          const scalar_t* p = first + (d + kAhead) * s;
          for (int64_t o = 0; o < span; o += kLine) __builtin_prefetch(p + o);
          __builtin_prefetch(p + span);
        }
        for (int64_t j = 0; j < nj; ++j) out[j * ld + d] = base[j][d * stride[j]];
      }
    }
  }
}

template <typename scalar_t>
void infonce_forward_kernel(const InfonceArgs& args, at::opmath_type<scalar_t>* row_loss,
                            at::opmath_type<scalar_t>* grad_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto f = make_pixel_view<const scalar_t>(args.features);
  const auto keys = key_source<scalar_t>(args);
  const acc_t* protos = args.prototypes.data_ptr<acc_t>();
  const acc_t* weight = args.class_weight.data_ptr<acc_t>();
  const int64_t* qidx = args.query_index.data_ptr<int64_t>();
  const int64_t* nidx = args.negative_index.data_ptr<int64_t>();
  const int64_t D = args.D, M = args.M, Q = args.Q, R = args.C * args.Q;
  const int64_t num_keys = args.N + args.C * args.K;
  const bool grad = grad_rows != nullptr;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(args.temperature);
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
      xn[r] = cosine_math::safe_norm(sq);
      acc_t dot, psq;
      dot_and_square(protos + (r / Q) * D, 1, x, D, dot, psq);
      inv0[r] = acc_t(1) / cosine_math::safe_norm(psq);
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
  //    blocks of keys transposed into a small buffer (gather_key_block), without a copy of the map.
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<QueryState<acc_t>> states;
  states.reserve(nthreads);
  for (int t = 0; t < nthreads; ++t) states.emplace_back(R, D, grad);
  // Keys with strided channels (an NCHW map; bank rows are contiguous) go through row blocks.
  const bool nchw_map = keys.stride_d != 1;
  at::parallel_for(0, nthreads, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      QueryState<acc_t>& st = states[t];
      // keys whose first pair falls in this thread's share of the pairs
      const int64_t p_lo = num_pairs * t / nthreads, p_hi = num_pairs * (t + 1) / nthreads;
      int64_t k_lo = std::upper_bound(start.begin(), start.end(), p_lo) - start.begin() - 1;
      if (t > 0 && start[k_lo] < p_lo) ++k_lo;  // a key straddling the boundary belongs to the previous thread
      int64_t k_hi = k_lo;
      while (k_hi < num_keys && start[k_hi] < p_hi) ++k_hi;
      // One key: its pairs' dot products, online softmax and (with the gradient) the weighted sum.
      auto walk_key = [&](int64_t k, const scalar_t* row, int64_t stride) {
        acc_t inv_kn = 0;
        for (int64_t p = start[k]; p < start[k + 1]; ++p) {
          const int64_t r = pair_query[p];
          acc_t dot;
          if (p == start[k]) {  // the key's norm, once per key, in the same pass as its first dot
            acc_t sq;
            dot_and_square(row, stride, X.data() + r * D, D, dot, sq);
            inv_kn = acc_t(1) / cosine_math::safe_norm(sq);
          } else {
            dot = dot_only(row, stride, X.data() + r * D, D);
          }
          const acc_t cosine = dot * inv_kn / xn[r];
          acc_t rescale, w;
          contrast_infonce_math::online_step(st.m[r], cosine * inv_t, rescale, w);
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
      };
      if (!nchw_map) {
        for (int64_t k = k_lo; k < k_hi; ++k) {
          if (start[k] == start[k + 1]) continue;
          int64_t stride;
          const scalar_t* row = keys.row(k, stride);
          walk_key(k, row, stride);
        }
        continue;
      }
      const int64_t ld = key_row_stride(D);
      std::vector<scalar_t> rows(kKeyBlock * ld);
      KeyBlock block;
      for (int64_t k = k_lo; k < k_hi;) {
        next_key_block(start.data(), k, k_hi, block);
        gather_key_block(keys, block, D, rows.data());
        for (int64_t j = 0; j < block.n; ++j) walk_key(block.key[j], rows.data() + j * ld, 1);
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
      acc_t s = math::exp(l0 - m), wcos = s * cos0[r];
      if (out) {
        for (int64_t d = 0; d < D; ++d) out[d] = s * proto[d] * inv0[r];
      }
      for (const auto& st : states) {
        // An empty state (no key seen) has s == 0 exactly; a NaN state must reach the loss.
        if (st.s[r] == acc_t(0)) continue;
        const acc_t scale = math::exp(st.m[r] - m);
        s += scale * st.s[r];
        wcos += scale * st.wcos[r];
        if (out) {
          const acc_t* acc = st.acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) out[d] += scale * acc[d];
        }
      }
      row_loss[r] = m + math::log(s) - l0;
      if (out) {
        const acc_t scale = weight[r / Q] / static_cast<acc_t>(Q) * inv_t / xn[r];
        const acc_t* x = X.data() + r * D;
        for (int64_t d = 0; d < D; ++d) {
          out[d] = contrast_infonce_math::query_grad(scale, out[d], s, proto[d] * inv0[r], wcos, cos0[r], x[d], xn[r]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> contrast_infonce_cpu(const at::Tensor& features, const at::Tensor& key_features,
                                                        const at::Tensor& prototypes, const at::Tensor& query_index,
                                                        const at::Tensor& negative_index,
                                                        const at::Tensor& class_weight, double temperature,
                                                        const std::optional<at::Tensor>& bank, bool compute_grad) {
  InfonceArgs args = prepare_infonce("contrast_infonce", features, key_features, bank, prototypes, query_index,
                                     negative_index, class_weight, temperature);
  const auto opts = features.options().dtype(args.prototypes.scalar_type());
  at::Tensor row_loss = at::empty({args.C, args.Q}, opts);
  at::Tensor grad_rows = compute_grad ? at::empty({args.C, args.Q, args.D}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    infonce_forward_kernel<scalar_t>(args, row_loss.data_ptr<acc_t>(),
                                     compute_grad ? grad_rows.data_ptr<acc_t>() : nullptr);
  });
  return {reduce_infonce_loss(row_loss, args.class_weight, args.Q), grad_rows};
}

at::Tensor contrast_infonce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features,
                                         const at::Tensor& query_index, const at::Tensor& class_weight,
                                         const at::Tensor& grad_rows) {
  contrast_infonce_checks::check_backward_inputs("contrast_infonce_backward", features, query_index, class_weight,
                                                 grad_rows);
  const at::Tensor f = view_features(features);
  at::Tensor grad = at::zeros_like(f);
  const int64_t C = query_index.size(0), Q = query_index.size(1), D = f.size(1);
  const at::Tensor qidx = query_index.contiguous();
  const double g = grad_loss.item<double>();  // a CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "contrast_infonce_backward_cpu", [&] {
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
