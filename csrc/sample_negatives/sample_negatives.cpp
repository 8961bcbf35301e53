// mona::sample_negatives — schema. CPU: sample_negatives_cpu.cpp; CUDA: sample_negatives_cuda.cu;
// shared host part (class distribution, class weights): sample_negatives_host.cpp;
// fake kernel: mona_ext/ops/sample_negatives.py; tests: tests/ops/test_sample_negatives.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mona, m) {
  // ReCo/MONA adaptive sampling of queries and negative keys, as indices (no features are copied).
  //   offsets, counts, hard_counts, permutation: the output of class_pools.
  //   prototypes [C, D]: class means of the key features (the class relation graph
  //     G[c, v] = cos(proto_c, proto_v) is built from them).
  //   bank_fill [C] (int64) and bank_size K: a class-aware memory bank [C, K, D] as negative source.
  //   negatives: "batch" | "bank" | "both"; query_mode: "hard" | "all" | "balanced".
  // For each class c with queries: num_queries query pixels drawn uniformly with replacement from
  // its hard (or all / half-hard-half-easy) pixels; for each query num_negatives keys, each drawn by
  // first picking a class v != c with probability softmax_v(G[c, v] / temperature) over the classes
  // that have keys in the chosen source, then a uniform key of class v.
  // Returns query_index [C, Q] (flat pixel index, -1 for a class without queries),
  // negative_index [C, Q, M] (< N: pixel of the key map; >= N: bank row N + v*K + slot; -1 unused)
  // and class_weight [C] (float32: 1 / #classes present in the batch for a class that contributes,
  // 0 otherwise), so that the loss is sum_c class_weight[c] * mean_q loss[c, q].
  m.def(
      "sample_negatives(Tensor offsets, Tensor counts, Tensor hard_counts, Tensor permutation, Tensor prototypes,"
      " int num_queries=256, int num_negatives=512, float temperature=0.5, str negatives=\"batch\","
      " str query_mode=\"hard\", Tensor? bank_fill=None, int bank_size=0, Generator? generator=None)"
      " -> (Tensor query_index, Tensor negative_index, Tensor class_weight)");
}
