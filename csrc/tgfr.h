// The four entry points of the fused ops, declared once (TGFR_FUSED_OPS) for the validating
// entry points of tgfr_api.cpp (namespace tgfr: what Python and the C++ tests call) and for
// the per-device kernels behind them (tgfr::cpu, tgfr::cuda; cpu/ and cuda/ hold one file per op).
//
// Conventions shared by every kernel (the Python side: tgfr/ops/backends.py):
//   words [B_t, T, D], regions [B_v, N, D], word_mask [B_t, T] bool, all contiguous;
//   scores [B_v, B_t] (rows images, columns captions);
//   a [B, D], b [M, D] with offset + B <= M: the positive of row i of a is row offset + i
//   of b; temperature 0-d in the accumulation dtype (accumulation.h); class_ids [M] int64,
//   the identities of b's rows (row i of a has class_ids[offset + i]; distinct ids mean
//   "no masking"); lse_rows [B] and lse_cols [B] (symmetric) or [0] (one-directional),
//   in the accumulation dtype; input gradients in the inputs' dtypes.
// The entry points of namespace tgfr also return scores and take grad_scores in the
// accumulation dtype (tgfr_api.cpp adapts the kernels, which use the input dtype for both).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#define TGFR_FUSED_OPS                                                                           \
  at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,     \
                                        const at::Tensor& word_mask, double gamma1,             \
                                        double gamma2, double eps);                             \
  std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(                               \
      const at::Tensor& grad_scores, const at::Tensor& words, const at::Tensor& regions,        \
      const at::Tensor& word_mask, double gamma1, double gamma2, double eps);                   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(                              \
      const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,                  \
      const at::Tensor& class_ids, int64_t offset, bool symmetric);                             \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(                             \
      const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b,                    \
      const at::Tensor& temperature, const at::Tensor& class_ids, const at::Tensor& lse_rows,   \
      const at::Tensor& lse_cols, int64_t offset, bool symmetric);

namespace tgfr {

TGFR_FUSED_OPS
bool built_with_cuda();

namespace cpu {
TGFR_FUSED_OPS
}  // namespace cpu

#ifdef TGFR_WITH_CUDA
namespace cuda {
TGFR_FUSED_OPS
}  // namespace cuda
#endif

}  // namespace tgfr
