#include "contrast_infonce/contrast_infonce_host.h"

#include "common/tensor_utils.h"
#include "contrast_infonce/contrast_infonce_checks.h"

namespace mona {

InfonceArgs prepare_infonce(const char* op, const at::Tensor& features, const at::Tensor& key_features,
                            const std::optional<at::Tensor>& bank, const at::Tensor& prototypes,
                            const at::Tensor& query_index, const at::Tensor& negative_index,
                            const at::Tensor& class_weight, double temperature) {
  contrast_infonce_checks::check_inputs(op, features, key_features, bank, prototypes, query_index, negative_index,
                                        class_weight, temperature);
  const int64_t D = features.size(1);
  // N: the key map's pixels (negative_index < N reads the map, >= N the bank)
  const int64_t N = key_features.dim() == 4 ? key_features.size(0) * key_features.size(2) * key_features.size(3)
                                            : key_features.size(0);
  const int64_t C = prototypes.size(0);
  const int64_t K = bank.has_value() ? bank->size(1) : 0;
  const auto acc = acc_dtype(features.scalar_type());
  return {view_features(features),
          view_features(key_features),
          bank.has_value() ? bank->contiguous() : at::Tensor(),
          prototypes.to(acc).contiguous(),
          query_index.contiguous(),
          negative_index.contiguous(),
          class_weight.to(acc).contiguous(),
          C,
          query_index.size(1),
          negative_index.size(2),
          D,
          N,
          K,
          temperature};
}

at::Tensor reduce_infonce_loss(const at::Tensor& row_loss, const at::Tensor& class_weight, int64_t Q) {
  return row_loss.view({class_weight.size(0), Q}).mul(class_weight.unsqueeze(1)).sum().div(static_cast<double>(Q));
}

}  // namespace mona
