// placeholder, replaced by the fused kernel
#include "../tgfr.h"

namespace tgfr::cpu {
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "not implemented"); }
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "not implemented"); }
}
