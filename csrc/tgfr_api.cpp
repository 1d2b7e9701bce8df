// Argument checks with messages that name the argument, then dispatch by device.
// The kernels behind this file may assume everything checked here.
#include "tgfr.h"

#include "accumulation.h"

#include <c10/util/Exception.h>

namespace tgfr {
namespace {

void check_float(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.sizes());
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got ", t.sizes());
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              name, " must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

void check_word_region(const at::Tensor& words, const at::Tensor& regions, const at::Tensor& word_mask) {
  check_float(words, "words", 3);
  check_float(regions, "regions", 3);
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
}

// a [B, D], b [M, D], offset + B <= M, class_ids [M] (see tgfr.h).
void check_info_nce(const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
                    const at::Tensor& class_ids, int64_t offset) {
  check_float(a, "a", 2);
  check_float(b, "b", 2);
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

[[noreturn]] void no_kernel(const at::Tensor& t) {
  TORCH_CHECK(false, "tgfr._C has no kernel for tensors on ", t.device(),
              t.is_cuda() ? " (built without CUDA)" : "");
}

}  // namespace

bool built_with_cuda() {
#ifdef TGFR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,
                                      const at::Tensor& word_mask, double gamma1, double gamma2,
                                      double eps) {
  check_word_region(words, regions, word_mask);
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  if (words.is_cpu()) return cpu::word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps);
#ifdef TGFR_WITH_CUDA
  if (words.is_cuda()) return cuda::word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps);
#endif
  no_kernel(words);
}

std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(
    const at::Tensor& grad_scores, const at::Tensor& words, const at::Tensor& regions,
    const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  check_word_region(words, regions, word_mask);
  TORCH_CHECK(grad_scores.defined() && grad_scores.dim() == 2 && grad_scores.size(0) == regions.size(0) &&
                  grad_scores.size(1) == words.size(0),
              "grad_scores must have shape [B_v, B_t] = [", regions.size(0), ", ", words.size(0), "], got ",
              grad_scores.sizes());
  TORCH_CHECK(grad_scores.scalar_type() == words.scalar_type(), "grad_scores must have the dtype of words");
  TORCH_CHECK(grad_scores.is_contiguous(), "grad_scores must be contiguous");
  check_like(grad_scores, "grad_scores", words, "words");
  if (words.is_cpu())
    return cpu::word_region_scores_backward(grad_scores, words, regions, word_mask, gamma1, gamma2, eps);
#ifdef TGFR_WITH_CUDA
  if (words.is_cuda())
    return cuda::word_region_scores_backward(grad_scores, words, regions, word_mask, gamma1, gamma2, eps);
#endif
  no_kernel(words);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids, int64_t offset,
                                                                bool symmetric) {
  check_info_nce(a, b, temperature, class_ids, offset);
  if (a.is_cpu()) return cpu::info_nce_forward(a, b, temperature, class_ids, offset, symmetric);
#ifdef TGFR_WITH_CUDA
  if (a.is_cuda()) return cuda::info_nce_forward(a, b, temperature, class_ids, offset, symmetric);
#endif
  no_kernel(a);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
    const at::Tensor& class_ids, const at::Tensor& lse_rows, const at::Tensor& lse_cols, int64_t offset,
    bool symmetric) {
  check_info_nce(a, b, temperature, class_ids, offset);
  check_stats(a, lse_rows, lse_cols, symmetric);
  TORCH_CHECK(grad_loss.defined() && grad_loss.numel() == 1, "grad_loss must hold one value");
  check_like(grad_loss, "grad_loss", a, "a");
  if (a.is_cpu())
    return cpu::info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric);
#ifdef TGFR_WITH_CUDA
  if (a.is_cuda())
    return cuda::info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric);
#endif
  no_kernel(a);
}

}  // namespace tgfr
