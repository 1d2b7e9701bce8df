// Fused word-region matching scores on the CPU, forward and backward.
//
// The valid words of all captions are packed into one [W, D] matrix (padding never enters
// a product) and the captions grouped into blocks of about kBlockRows words. The unit of
// work is one (image, caption block) tile: its products are GEMMs with M = the block's
// words, written into per-thread buffers, and its softmaxes and cosines are loops over those
// buffers. Nothing of size B_v*B_t*T*N is ever allocated; the backward recomputes each
// tile's forward. The attended region features C = A R are never formed: everything the
// cosines and their gradients need from C goes through the image's Gram matrix G = R R^T
// ([N, N], computed once per image), which makes those products N/D as large and saves the
// backward's dA = dC R^T product altogether (see backward_tile). In the backward an item is a
// whole image, so one thread alone writes its region gradient; its share of the word gradient
// is a partial result, folded into the total in image order (parallel.h: for_each_item_in_order).
// Threads: see parallel.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../tgfr.h"
#include "array_ops.h"
#include "parallel.h"

namespace tgfr::cpu {
namespace {

// Words per tile: the tile's [rows, N] and [rows, D] buffers then stay in a 1-2 MB L2.
constexpr int64_t kBlockRows = 256;

struct PackedCaptions {
  at::Tensor words;                  // [valid words, D] in the accumulation dtype
  at::Tensor word_index;             // [valid words]: row of each in words.view(B_t * T, D)
  bool all_valid = true;             // word_index is then 0, 1, 2, ...
  std::vector<int64_t> first_row;    // caption k owns packed rows [first_row[k], first_row[k + 1])
  std::vector<int64_t> block_start;  // block b holds captions [block_start[b], block_start[b + 1])
  int64_t max_block_rows = 0;
};

PackedCaptions pack_captions(const at::Tensor& words, const at::Tensor& word_mask) {
  const int64_t B_t = words.size(0), T = words.size(1), D = words.size(2);
  PackedCaptions packed;
  const bool* mask = word_mask.data_ptr<bool>();
  packed.first_row.assign(B_t + 1, 0);
  for (int64_t k = 0; k < B_t; ++k) {
    int64_t count = 0;
    for (int64_t t = 0; t < T; ++t) count += mask[k * T + t];
    packed.first_row[k + 1] = packed.first_row[k] + count;
  }
  packed.all_valid = packed.first_row[B_t] == B_t * T;
  auto flat_words = words.reshape({B_t * T, D}).to(accumulation_type(words));
  if (packed.all_valid) {
    packed.words = flat_words.contiguous();
  } else {
    packed.word_index = word_mask.reshape({-1}).nonzero().squeeze(1);
    packed.words = flat_words.index_select(0, packed.word_index);
  }
  packed.block_start.push_back(0);
  for (int64_t k = 0; k < B_t; ++k) {
    const int64_t block_rows = packed.first_row[k + 1] - packed.first_row[packed.block_start.back()];
    if (block_rows > kBlockRows && k > packed.block_start.back()) packed.block_start.push_back(k);
  }
  packed.block_start.push_back(B_t);
  for (size_t b = 0; b + 1 < packed.block_start.size(); ++b) {
    const int64_t rows = packed.first_row[packed.block_start[b + 1]] - packed.first_row[packed.block_start[b]];
    packed.max_block_rows = std::max(packed.max_block_rows, rows);
  }
  return packed;
}

template <typename scalar_t>
struct Problem {
  const PackedCaptions& packed;
  at::Tensor regions;               // [B_v, N, D] in the accumulation dtype
  at::Tensor grams;                 // [B_v, N, N]: G = R R^T of every image
  std::vector<scalar_t> word_norm;  // |w| of every packed word
  int64_t N, D;
  scalar_t gamma1, gamma2, eps;
};

// One thread's buffers for a tile of up to max_block_rows words against one image.
template <typename scalar_t>
struct TileBuffers {
  at::Tensor logits;          // [rows, N]: S = W R^T
  at::Tensor prob;            // [rows, N]: P (eq. 3)
  at::Tensor attention;       // [rows, N]: A (eq. 4)
  at::Tensor attention_gram;  // [rows, N]: H = A G, then diag(beta) A in the backward
  at::Tensor grad_logits;     // [rows, N], backward only: dA, then dP, then dS, then dS + diag(alpha) A
  at::Tensor region_gram_grad;  // [N, N], backward only: sum over the image's tiles of A^T diag(beta) A
  std::vector<scalar_t> column;  // [N]: a per-caption column statistic
  std::vector<scalar_t> cosine;  // [rows]
  std::vector<scalar_t> context_norm;
  std::vector<scalar_t> grad_cross, grad_context;  // [rows], backward only: alpha and beta below
  std::vector<scalar_t> image_scores;              // [B_t]: one image's scores, recomputed in the backward

  TileBuffers(const Problem<scalar_t>& problem, bool backward) {
    const int64_t rows = problem.packed.max_block_rows, N = problem.N;
    const auto options = problem.packed.words.options();
    for (at::Tensor* buffer : {&logits, &prob, &attention, &attention_gram}) *buffer = at::empty({rows, N}, options);
    column.resize(N);
    cosine.resize(rows);
    context_norm.resize(rows);
    if (backward) {
      grad_logits = at::empty({rows, N}, options);
      region_gram_grad = at::empty({N, N}, options);
      grad_cross.resize(rows);
      grad_context.resize(rows);
      image_scores.resize(problem.packed.first_row.size() - 1);
    }
  }
};

// Caption block b against one image: fills the buffers and writes the score of every
// caption k of the block to image_scores[k]. The context vectors C = A R are never formed:
// <w_t, c_t> = sum_j A_tj S_tj and |c_t|^2 = sum_j A_tj (A G)_tj, and A G costs N/D of A R.
template <typename scalar_t>
void forward_tile(const Problem<scalar_t>& problem, TileBuffers<scalar_t>& buf, int64_t image, int64_t block,
                  scalar_t* image_scores) {
  const auto& packed = problem.packed;
  const int64_t N = problem.N;
  const int64_t k0 = packed.block_start[block], k1 = packed.block_start[block + 1];
  const int64_t r0 = packed.first_row[k0], rows = packed.first_row[k1] - r0;
  at::Tensor logits = buf.logits.narrow(0, 0, rows);
  at::Tensor prob = buf.prob.narrow(0, 0, rows);
  at::Tensor attention = buf.attention.narrow(0, 0, rows);
  at::Tensor attention_gram = buf.attention_gram.narrow(0, 0, rows);
  const scalar_t* s = logits.data_ptr<scalar_t>();
  scalar_t* p = prob.data_ptr<scalar_t>();
  scalar_t* a = attention.data_ptr<scalar_t>();
  const scalar_t* h = attention_gram.data_ptr<scalar_t>();
  scalar_t* column = buf.column.data();

  at::mm_out(logits, packed.words.narrow(0, r0, rows), problem.regions[image].t());
  // eq. 3: every region normalised over the caption's words (a softmax down each column)
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t offset = (packed.first_row[k] - r0) * N;
    const int64_t n_words = packed.first_row[k + 1] - packed.first_row[k];
    const scalar_t* sk = s + offset;
    scalar_t* pk = p + offset;
    std::copy(sk, sk + N, column);
    for (int64_t t = 1; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) column[j] = max_of(column[j], sk[t * N + j]);
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) pk[t * N + j] = max_of(sk[t * N + j] - column[j], kExpFloor<scalar_t>);
  }
  prob.exp_();
  for (int64_t k = k0; k < k1; ++k) {
    scalar_t* pk = p + (packed.first_row[k] - r0) * N;
    const int64_t n_words = packed.first_row[k + 1] - packed.first_row[k];
    std::fill(column, column + N, scalar_t(0));
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) column[j] += pk[t * N + j];
    for (int64_t j = 0; j < N; ++j) column[j] = scalar_t(1) / column[j];
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) pk[t * N + j] *= column[j];
  }
  // eq. 4: every word attends over the regions (a softmax along each row of gamma1 * P)
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* pr = p + r * N;
    scalar_t* ar = a + r * N;
    for (int64_t j = 0; j < N; ++j) ar[j] = problem.gamma1 * pr[j];
    const scalar_t shift = array_max(ar, N);
    for (int64_t j = 0; j < N; ++j) ar[j] = max_of(ar[j] - shift, kExpFloor<scalar_t>);
  }
  attention.exp_();
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* ar = a + r * N;
    const scalar_t inv_sum = scalar_t(1) / array_sum(ar, N);
    for (int64_t j = 0; j < N; ++j) ar[j] *= inv_sum;
  }
  at::mm_out(attention_gram, attention, problem.grams[image]);
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* ar = a + r * N;
    // rounding can leave A G A^T a hair below 0 where C = A R vanishes
    const scalar_t context_norm = std::sqrt(max_of(array_dot(ar, h + r * N, N), scalar_t(0)));
    const scalar_t norms = problem.word_norm[r0 + r] * context_norm;
    buf.cosine[r] = array_dot(ar, s + r * N, N) / max_of(norms, problem.eps);
    buf.context_norm[r] = context_norm;
  }
  // eq. 5: log-sum-exp of gamma2 * cos over the caption's words (-inf for a caption without
  // words, the log-sum-exp of an empty set; such a caption has no rows, so no gradient either)
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t begin = packed.first_row[k] - r0, end = packed.first_row[k + 1] - r0;
    scalar_t shift = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t r = begin; r < end; ++r) shift = max_of(shift, problem.gamma2 * buf.cosine[r]);
    scalar_t sum = 0;
    for (int64_t r = begin; r < end; ++r) sum += std::exp(problem.gamma2 * buf.cosine[r] - shift);
    image_scores[k] = shift + std::log(sum);
  }
}

// Backward of the tile forward_tile just filled: adds the tile's share to grad_region [N, D]
// (all but the part through |c|, which buf.region_gram_grad collects for the whole image), and
// writes the image's share of the gradient of the block's words into their rows of grad_words
// [valid words, D].
//
// With dcos_t from eq. 5, alpha_t = dcos_t / (|w_t||c_t|), beta_t = dcos_t cos_t / |c_t|^2 and
// delta_t = dcos_t cos_t / |w_t|^2 (alpha_t = dcos_t / eps, beta_t = delta_t = 0 where the eps
// clamp is active): dc_t = alpha_t w_t - beta_t c_t and dw_t = alpha_t c_t - delta_t w_t
// directly. Through C = A R and S = W R^T, with E = dS + diag(alpha) A:
//   dA = diag(alpha) S - diag(beta) A G,   dW += E R - diag(delta) W,
//   dR += E^T W - (A^T diag(beta) A) R.
template <typename scalar_t>
void backward_tile(const Problem<scalar_t>& problem, TileBuffers<scalar_t>& buf, int64_t image, int64_t block,
                   const scalar_t* image_scores, const scalar_t* image_grad_scores, const at::Tensor& grad_region,
                   const at::Tensor& grad_words) {
  const auto& packed = problem.packed;
  const int64_t N = problem.N, D = problem.D;
  const int64_t k0 = packed.block_start[block], k1 = packed.block_start[block + 1];
  const int64_t r0 = packed.first_row[k0], rows = packed.first_row[k1] - r0;
  const at::Tensor words = packed.words.narrow(0, r0, rows);
  const at::Tensor attention = buf.attention.narrow(0, 0, rows);
  const at::Tensor weighted_attention = buf.attention_gram.narrow(0, 0, rows);
  const at::Tensor grad_logits = buf.grad_logits.narrow(0, 0, rows);
  const at::Tensor tile_grad_words = grad_words.narrow(0, r0, rows);
  const scalar_t* s = buf.logits.template data_ptr<scalar_t>();
  const scalar_t* p = buf.prob.template data_ptr<scalar_t>();
  const scalar_t* a = attention.data_ptr<scalar_t>();
  scalar_t* h = weighted_attention.data_ptr<scalar_t>();
  const scalar_t* w = words.data_ptr<scalar_t>();
  scalar_t* ds = grad_logits.data_ptr<scalar_t>();
  scalar_t* dw = tile_grad_words.data_ptr<scalar_t>();
  scalar_t* column = buf.column.data();

  // through eq. 5 and the cosine
  for (int64_t k = k0; k < k1; ++k) {
    const scalar_t grad_cos_scale = image_grad_scores[k] * problem.gamma2;
    for (int64_t r = packed.first_row[k] - r0; r < packed.first_row[k + 1] - r0; ++r) {
      const scalar_t cosine = buf.cosine[r];
      const scalar_t grad_cos = grad_cos_scale * std::exp(problem.gamma2 * cosine - image_scores[k]);
      const scalar_t word_norm = problem.word_norm[r0 + r], context_norm = buf.context_norm[r];
      const scalar_t norms = word_norm * context_norm;
      if (norms >= problem.eps) {
        buf.grad_cross[r] = grad_cos / norms;
        buf.grad_context[r] = grad_cos * cosine / (context_norm * context_norm);
        const scalar_t grad_word = grad_cos * cosine / (word_norm * word_norm);
        for (int64_t d = 0; d < D; ++d) dw[r * D + d] = -grad_word * w[r * D + d];
      } else {  // the clamp max(|w||c|, eps) is active: cos = <w, c> / eps
        buf.grad_cross[r] = grad_cos / problem.eps;
        buf.grad_context[r] = 0;
        std::fill(dw + r * D, dw + (r + 1) * D, scalar_t(0));
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t alpha = buf.grad_cross[r], beta = buf.grad_context[r];
    for (int64_t j = 0; j < N; ++j) ds[r * N + j] = alpha * s[r * N + j] - beta * h[r * N + j];
    for (int64_t j = 0; j < N; ++j) h[r * N + j] = beta * a[r * N + j];
  }
  buf.region_gram_grad.addmm_(attention.t(), weighted_attention);
  // through eq. 4: dP = gamma1 * A * (dA - rowsum(dA * A))
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* dsr = ds + r * N;
    const scalar_t* ar = a + r * N;
    const scalar_t centre = array_dot(dsr, ar, N);
    for (int64_t j = 0; j < N; ++j) dsr[j] = problem.gamma1 * ar[j] * (dsr[j] - centre);
  }
  // through eq. 3: dS = P * (dP - colsum over the caption's words of dP * P)
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t offset = (packed.first_row[k] - r0) * N;
    const int64_t n_words = packed.first_row[k + 1] - packed.first_row[k];
    const scalar_t* pk = p + offset;
    scalar_t* dsk = ds + offset;
    std::fill(column, column + N, scalar_t(0));
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) column[j] += dsk[t * N + j] * pk[t * N + j];
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) dsk[t * N + j] = pk[t * N + j] * (dsk[t * N + j] - column[j]);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t alpha = buf.grad_cross[r];
    for (int64_t j = 0; j < N; ++j) ds[r * N + j] += alpha * a[r * N + j];
  }
  const auto region = problem.regions[image];
  tile_grad_words.addmm_(grad_logits, region);
  grad_region.addmm_(grad_logits.t(), words);
}

// The tile buffers of the workers of a call over n_items items, each made on its worker's first item.
template <typename scalar_t>
class WorkerBuffers {
 public:
  WorkerBuffers(const Workers& threads, const Problem<scalar_t>& problem, int64_t n_items, bool backward)
      : problem_(problem), backward_(backward), buffers_(threads.count(n_items)) {}

  TileBuffers<scalar_t>& operator[](int64_t worker) {
    auto& buf = buffers_[worker];
    if (!buf) buf = std::make_unique<TileBuffers<scalar_t>>(problem_, backward_);
    return *buf;
  }

 private:
  const Problem<scalar_t>& problem_;
  const bool backward_;
  std::vector<std::unique_ptr<TileBuffers<scalar_t>>> buffers_;
};

template <typename scalar_t>
Problem<scalar_t> make_problem(const Workers& threads, const PackedCaptions& packed, const at::Tensor& regions,
                               double gamma1, double gamma2, double eps) {
  const auto regions_acc = regions.to(packed.words.scalar_type()).contiguous();
  const int64_t B_v = regions.size(0), N = regions.size(1);
  Problem<scalar_t> problem{packed,
                            regions_acc,
                            at::empty({B_v, N, N}, regions_acc.options()),
                            {},
                            N,
                            regions.size(2),
                            static_cast<scalar_t>(gamma1),
                            static_cast<scalar_t>(gamma2),
                            static_cast<scalar_t>(eps)};
  threads.for_each_item(B_v, [&](int64_t, int64_t image) {
    at::Tensor gram = problem.grams[image];
    at::mm_out(gram, regions_acc[image], regions_acc[image].t());
  });
  const int64_t n_words = packed.words.size(0), D = problem.D;
  const scalar_t* w = packed.words.data_ptr<scalar_t>();
  problem.word_norm.resize(n_words);
  for (int64_t r = 0; r < n_words; ++r) problem.word_norm[r] = std::sqrt(array_dot(w + r * D, w + r * D, D));
  return problem;
}

}  // namespace

at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,
                                      const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  const int64_t B_v = regions.size(0), B_t = words.size(0);
  const Workers threads;
  const auto packed = pack_captions(words, word_mask);
  auto scores = at::empty({B_v, B_t}, packed.words.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "word_region_scores_forward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(threads, packed, regions, gamma1, gamma2, eps);
    const int64_t n_blocks = static_cast<int64_t>(packed.block_start.size()) - 1;
    scalar_t* out = scores.data_ptr<scalar_t>();
    WorkerBuffers<scalar_t> buffers(threads, problem, B_v * n_blocks, /*backward=*/false);
    threads.for_each_item(B_v * n_blocks, [&](int64_t worker, int64_t item) {
      const int64_t image = item / n_blocks;
      forward_tile(problem, buffers[worker], image, item % n_blocks, out + image * B_t);
    });
  });
  return scores.to(words.scalar_type());
}

// `scores` is not read: the tiles recompute their scores in the accumulation dtype anyway,
// which for float16/bfloat16 inputs is more accurate than the rounded forward output.
std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(
    const at::Tensor& grad_scores, const at::Tensor& words, const at::Tensor& regions,
    const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  const int64_t B_v = regions.size(0), N = regions.size(1), D = regions.size(2);
  const int64_t B_t = words.size(0), T = words.size(1);
  const Workers threads;
  const auto packed = pack_captions(words, word_mask);
  const auto grad_scores_acc = grad_scores.to(packed.words.scalar_type()).contiguous();
  auto grad_regions = at::empty({B_v, N, D}, packed.words.options());  // zeroed image by image
  const auto grad_packed_words = at::zeros_like(packed.words);
  AT_DISPATCH_FLOATING_TYPES(packed.words.scalar_type(), "word_region_scores_backward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(threads, packed, regions, gamma1, gamma2, eps);
    const int64_t n_blocks = static_cast<int64_t>(packed.block_start.size()) - 1;
    const scalar_t* grad_out = grad_scores_acc.data_ptr<scalar_t>();
    WorkerBuffers<scalar_t> buffers(threads, problem, B_v, /*backward=*/true);
    // an item is one image with all its caption blocks, so that its region gradient has one writer;
    // its share of the word gradient, which every image adds to, is its partial result
    threads.for_each_item_in_order(
        B_v, [&] { return at::empty_like(packed.words); },
        [&](int64_t worker, int64_t image, at::Tensor& image_grad_words) {
          auto& buf = buffers[worker];
          const auto grad_region = grad_regions[image].zero_();
          buf.region_gram_grad.zero_();
          for (int64_t block = 0; block < n_blocks; ++block) {
            forward_tile(problem, buf, image, block, buf.image_scores.data());
            backward_tile(problem, buf, image, block, buf.image_scores.data(), grad_out + image * B_t, grad_region,
                          image_grad_words);
          }
          grad_region.addmm_(buf.region_gram_grad, problem.regions[image], 1, -1);
        },
        [&](const at::Tensor& image_grad_words) { grad_packed_words.add_(image_grad_words); });
  });
  auto grad_words = packed.all_valid
                        ? grad_packed_words
                        : at::zeros({B_t * T, D}, grad_packed_words.options()).index_copy_(0, packed.word_index,
                                                                                           grad_packed_words);
  return {grad_words.view({B_t, T, D}).to(words.scalar_type()), grad_regions.to(regions.scalar_type())};
}

}  // namespace tgfr::cpu
