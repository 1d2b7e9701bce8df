// The validating entry points: argument checks with messages that name the argument, then the
// kernel of the tensors' device. The ops check every argument before they get here, in Python
// (tgfr/ops/word_region.py, tgfr/ops/info_nce.py); these checks are the safety net of a direct
// call of tgfr._C, which must raise on a bad argument, never crash. The kernels behind this file
// may assume everything checked here.
#include "tgfr.h"

#include "accumulation.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace tgfr {
namespace {

void check_device(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cpu() || (t.is_cuda() && built_with_cuda()), name, " is on ", t.device(),
              ": tgfr._C has no kernel for tensors there", t.is_cuda() ? " (built without CUDA)" : "");
}

void check_float(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.sizes());
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got ", t.sizes());
  TORCH_CHECK(is_float_input(t.scalar_type()), name, " must be float16, bfloat16, float32 or float64, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

void check_word_region(const at::Tensor& words, const at::Tensor& regions, const at::Tensor& word_mask,
                       double gamma1, double gamma2, double eps) {
  check_float(words, "words", 3);
  check_float(regions, "regions", 3);
  check_device(words, "words");
  check_like(regions, "regions", words, "words");
  TORCH_CHECK(regions.scalar_type() == words.scalar_type(), "regions has dtype ", regions.scalar_type(),
              " but words has ", words.scalar_type());
  TORCH_CHECK(regions.size(2) == words.size(2), "words [B_t, T, D] and regions [B_v, N, D] must share D, got ",
              words.sizes(), " and ", regions.sizes());
  TORCH_CHECK(word_mask.defined() && word_mask.scalar_type() == at::kBool, "word_mask must be a bool tensor");
  TORCH_CHECK(word_mask.dim() == 2 && word_mask.size(0) == words.size(0) && word_mask.size(1) == words.size(1),
              "word_mask must have shape [B_t, T] = [", words.size(0), ", ", words.size(1), "], got ",
              word_mask.sizes());
  TORCH_CHECK(word_mask.is_contiguous(), "word_mask must be contiguous");
  check_like(word_mask, "word_mask", words, "words");
  TORCH_CHECK(std::isfinite(gamma1), "gamma1 must be finite, got ", gamma1);
  TORCH_CHECK(std::isfinite(gamma2), "gamma2 must be finite, got ", gamma2);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "eps must be positive and finite, got ", eps);
}

// a [B, D], b [M, D], offset + B <= M, class_ids [M] (see tgfr.h).
void check_info_nce(const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
                    const at::Tensor& class_ids, int64_t offset) {
  check_float(a, "a", 2);
  check_float(b, "b", 2);
  check_device(a, "a");
  check_like(b, "b", a, "a");
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), "b has dtype ", b.scalar_type(), " but a has ",
              a.scalar_type());
  TORCH_CHECK(b.size(1) == a.size(1), "a [B, D] and b [M, D] must share D, got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(offset >= 0, "offset must be non-negative, got ", offset);
  TORCH_CHECK(offset + a.size(0) <= b.size(0), "offset + B must be at most M (the positive of row i of a is row ",
              "offset + i of b), got offset ", offset, ", a ", a.sizes(), ", b ", b.sizes());
  TORCH_CHECK(temperature.defined() && temperature.numel() == 1, "temperature must hold one value");
  TORCH_CHECK(temperature.scalar_type() == accumulation_type(a), "temperature must be ",
              accumulation_type(a), " for ", a.scalar_type(), " inputs, got ", temperature.scalar_type());
  check_like(temperature, "temperature", a, "a");
  TORCH_CHECK(class_ids.defined() && class_ids.scalar_type() == at::kLong && class_ids.dim() == 1 &&
                  class_ids.size(0) == b.size(0),
              "class_ids must be an int64 tensor of shape [M] = [", b.size(0), "] (one id per row of b), got ",
              class_ids.sizes(), " ", class_ids.scalar_type());
  TORCH_CHECK(class_ids.is_contiguous(), "class_ids must be contiguous");
  check_like(class_ids, "class_ids", a, "a");
}

// lse_rows [B]; lse_cols [B] when symmetric, [0] otherwise.
void check_stats(const at::Tensor& a, const at::Tensor& lse_rows, const at::Tensor& lse_cols, bool symmetric) {
  const int64_t B = a.size(0);
  for (auto [t, name, size] : {std::tuple{&lse_rows, "lse_rows", B}, std::tuple{&lse_cols, "lse_cols", symmetric ? B : 0}}) {
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == size, name, " must have shape [", size, "]",
                symmetric ? "" : " (symmetric=false)", ", got ", t->defined() ? t->sizes() : at::IntArrayRef{});
    TORCH_CHECK(t->scalar_type() == accumulation_type(a), name, " must be ", accumulation_type(a), ", got ",
                t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
    check_like(*t, name, a, "a");
  }
}

}  // namespace

// The kernel `name` of the device of `tensor` (checked by check_device), called with the arguments that follow.
#ifdef TGFR_WITH_CUDA
#define TGFR_KERNEL(name, tensor, ...) ((tensor).is_cuda() ? cuda::name(__VA_ARGS__) : cpu::name(__VA_ARGS__))
#else
#define TGFR_KERNEL(name, tensor, ...) cpu::name(__VA_ARGS__)
#endif

bool built_with_cuda() {
#ifdef TGFR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The kernels write the scores, and read their gradient, in the input dtype; the contract is
// the accumulation dtype (16-bit scores would round gamma3 * score to a few bits).
at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,
                                      const at::Tensor& word_mask, double gamma1, double gamma2,
                                      double eps) {
  check_word_region(words, regions, word_mask, gamma1, gamma2, eps);
  return TGFR_KERNEL(word_region_scores_forward, words, words, regions, word_mask, gamma1, gamma2, eps)
      .to(accumulation_type(words));
}

std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(
    const at::Tensor& grad_scores, const at::Tensor& words, const at::Tensor& regions,
    const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  check_word_region(words, regions, word_mask, gamma1, gamma2, eps);
  TORCH_CHECK(grad_scores.defined() && grad_scores.dim() == 2 && grad_scores.size(0) == regions.size(0) &&
                  grad_scores.size(1) == words.size(0),
              "grad_scores must have shape [B_v, B_t] = [", regions.size(0), ", ", words.size(0), "], got ",
              grad_scores.sizes());
  TORCH_CHECK(grad_scores.scalar_type() == accumulation_type(words), "grad_scores must be ",
              accumulation_type(words), " for ", words.scalar_type(), " inputs, got ", grad_scores.scalar_type());
  TORCH_CHECK(grad_scores.is_contiguous(), "grad_scores must be contiguous");
  check_like(grad_scores, "grad_scores", words, "words");
  const at::Tensor grad = grad_scores.to(words.scalar_type());
  return TGFR_KERNEL(word_region_scores_backward, words, grad, words, regions, word_mask, gamma1, gamma2, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids, int64_t offset,
                                                                bool symmetric) {
  check_info_nce(a, b, temperature, class_ids, offset);
  return TGFR_KERNEL(info_nce_forward, a, a, b, temperature, class_ids, offset, symmetric);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
    const at::Tensor& class_ids, const at::Tensor& lse_rows, const at::Tensor& lse_cols, int64_t offset,
    bool symmetric) {
  check_info_nce(a, b, temperature, class_ids, offset);
  check_stats(a, lse_rows, lse_cols, symmetric);
  TORCH_CHECK(grad_loss.defined() && grad_loss.numel() == 1, "grad_loss must hold one value");
  check_like(grad_loss, "grad_loss", a, "a");
  return TGFR_KERNEL(info_nce_backward, a, grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset,
                     symmetric);
}

}  // namespace tgfr
