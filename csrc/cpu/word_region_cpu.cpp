// Fused word-region matching scores on the CPU, forward and backward.
//
// The valid words of all captions are packed into one [W, D] matrix (padding never enters
// a product) and the captions grouped into blocks of about kBlockRows words. The unit of
// work is one (image, caption block) tile: its two forward products are GEMMs with M = the
// block's words, written into per-thread buffers, and its softmaxes and cosines are loops
// over those buffers. Nothing of size B_v*B_t*T*N is ever allocated; the backward
// recomputes each tile's forward. In the backward a thread takes whole images, so it alone
// writes their region gradients, and keeps a private word gradient, summed at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../tgfr.h"
#include "array_ops.h"

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
    TORCH_CHECK(count > 0, "word_mask marks no valid word for caption ", k,
                ": every caption needs at least one word");
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
  std::vector<scalar_t> word_norm;  // |w| of every packed word
  int64_t N, D;
  scalar_t gamma1, gamma2, eps;
};

// One thread's buffers for a tile of up to max_block_rows words against one image.
template <typename scalar_t>
struct TileBuffers {
  at::Tensor prob;            // [rows, N]: S, then P (eq. 3)
  at::Tensor attention;       // [rows, N]: A (eq. 4)
  at::Tensor context;         // [rows, D]: C = A R
  at::Tensor grad_attention;  // [rows, N]: dA, then dP, then dS (backward only)
  at::Tensor grad_context;    // [rows, D]: dC (backward only)
  std::vector<scalar_t> column;  // [N]: a per-caption column statistic
  std::vector<scalar_t> cosine;  // [rows]
  std::vector<scalar_t> context_norm;
  std::vector<scalar_t> image_scores;  // [B_t]: one image's scores, recomputed in the backward

  TileBuffers(const Problem<scalar_t>& problem, bool backward) {
    const int64_t rows = problem.packed.max_block_rows;
    const auto options = problem.packed.words.options();
    prob = at::empty({rows, problem.N}, options);
    attention = at::empty({rows, problem.N}, options);
    context = at::empty({rows, problem.D}, options);
    if (backward) {
      grad_attention = at::empty({rows, problem.N}, options);
      grad_context = at::empty({rows, problem.D}, options);
    }
    column.resize(problem.N);
    cosine.resize(rows);
    context_norm.resize(rows);
    if (backward) image_scores.resize(problem.packed.first_row.size() - 1);
  }
};

// Caption block b against one image: fills the buffers and writes the score of every
// caption k of the block to image_scores[k].
template <typename scalar_t>
void forward_tile(const Problem<scalar_t>& problem, TileBuffers<scalar_t>& buf, const at::Tensor& region,
                  int64_t block, scalar_t* image_scores) {
  const auto& packed = problem.packed;
  const int64_t N = problem.N, D = problem.D;
  const int64_t k0 = packed.block_start[block], k1 = packed.block_start[block + 1];
  const int64_t r0 = packed.first_row[k0], rows = packed.first_row[k1] - r0;
  const at::Tensor words = packed.words.narrow(0, r0, rows);
  at::Tensor prob = buf.prob.narrow(0, 0, rows);
  const at::Tensor attention = buf.attention.narrow(0, 0, rows);
  at::Tensor context = buf.context.narrow(0, 0, rows);
  scalar_t* p = prob.data_ptr<scalar_t>();
  scalar_t* a = attention.data_ptr<scalar_t>();
  scalar_t* column = buf.column.data();

  at::mm_out(prob, words, region.t());
  // eq. 3: every region normalised over the caption's words (a softmax down each column)
  for (int64_t k = k0; k < k1; ++k) {
    scalar_t* pk = p + (packed.first_row[k] - r0) * N;
    const int64_t n_words = packed.first_row[k + 1] - packed.first_row[k];
    std::copy(pk, pk + N, column);
    for (int64_t t = 1; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) column[j] = max_of(column[j], pk[t * N + j]);
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) pk[t * N + j] = max_of(pk[t * N + j] - column[j], kExpFloor<scalar_t>);
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
  at::mm_out(context, attention, region);
  const scalar_t* w = words.data_ptr<scalar_t>();
  const scalar_t* c = context.data_ptr<scalar_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t context_norm = std::sqrt(array_dot(c + r * D, c + r * D, D));
    const scalar_t norms = problem.word_norm[r0 + r] * context_norm;
    buf.cosine[r] = array_dot(w + r * D, c + r * D, D) / max_of(norms, problem.eps);
    buf.context_norm[r] = context_norm;
  }
  // eq. 5: log-sum-exp of gamma2 * cos over the caption's words
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
// and to the packed word gradient grad_words [valid words, D].
template <typename scalar_t>
void backward_tile(const Problem<scalar_t>& problem, TileBuffers<scalar_t>& buf, const at::Tensor& region,
                   int64_t block, const scalar_t* image_scores, const scalar_t* image_grad_scores,
                   const at::Tensor& grad_region, const at::Tensor& grad_words) {
  const auto& packed = problem.packed;
  const int64_t N = problem.N, D = problem.D;
  const int64_t k0 = packed.block_start[block], k1 = packed.block_start[block + 1];
  const int64_t r0 = packed.first_row[k0], rows = packed.first_row[k1] - r0;
  const at::Tensor words = packed.words.narrow(0, r0, rows);
  at::Tensor prob = buf.prob.narrow(0, 0, rows);
  const at::Tensor attention = buf.attention.narrow(0, 0, rows);
  at::Tensor grad_attention = buf.grad_attention.narrow(0, 0, rows);
  const at::Tensor grad_context = buf.grad_context.narrow(0, 0, rows);
  const at::Tensor tile_grad_words = grad_words.narrow(0, r0, rows);
  const scalar_t* p = prob.data_ptr<scalar_t>();
  const scalar_t* a = attention.data_ptr<scalar_t>();
  const scalar_t* w = words.data_ptr<scalar_t>();
  const scalar_t* c = buf.context.template data_ptr<scalar_t>();
  scalar_t* dp = grad_attention.data_ptr<scalar_t>();
  scalar_t* dc = grad_context.data_ptr<scalar_t>();
  scalar_t* dw = tile_grad_words.data_ptr<scalar_t>();
  scalar_t* column = buf.column.data();

  // through eq. 5 and the cosine: d cos_t = g * gamma2 * softmax_t, then dC and the direct dW
  for (int64_t k = k0; k < k1; ++k) {
    const scalar_t grad_cos_scale = image_grad_scores[k] * problem.gamma2;
    for (int64_t r = packed.first_row[k] - r0; r < packed.first_row[k + 1] - r0; ++r) {
      const scalar_t cosine = buf.cosine[r];
      const scalar_t grad_cos = grad_cos_scale * std::exp(problem.gamma2 * cosine - image_scores[k]);
      const scalar_t word_norm = problem.word_norm[r0 + r], context_norm = buf.context_norm[r];
      const scalar_t norms = word_norm * context_norm;
      const scalar_t* wr = w + r * D;
      const scalar_t* cr = c + r * D;
      scalar_t* dcr = dc + r * D;
      scalar_t* dwr = dw + r * D;
      if (norms >= problem.eps) {
        const scalar_t g_cross = grad_cos / norms;
        const scalar_t g_word = grad_cos * cosine / (word_norm * word_norm);
        const scalar_t g_context = grad_cos * cosine / (context_norm * context_norm);
        for (int64_t d = 0; d < D; ++d) {
          dcr[d] = g_cross * wr[d] - g_context * cr[d];
          dwr[d] += g_cross * cr[d] - g_word * wr[d];
        }
      } else {  // the clamp max(|w||c|, eps) is active: cos = <w, c> / eps
        const scalar_t g_cross = grad_cos / problem.eps;
        for (int64_t d = 0; d < D; ++d) {
          dcr[d] = g_cross * wr[d];
          dwr[d] += g_cross * cr[d];
        }
      }
    }
  }
  // C = A R
  at::mm_out(grad_attention, grad_context, region.t());
  grad_region.addmm_(attention.t(), grad_context);
  // through eq. 4: dP = gamma1 * A * (dA - rowsum(dA * A))
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* dpr = dp + r * N;
    const scalar_t* ar = a + r * N;
    const scalar_t centre = array_dot(dpr, ar, N);
    for (int64_t j = 0; j < N; ++j) dpr[j] = problem.gamma1 * ar[j] * (dpr[j] - centre);
  }
  // through eq. 3: dS = P * (dP - colsum over the caption's words of dP * P)
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t offset = (packed.first_row[k] - r0) * N;
    const int64_t n_words = packed.first_row[k + 1] - packed.first_row[k];
    const scalar_t* pk = p + offset;
    scalar_t* dpk = dp + offset;
    std::fill(column, column + N, scalar_t(0));
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) column[j] += dpk[t * N + j] * pk[t * N + j];
    for (int64_t t = 0; t < n_words; ++t)
      for (int64_t j = 0; j < N; ++j) dpk[t * N + j] = pk[t * N + j] * (dpk[t * N + j] - column[j]);
  }
  // S = W R^T
  tile_grad_words.addmm_(grad_attention, region);
  grad_region.addmm_(grad_attention.t(), words);
}

// Calls work(item, buffers) for every item in [0, n_items) on the intra-op threads, each
// thread with its own buffers, handing items out one at a time: a thread slowed down by
// other load, or given lighter tiles, simply takes more items.
template <typename scalar_t, typename Work>
void for_each_item(const Problem<scalar_t>& problem, int64_t n_items, bool backward, const Work& work) {
  std::atomic<int64_t> next_item{0};
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_items);
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    TileBuffers<scalar_t> buf(problem, backward);
    for (int64_t item = next_item++; item < n_items; item = next_item++) work(item, buf);
  });
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const PackedCaptions& packed, int64_t N, double gamma1, double gamma2, double eps) {
  Problem<scalar_t> problem{packed, {}, N, packed.words.size(1), static_cast<scalar_t>(gamma1),
                            static_cast<scalar_t>(gamma2), static_cast<scalar_t>(eps)};
  const int64_t n_words = packed.words.size(0), D = problem.D;
  const scalar_t* w = packed.words.data_ptr<scalar_t>();
  problem.word_norm.resize(n_words);
  for (int64_t r = 0; r < n_words; ++r) problem.word_norm[r] = std::sqrt(array_dot(w + r * D, w + r * D, D));
  return problem;
}

}  // namespace

at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,
                                      const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  const int64_t B_v = regions.size(0), N = regions.size(1), B_t = words.size(0);
  const auto packed = pack_captions(words, word_mask);
  const auto regions_acc = regions.to(accumulation_type(regions)).contiguous();
  auto scores = at::empty({B_v, B_t}, regions_acc.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "word_region_scores_forward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(packed, N, gamma1, gamma2, eps);
    const int64_t n_blocks = static_cast<int64_t>(packed.block_start.size()) - 1;
    scalar_t* out = scores.data_ptr<scalar_t>();
    for_each_item(problem, B_v * n_blocks, /*backward=*/false, [&](int64_t item, TileBuffers<scalar_t>& buf) {
      const int64_t image = item / n_blocks;
      forward_tile(problem, buf, regions_acc[image], item % n_blocks, out + image * B_t);
    });
  });
  return scores.to(words.scalar_type());
}

// `scores` is not read: the tiles recompute their scores in the accumulation dtype anyway,
// which for float16/bfloat16 inputs is more accurate than the rounded forward output.
std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(
    const at::Tensor& grad_scores, const at::Tensor& words, const at::Tensor& regions,
    const at::Tensor& word_mask, const at::Tensor& /*scores*/, double gamma1, double gamma2, double eps) {
  const int64_t B_v = regions.size(0), N = regions.size(1), D = regions.size(2);
  const int64_t B_t = words.size(0), T = words.size(1);
  const auto packed = pack_captions(words, word_mask);
  const auto acc = accumulation_type(regions);
  const auto regions_acc = regions.to(acc).contiguous();
  const auto grad_scores_acc = grad_scores.to(acc).contiguous();
  auto grad_regions = at::zeros({B_v, N, D}, regions_acc.options());
  at::Tensor grad_packed_words;
  AT_DISPATCH_FLOATING_TYPES(acc, "word_region_scores_backward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(packed, N, gamma1, gamma2, eps);
    const int64_t n_blocks = static_cast<int64_t>(packed.block_start.size()) - 1;
    const scalar_t* grad_out = grad_scores_acc.data_ptr<scalar_t>();
    std::vector<at::Tensor> thread_grad_words(at::get_num_threads());
    // an item is one image with all its caption blocks, so that its region gradient has one writer
    for_each_item(problem, B_v, /*backward=*/true, [&](int64_t image, TileBuffers<scalar_t>& buf) {
      auto& grad_words = thread_grad_words[at::get_thread_num()];
      if (!grad_words.defined()) grad_words = at::zeros_like(packed.words);
      const auto region = regions_acc[image];
      const auto grad_region = grad_regions[image];
      for (int64_t block = 0; block < n_blocks; ++block) {
        forward_tile(problem, buf, region, block, buf.image_scores.data());
        backward_tile(problem, buf, region, block, buf.image_scores.data(), grad_out + image * B_t, grad_region,
                      grad_words);
      }
    });
    for (const auto& partial : thread_grad_words) {
      if (!partial.defined()) continue;
      if (grad_packed_words.defined()) {
        grad_packed_words.add_(partial);
      } else {
        grad_packed_words = partial;
      }
    }
  });
  auto grad_words = packed.all_valid
                        ? grad_packed_words
                        : at::zeros({B_t * T, D}, grad_packed_words.options()).index_copy_(0, packed.word_index,
                                                                                           grad_packed_words);
  return {grad_words.view({B_t, T, D}).to(words.scalar_type()), grad_regions.to(regions.scalar_type())};
}

}  // namespace tgfr::cpu
