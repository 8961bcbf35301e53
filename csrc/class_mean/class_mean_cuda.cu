// mona::class_mean — CUDA kernels.
//
// Parallel strategy (forward): every thread owns one channel d and walks a short sequence of
// pixels of one image, keeping a running (class, sum) pair; it flushes the sum only when the class
// changes (labels are spatially coherent, so runs are long) and at the end, into the block's
// shared-memory partial sums [C, channels of the block]; the block adds each partial to the global
// fp32/fp64 [C, D] accumulator once (block-level partial sums; if C is too large for shared memory
// the flushes go to the global accumulator directly). The thread <-> (d, pixel) mapping follows the
// layout so that a warp's 32 loads are one coalesced 128-byte transaction:
//   NCHW (pixels fastest): a warp = 32 consecutive pixels of one channel;
//   channels-last / [N, D] (channels fastest): a warp = 32 consecutive channels of one pixel.
// Counts use the same run-length trick on labels, a warp reading 32 consecutive labels per step. A
// finalize kernel divides sums by counts.
// Backward: element-wise in the storage order of the gradient (coalesced writes). The optional
// weight gradient reduces over D per pixel, mapped by layout for coalesced reads as well: NCHW, a
// thread per pixel (a warp = 32 consecutive pixels of one channel); channels-last / [N, D], a group
// of up to 32 lanes per pixel over its contiguous channels, summed with shuffles.
// Labels outside [0, C) other than ignore_index trip a device-side assert (no host sync).
// Summation order depends on atomics: by default the results are not bitwise reproducible on
// CUDA (last-bit differences between runs). Under torch.use_deterministic_algorithms(True) the
// forward uses the ordered kernels instead: every thread owns (pixel segment s, channel d) and
// sums its segment's pixels in index order into per-class accumulators, writing [S, C, D + 1]
// partials (channel D = the counts); a second kernel adds the S partials of each (c, d) in
// segment order. The same inputs then give the same bits on every run (slower: no atomics, fewer
// coalesced reads in NCHW). The backward has no atomics: it is always reproducible.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "class_mean/class_mean_checks.h"
#include "class_mean/class_mean_math.h"
#include "common/cuda_utils.cuh"
#include "common/tensor_utils.h"
#include "common/warp_reduce.cuh"

namespace mona {
namespace {
constexpr int kSeq = 16;  // pixels walked by one thread (per channel) in the forward
constexpr size_t kMaxPartialBytes = 32 * 1024;  // shared memory for block-level partial sums

// Block-level partial sums: a block accumulates into shared memory (cheap shared atomics) and
// adds each nonzero partial to the global accumulator once at the end. Used when the partials fit
// (`partials` true); otherwise run flushes go straight to global memory.
template <typename shared_t, typename acc_t>
__device__ __forceinline__ void flush_run(shared_t shared, acc_t* global, bool partials, int64_t shared_idx,
                                          int64_t global_idx, acc_t value) {
  if (partials) {
    gpuAtomicAdd(shared + shared_idx, value);
  } else {
    gpuAtomicAdd(global + global_idx, value);
  }
}

// Counts: a block takes chunks of blockDim.x * kSeq consecutive labels; thread t walks labels
// t, t + blockDim.x, ... of the chunk (a warp's loads are 32 consecutive labels: coalesced), run-length
// accumulated (neighbouring rows of an image carry the same classes, so the runs stay long).
template <typename index_t, typename acc_t>
__global__ void class_counts_kernel(const index_t* __restrict__ labels, const acc_t* __restrict__ weight, int64_t N,
                                    int64_t C, int64_t ignore_index, bool partials, acc_t* __restrict__ counts) {
  MONA_DYNAMIC_SHARED(acc_t, part);  // [C] when partials
  if (partials) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) part[c] = acc_t(0);
    __syncthreads();
  }
  const int64_t chunk = static_cast<int64_t>(blockDim.x) * kSeq;
  for (int64_t start = blockIdx.x * chunk; start < N; start += static_cast<int64_t>(gridDim.x) * chunk) {
    int64_t run_class = -1;
    acc_t run = 0;
    for (int k = 0; k < kSeq; ++k) {
      const int64_t n = start + static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (n >= N) break;
      const index_t lab = labels[n];
      CUDA_KERNEL_ASSERT(!class_mean_math::is_bad(lab, C, ignore_index) &&
                         "class_mean: label outside [0, num_classes) and not ignore_index");
      if (!class_mean_math::is_valid(lab, C)) continue;
      if (lab != run_class) {
        if (run_class >= 0) flush_run(part, counts, partials, run_class, run_class, run);
        run_class = lab;
        run = 0;
      }
      run += weight ? weight[n] : acc_t(1);
    }
    if (run_class >= 0) flush_run(part, counts, partials, run_class, run_class, run);
  }
  if (partials) {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      if (part[c] != acc_t(0)) gpuAtomicAdd(&counts[c], part[c]);
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelsFastest>
__global__ void class_sums_kernel(PixelView<const scalar_t> f, const index_t* __restrict__ labels,
                                  const at::opmath_type<scalar_t>* __restrict__ weight, int64_t C, bool partials,
                                  at::opmath_type<scalar_t>* __restrict__ sums) {
  using acc_t = at::opmath_type<scalar_t>;
  // Work unit: (image b, pixel chunk, channel group). Chunk = kSeq * pixels_per_block_row pixels.
  const int64_t lanes = kChannelsFastest ? blockDim.x : 1;               // channels per block
  const int64_t pix_lanes = kChannelsFastest ? blockDim.y : blockDim.x;  // parallel pixel sequences
  const int64_t lane = kChannelsFastest ? threadIdx.x : 0;
  const int64_t tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;
  MONA_DYNAMIC_SHARED(acc_t, part);  // [C, lanes] when partials
  const int64_t chunk = pix_lanes * kSeq;
  const int64_t chunks_per_image = (f.P + chunk - 1) / chunk;
  const int64_t d_groups = kChannelsFastest ? (f.D + lanes - 1) / lanes : f.D;
  for (int64_t dg = blockIdx.y; dg < d_groups; dg += gridDim.y) {  // uniform across the block
    if (partials) {
      for (int64_t i = tid; i < C * lanes; i += nthreads) part[i] = acc_t(0);
      __syncthreads();
    }
    const int64_t d = kChannelsFastest ? dg * lanes + lane : dg;
    if (d < f.D) {
      for (int64_t unit = blockIdx.x; unit < f.B * chunks_per_image; unit += gridDim.x) {
        const int64_t b = unit / chunks_per_image;
        const int64_t p0 = (unit - b * chunks_per_image) * chunk;
        const scalar_t* row = f.data + b * f.stride_b + d * f.stride_d;
        const index_t* lab_row = labels + b * f.P;
        const acc_t* w_row = weight ? weight + b * f.P : nullptr;
        int64_t run_class = -1;
        acc_t run = 0;
        for (int k = 0; k < kSeq; ++k) {
          // NCHW: a warp's lanes are consecutive pixels. Channels-last: a warp walks consecutive pixels.
          const int64_t p = kChannelsFastest ? p0 + threadIdx.y * kSeq + k : p0 + k * pix_lanes + threadIdx.x;
          if (p >= f.P) break;
          const index_t lab = lab_row[p];
          if (!class_mean_math::is_valid(lab, C)) continue;
          if (lab != run_class) {
            if (run_class >= 0) flush_run(part, sums, partials, run_class * lanes + lane, run_class * f.D + d, run);
            run_class = lab;
            run = 0;
          }
          const acc_t w = w_row ? w_row[p] : acc_t(1);
          run += w * static_cast<acc_t>(row[p * f.stride_p]);
        }
        if (run_class >= 0) flush_run(part, sums, partials, run_class * lanes + lane, run_class * f.D + d, run);
      }
    }
    if (partials) {
      __syncthreads();
      for (int64_t i = tid; i < C * lanes; i += nthreads) {
        const int64_t c = i / lanes, dd = kChannelsFastest ? dg * lanes + (i - c * lanes) : dg;
        if (dd < f.D && part[i] != acc_t(0)) gpuAtomicAdd(&sums[c * f.D + dd], part[i]);
      }
      // No barrier before the next channel group: its zeroing loop gives each thread the same
      // partials (i = tid, tid + nthreads, ...) that this thread just read, and the barrier after
      // the zeroing orders them before any other thread's atomics (race detector: no crossing).
    }
  }
}

// Deterministic forward, pass 1: thread (segment s, channel d <= D) -> partial[s, c, d] for every
// class c (d == D: the sum of weights). Classes are handled kClassGroup at a time (the accumulators
// live in registers / local memory), re-reading the segment for each group when C is larger.
constexpr int kClassGroup = 16;
template <typename scalar_t, typename index_t>
__global__ void class_sums_ordered_kernel(PixelView<const scalar_t> f, const index_t* __restrict__ labels,
                                          const at::opmath_type<scalar_t>* __restrict__ weight, int64_t C,
                                          int64_t ignore_index, int64_t seg_len, int64_t S,
                                          at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f.num_pixels(), width = f.D + 1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < S * width;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = i / width, d = i - s * width;
    const int64_t n0 = s * seg_len, n1 = n0 + seg_len < N ? n0 + seg_len : N;
    for (int64_t c0 = 0; c0 < C; c0 += kClassGroup) {
      acc_t acc[kClassGroup];
      for (int j = 0; j < kClassGroup; ++j) acc[j] = acc_t(0);
      for (int64_t n = n0; n < n1; ++n) {
        const index_t lab = labels[n];
        CUDA_KERNEL_ASSERT(!class_mean_math::is_bad(lab, C, ignore_index) &&
                           "class_mean: label outside [0, num_classes) and not ignore_index");
        const int64_t j = static_cast<int64_t>(lab) - c0;
        if (!class_mean_math::is_valid(lab, C) || j < 0 || j >= kClassGroup) continue;
        const acc_t w = weight ? weight[n] : acc_t(1);
        acc[j] += d < f.D ? w * static_cast<acc_t>(f.at(n, d)) : w;
      }
      for (int j = 0; j < kClassGroup && c0 + j < C; ++j) partial[(s * C + c0 + j) * width + d] = acc[j];
    }
  }
}

// Deterministic forward, pass 2: sums[c, d] (counts[c] for d == D) = sum over s in order.
template <typename acc_t>
__global__ void class_sums_ordered_reduce_kernel(const acc_t* __restrict__ partial, int64_t S, int64_t C, int64_t D,
                                                 acc_t* __restrict__ sums, acc_t* __restrict__ counts) {
  const int64_t width = D + 1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < C * width;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i / width, d = i - c * width;
    acc_t total = 0;
    for (int64_t s = 0; s < S; ++s) total += partial[(s * C + c) * width + d];
    if (d < D) {
      sums[c * D + d] = total;
    } else {
      counts[c] = total;
    }
  }
}

template <typename scalar_t>
__global__ void class_mean_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ sums,
                                           const at::opmath_type<scalar_t>* __restrict__ counts, int64_t C, int64_t D,
                                           scalar_t* __restrict__ means) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < C * D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    means[i] = static_cast<scalar_t>(class_mean_math::finalize(sums[i], counts[i / D]));
  }
}

template <typename scalar_t, typename index_t, bool kChannelsFastest>
__global__ void class_mean_grad_features_kernel(PixelView<scalar_t> gf, const index_t* __restrict__ labels,
                                                const at::opmath_type<scalar_t>* __restrict__ weight, int64_t C,
                                                const at::opmath_type<scalar_t>* __restrict__ grad_means,
                                                const at::opmath_type<scalar_t>* __restrict__ counts) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = gf.B * gf.D * gf.P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, d;  // decompose i in the gradient's storage order
    if (kChannelsFastest) {
      d = i % gf.D;
      n = i / gf.D;
    } else {
      const int64_t p = i % gf.P, bd = i / gf.P;
      d = bd % gf.D;
      n = (bd / gf.D) * gf.P + p;
    }
    const index_t lab = labels[n];
    acc_t g = 0;
    if (class_mean_math::is_valid(lab, C)) {
      g = class_mean_math::grad_feature(weight ? weight[n] : acc_t(1), grad_means[lab * gf.D + d],
                                        class_mean_math::inverse_count(counts[lab]));
    }
    gf.at(n, d) = static_cast<scalar_t>(g);
  }
}

// Weight gradient, pixels fastest (NCHW): a thread per pixel sums over the channels; a warp's 32
// lanes read 32 consecutive pixels of one channel at every step (coalesced).
template <typename scalar_t, typename index_t>
__global__ void class_mean_grad_weight_kernel(PixelView<const scalar_t> f, const index_t* __restrict__ labels,
                                              int64_t C, const at::opmath_type<scalar_t>* __restrict__ grad_means,
                                              const at::opmath_type<scalar_t>* __restrict__ grad_counts,
                                              const at::opmath_type<scalar_t>* __restrict__ means,
                                              const at::opmath_type<scalar_t>* __restrict__ counts,
                                              at::opmath_type<scalar_t>* __restrict__ grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < f.num_pixels();
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const index_t lab = labels[n];
    acc_t g = 0;
    if (class_mean_math::is_valid(lab, C)) {
      const acc_t inv = class_mean_math::inverse_count(counts[lab]);
      for (int64_t d = 0; d < f.D; ++d) {
        g += class_mean_math::grad_weight_term(grad_means[lab * f.D + d], static_cast<acc_t>(f.at(n, d)),
                                               means[lab * f.D + d], inv);
      }
      g += grad_counts[lab];
    }
    grad_weight[n] = g;
  }
}

// Lanes per pixel of the channels-fastest weight gradient: the power of two >= D, at most 32.
inline int grad_weight_group(int64_t D) {
  int g = 1;
  while (g < 32 && g < D) g <<= 1;
  return g;
}

// Weight gradient, channels fastest (channels-last maps, [N, D]): a group of `group` lanes
// (grad_weight_group(D); 32 / group pixels per warp) per pixel, lane r of the group reading channels
// r, r + group, ... of its pixel, so a warp's loads are 32 consecutive values of consecutive pixels
// (coalesced; a thread per pixel would read D-strided). The group sums with butterfly shuffles (a
// fixed order: reproducible). The loop bound is uniform across the block, so every lane reaches
// every shuffle; lanes past the last pixel add zeros.
template <typename scalar_t, typename index_t>
__global__ void class_mean_grad_weight_channels_last_kernel(PixelView<const scalar_t> f,
                                                            const index_t* __restrict__ labels, int64_t C, int group,
                                                            const at::opmath_type<scalar_t>* __restrict__ grad_means,
                                                            const at::opmath_type<scalar_t>* __restrict__ grad_counts,
                                                            const at::opmath_type<scalar_t>* __restrict__ means,
                                                            const at::opmath_type<scalar_t>* __restrict__ counts,
                                                            at::opmath_type<scalar_t>* __restrict__ grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = f.num_pixels(), per_block = blockDim.x / group;
  const int r = threadIdx.x & (group - 1);
  for (int64_t base = blockIdx.x * per_block; base < N; base += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t n = base + threadIdx.x / group;
    const index_t lab = n < N ? labels[n] : index_t(-1);
    const bool valid = class_mean_math::is_valid(lab, C);
    acc_t g = 0;
    if (valid) {
      const acc_t inv = class_mean_math::inverse_count(counts[lab]);
      const scalar_t* px = &f.at(n, 0);
      for (int64_t d = r; d < f.D; d += group) {
        g += class_mean_math::grad_weight_term(grad_means[lab * f.D + d], static_cast<acc_t>(px[d]),
                                               means[lab * f.D + d], inv);
      }
    }
    g = cuda::group_sum(g, group);
    if (r == 0 && n < N) grad_weight[n] = valid ? g + grad_counts[lab] : acc_t(0);
  }
}

std::tuple<at::Tensor, at::Tensor> class_mean_cuda(const at::Tensor& features, const at::Tensor& labels,
                                                   int64_t num_classes, const std::optional<at::Tensor>& weight,
                                                   int64_t ignore_index) {
  class_mean_checks::check_inputs("class_mean", features, labels, weight, num_classes);
  const cuda::DeviceGuard guard("class_mean", {{"features", features}, {"labels", labels}, {"weight", weight}});
  const at::Tensor f = view_features(features);
  const at::Tensor lab = labels.contiguous();
  const auto acc = acc_dtype(features.scalar_type());
  const at::Tensor w = weight.has_value() ? weight->to(acc).contiguous() : at::Tensor();
  const int64_t D = features.size(1), N = lab.numel();
  at::Tensor counts = at::zeros({num_classes}, features.options().dtype(acc));
  at::Tensor means = at::zeros({num_classes, D}, features.options());
  if (N == 0 || D == 0) return {means, counts};
  at::Tensor sums = at::zeros({num_classes, D}, features.options().dtype(acc));
  const auto stream = cuda::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_mean_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_mean_cuda_labels", [&] {
      const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
      if (at::globalContext().deterministicAlgorithms()) {
        // Segments of >= 256 pixels, at most 1024 of them: S * (D + 1) threads, S partials per output.
        const int64_t S = std::min<int64_t>(1024, (N + 255) / 256), seg_len = (N + S - 1) / S;
        at::Tensor partial = at::empty({S, num_classes, D + 1}, features.options().dtype(acc));
        cuda::launch<class_sums_ordered_kernel<scalar_t, index_t>>(
            cuda::blocks_for(S * (D + 1)), cuda::kThreads, 0, stream, make_pixel_view<const scalar_t>(f),
            lab.data_ptr<index_t>(), wp, num_classes, ignore_index, seg_len, S, partial.data_ptr<acc_t>());
        cuda::launch<class_sums_ordered_reduce_kernel<acc_t>>(cuda::blocks_for(num_classes * (D + 1)), cuda::kThreads,
                                                              0, stream, partial.data_ptr<acc_t>(), S, num_classes, D,
                                                              sums.data_ptr<acc_t>(), counts.data_ptr<acc_t>());
        cuda::launch<class_mean_finalize_kernel<scalar_t>>(cuda::blocks_for(num_classes * D), cuda::kThreads, 0, stream,
                                                           sums.data_ptr<acc_t>(), counts.data_ptr<acc_t>(),
                                                           num_classes, D, means.data_ptr<scalar_t>());
        return;
      }
      const size_t count_smem = sizeof(acc_t) * num_classes;
      const bool count_partials = count_smem <= kMaxPartialBytes;
      cuda::launch<class_counts_kernel<index_t, acc_t>>(
          cuda::blocks_for((N + kSeq - 1) / kSeq), cuda::kThreads, count_partials ? count_smem : 0, stream,
          lab.data_ptr<index_t>(), wp, N, num_classes, ignore_index, count_partials, counts.data_ptr<acc_t>());
      const auto view = make_pixel_view<const scalar_t>(f);
      if (view.channels_fastest()) {
        const dim3 block(32, cuda::kThreads / 32);
        const int64_t chunks = view.B * ((view.P + block.y * kSeq - 1) / (block.y * kSeq));
        const dim3 grid(std::min<int64_t>(chunks, 65535), std::min<int64_t>((D + 31) / 32, 65535));
        const size_t smem = sizeof(acc_t) * num_classes * 32;
        const bool partials = smem <= kMaxPartialBytes;
        cuda::launch<class_sums_kernel<scalar_t, index_t, true>>(grid, block, partials ? smem : 0, stream, view,
                                                                 lab.data_ptr<index_t>(), wp, num_classes, partials,
                                                                 sums.data_ptr<acc_t>());
      } else {
        const int64_t chunks = view.B * ((view.P + cuda::kThreads * kSeq - 1) / (cuda::kThreads * kSeq));
        const dim3 grid(std::min<int64_t>(chunks, 65535), std::min<int64_t>(D, 65535));
        const size_t smem = sizeof(acc_t) * num_classes;
        const bool partials = smem <= kMaxPartialBytes;
        cuda::launch<class_sums_kernel<scalar_t, index_t, false>>(grid, cuda::kThreads, partials ? smem : 0, stream,
                                                                  view, lab.data_ptr<index_t>(), wp, num_classes,
                                                                  partials, sums.data_ptr<acc_t>());
      }
      cuda::launch<class_mean_finalize_kernel<scalar_t>>(cuda::blocks_for(num_classes * D), cuda::kThreads, 0, stream,
                                                         sums.data_ptr<acc_t>(), counts.data_ptr<acc_t>(), num_classes,
                                                         D, means.data_ptr<scalar_t>());
    });
  });
  return {means, counts};
}

std::tuple<at::Tensor, at::Tensor> class_mean_backward_cuda(const at::Tensor& grad_means, const at::Tensor& grad_counts,
                                                            const at::Tensor& features, const at::Tensor& labels,
                                                            const std::optional<at::Tensor>& weight,
                                                            const at::Tensor& means, const at::Tensor& counts,
                                                            int64_t ignore_index, bool weight_requires_grad) {
  const int64_t C = means.size(0);
  const cuda::DeviceGuard guard("class_mean_backward", {{"features", features},
                                                        {"grad_means", grad_means},
                                                        {"grad_counts", grad_counts},
                                                        {"labels", labels},
                                                        {"weight", weight},
                                                        {"means", means},
                                                        {"counts", counts}});
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
  at::Tensor grad_weight = at::zeros({weight_requires_grad ? lab.numel() : 0}, features.options().dtype(acc));
  const int64_t N = lab.numel(), D = features.size(1);
  if (N > 0 && D > 0) {
    const auto stream = cuda::stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_mean_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "class_mean_backward_cuda_labels", [&] {
        const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
        const auto gview = make_pixel_view<scalar_t>(grad_features);
        const unsigned int blocks = cuda::blocks_for(N * D);
        if (gview.channels_fastest()) {
          cuda::launch<class_mean_grad_features_kernel<scalar_t, index_t, true>>(
              blocks, cuda::kThreads, 0, stream, gview, lab.data_ptr<index_t>(), wp, C, gm.data_ptr<acc_t>(),
              cnt.data_ptr<acc_t>());
        } else {
          cuda::launch<class_mean_grad_features_kernel<scalar_t, index_t, false>>(
              blocks, cuda::kThreads, 0, stream, gview, lab.data_ptr<index_t>(), wp, C, gm.data_ptr<acc_t>(),
              cnt.data_ptr<acc_t>());
        }
        if (weight_requires_grad) {
          const auto view = make_pixel_view<const scalar_t>(f);
          if (view.channels_fastest()) {
            const int group = grad_weight_group(D);
            cuda::launch<class_mean_grad_weight_channels_last_kernel<scalar_t, index_t>>(
                cuda::blocks_for(N, cuda::kThreads / group), cuda::kThreads, 0, stream, view, lab.data_ptr<index_t>(),
                C, group, gm.data_ptr<acc_t>(), gc.data_ptr<acc_t>(), mu.data_ptr<acc_t>(), cnt.data_ptr<acc_t>(),
                grad_weight.data_ptr<acc_t>());
          } else {
            cuda::launch<class_mean_grad_weight_kernel<scalar_t, index_t>>(
                cuda::blocks_for(N), cuda::kThreads, 0, stream, view, lab.data_ptr<index_t>(), C, gm.data_ptr<acc_t>(),
                gc.data_ptr<acc_t>(), mu.data_ptr<acc_t>(), cnt.data_ptr<acc_t>(), grad_weight.data_ptr<acc_t>());
          }
        }
      });
    });
  }
  if (weight_requires_grad) grad_weight = grad_weight.view(labels.sizes()).to(weight->scalar_type());
  return {grad_features, grad_weight};
}

}  // namespace

MONA_REGISTER_CUDA_KERNELS(m) {
  m.impl("class_mean", &class_mean_cuda);
  m.impl("class_mean_backward", &class_mean_backward_cuda);
}

}  // namespace mona
