// placeholder, replaced by the fused kernel
#include "../tgfr.h"

namespace tgfr::cpu {
at::Tensor word_region_scores_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double) { TORCH_CHECK(false, "not implemented"); }
std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double) { TORCH_CHECK(false, "not implemented"); }
}
