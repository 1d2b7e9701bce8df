// Fused symmetric InfoNCE on the CPU, forward and backward, without the B x B logits.
//
// The logits are visited in square tiles of up to kBlock x kBlock, each one GEMM into a
// per-thread buffer. Tiles are scheduled by diagonals: in step s, row block r pairs with
// column block (r + s) mod n_blocks, so the tiles running at the same time share no row and
// no column. Every row statistic, column statistic and gradient row therefore has one
// writer at a time, with no per-thread copies to reduce. The forward keeps an online
// (running max, running sum) log-sum-exp per row and per column; the backward recomputes
// each tile from the saved log-sum-exps (as Inf-CL does).
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

// Largest tile side (buffers of kBlock^2 stay in L2); smaller batches use smaller tiles so
// that every thread gets tiles, down to kMinBlock.
constexpr int64_t kBlock = 256, kMinBlock = 64;

int64_t tile_side(int64_t size) {
  const int64_t per_thread = (size + at::get_num_threads() - 1) / at::get_num_threads();
  return std::clamp<int64_t>((per_thread + 15) / 16 * 16, kMinBlock, kBlock);
}

// Whether two samples share a class id, i.e. whether any logit is masked at all.
bool has_repeated_class(const at::Tensor& class_ids) {
  std::vector<int64_t> ids(class_ids.data_ptr<int64_t>(), class_ids.data_ptr<int64_t>() + class_ids.numel());
  std::sort(ids.begin(), ids.end());
  return std::adjacent_find(ids.begin(), ids.end()) != ids.end();
}

int64_t worker_count(int64_t n_blocks) { return std::min<int64_t>(at::get_num_threads(), n_blocks); }

// Runs tile(worker, row_block, column_block) over all n_blocks^2 tiles, one diagonal at a
// time, with worker < worker_count(n_blocks) naming the caller's buffers. The tiles of a
// diagonal go to the threads one at a time, so a slowed-down thread takes fewer.
template <typename TileFn>
void for_each_tile_by_diagonals(int64_t n_blocks, const TileFn& tile) {
  for (int64_t step = 0; step < n_blocks; ++step) {
    std::atomic<int64_t> next_row_block{0};
    // the first index of each call's range names its worker (one call takes all when run inline)
    at::parallel_for(0, worker_count(n_blocks), 1, [&](int64_t worker, int64_t) {
      for (int64_t row_block = next_row_block++; row_block < n_blocks; row_block = next_row_block++)
        tile(worker, row_block, (row_block + step) % n_blocks);
    });
  }
}

template <typename scalar_t>
struct Problem {
  at::Tensor a, b;  // [B, D] in the accumulation dtype
  const int64_t* class_ids;
  bool masked;  // some off-diagonal pair shares a class id
  scalar_t inv_temperature;
  int64_t block;  // tile side
  int64_t n_blocks;
};

// One thread's tile buffers, [kBlock, kBlock] each; a tile of [rows, cols] is the view
// of their top-left corner (row stride kBlock, which BLAS accepts).
struct TileBuffers {
  at::Tensor logits;             // a_rows b_cols^T / tau, -inf where masked
  at::Tensor shifted;            // logits minus a row statistic, then exp
  at::Tensor shifted_by_column;  // logits minus a column statistic, then exp

  explicit TileBuffers(const at::TensorOptions& options)
      : logits(at::empty({kBlock, kBlock}, options)),
        shifted(at::empty({kBlock, kBlock}, options)),
        shifted_by_column(at::empty({kBlock, kBlock}, options)) {}
};

at::Tensor corner(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows).narrow(1, 0, cols);
}

// The logits of rows [i0, i0 + rows) against columns [j0, j0 + cols), masked pairs -inf.
template <typename scalar_t>
const scalar_t* logit_tile(const Problem<scalar_t>& problem, TileBuffers& buf, int64_t i0, int64_t rows, int64_t j0,
                           int64_t cols) {
  at::Tensor logits = corner(buf.logits, rows, cols);
  at::mm_out(logits, problem.a.narrow(0, i0, rows), problem.b.narrow(0, j0, cols).t());
  scalar_t* l = buf.logits.data_ptr<scalar_t>();
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* lr = l + r * kBlock;
    for (int64_t c = 0; c < cols; ++c) lr[c] *= problem.inv_temperature;
    if (!problem.masked) continue;
    const int64_t i = i0 + r, id = problem.class_ids[i];
    for (int64_t c = 0; c < cols; ++c)
      if (problem.class_ids[j0 + c] == id && j0 + c != i) lr[c] = -std::numeric_limits<scalar_t>::infinity();
  }
  return l;
}

// exp(logits - row_shift[r]) into buf.shifted and exp(logits - column_shift[c]) into
// buf.shifted_by_column, arguments clamped to kExpFloor (so masked pairs get about 1e-38,
// not 0: forward sums are unaffected, the backward zeroes them).
template <typename scalar_t>
void exp_shifted(TileBuffers& buf, int64_t rows, int64_t cols, const scalar_t* row_shift,
                 const scalar_t* column_shift) {
  const scalar_t* l = buf.logits.data_ptr<scalar_t>();
  scalar_t* by_row = buf.shifted.data_ptr<scalar_t>();
  scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* lr = l + r * kBlock;
    for (int64_t c = 0; c < cols; ++c) by_row[r * kBlock + c] = max_of(lr[c] - row_shift[r], kExpFloor<scalar_t>);
    for (int64_t c = 0; c < cols; ++c)
      by_col[r * kBlock + c] = max_of(lr[c] - column_shift[c], kExpFloor<scalar_t>);
  }
  corner(buf.shifted, rows, cols).exp_();
  corner(buf.shifted_by_column, rows, cols).exp_();
}

template <typename scalar_t>
at::Tensor accumulation_tensor(const at::Tensor& t) {
  return t.to(c10::CppTypeToScalarType<scalar_t>::value).contiguous();
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
                               const at::Tensor& class_ids) {
  const int64_t size = a.size(0), block = tile_side(size);
  return {accumulation_tensor<scalar_t>(a), accumulation_tensor<scalar_t>(b), class_ids.data_ptr<int64_t>(),
          has_repeated_class(class_ids), scalar_t(1) / temperature.item<scalar_t>(), block,
          (size + block - 1) / block};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids, int64_t offset,
                                                                bool symmetric) {
  TORCH_CHECK(offset == 0 && symmetric && b.size(0) == a.size(0), "not yet");
  const int64_t B = a.size(0);
  const auto acc = accumulation_type(a);
  auto lse_rows = at::empty({B}, a.options().dtype(acc));
  auto lse_cols = at::empty({B}, a.options().dtype(acc));
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES(acc, "info_nce_forward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(a, b, temperature, class_ids);
    constexpr scalar_t kInf = std::numeric_limits<scalar_t>::infinity();
    // running (max, sum of exp(logit - max)) of every row and every column
    std::vector<scalar_t> row_max(B, -kInf), row_sum(B, 0), col_max(B, -kInf), col_sum(B, 0);
    std::vector<TileBuffers> worker_buffers;
    for (int64_t t = 0; t < worker_count(problem.n_blocks); ++t) worker_buffers.emplace_back(lse_rows.options());

    for_each_tile_by_diagonals(problem.n_blocks, [&](int64_t worker, int64_t row_block, int64_t col_block) {
      auto& buf = worker_buffers[worker];
      const int64_t i0 = row_block * problem.block, rows = std::min(problem.block, B - i0);
      const int64_t j0 = col_block * problem.block, cols = std::min(problem.block, B - j0);
      const scalar_t* l = logit_tile(problem, buf, i0, rows, j0, cols);
      std::vector<scalar_t> new_row_max(rows), row_shift(rows), col_shift(cols);
      std::vector<scalar_t> new_col_max(col_max.begin() + j0, col_max.begin() + j0 + cols);
      for (int64_t r = 0; r < rows; ++r) {
        new_row_max[r] = max_of(row_max[i0 + r], array_max(l + r * kBlock, cols));
        row_shift[r] = finite_shift(new_row_max[r]);
        for (int64_t c = 0; c < cols; ++c) new_col_max[c] = max_of(new_col_max[c], l[r * kBlock + c]);
      }
      for (int64_t c = 0; c < cols; ++c) col_shift[c] = finite_shift(new_col_max[c]);
      exp_shifted(buf, rows, cols, row_shift.data(), col_shift.data());

      const scalar_t* by_row = buf.shifted.data_ptr<scalar_t>();
      const scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        row_sum[i] = row_sum[i] * std::exp(row_max[i] - row_shift[r]) + array_sum(by_row + r * kBlock, cols);
        row_max[i] = new_row_max[r];
      }
      std::vector<scalar_t> tile_col_sum(cols, 0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) tile_col_sum[c] += by_col[r * kBlock + c];
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t j = j0 + c;
        col_sum[j] = col_sum[j] * std::exp(col_max[j] - col_shift[c]) + tile_col_sum[c];
        col_max[j] = new_col_max[c];
      }
    });

    // loss = mean over rows and columns of (lse - positive logit), halved
    const scalar_t* pa = problem.a.data_ptr<scalar_t>();
    const scalar_t* pb = problem.b.data_ptr<scalar_t>();
    const int64_t D = problem.a.size(1);
    scalar_t* lr = lse_rows.data_ptr<scalar_t>();
    scalar_t* lc = lse_cols.data_ptr<scalar_t>();
    scalar_t total = 0;
    for (int64_t i = 0; i < B; ++i) {
      lr[i] = row_max[i] + std::log(row_sum[i]);
      lc[i] = col_max[i] + std::log(col_sum[i]);
      const scalar_t positive = array_dot(pa + i * D, pb + i * D, D) * problem.inv_temperature;
      total += lr[i] + lc[i] - 2 * positive;
    }
    loss = at::full({}, total / (2 * B), lse_rows.options());
  });
  return {loss, lse_rows, lse_cols};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
    const at::Tensor& class_ids, const at::Tensor& lse_rows, const at::Tensor& lse_cols, int64_t offset,
    bool symmetric) {
  TORCH_CHECK(offset == 0 && symmetric && b.size(0) == a.size(0), "not yet");
  const int64_t B = a.size(0);
  const auto acc = accumulation_type(a);
  at::Tensor grad_a, grad_b, grad_temperature;
  AT_DISPATCH_FLOATING_TYPES(acc, "info_nce_backward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(a, b, temperature, class_ids);
    grad_a = at::zeros_like(problem.a);
    grad_b = at::zeros_like(problem.b);
    // dL/dl_ij = grad / (2B) * (softmax_row + softmax_col - 2 [i == j])
    const scalar_t scale = grad_loss.item<scalar_t>() / (2 * B);
    const scalar_t* lse_r = lse_rows.data_ptr<scalar_t>();
    const scalar_t* lse_c = lse_cols.data_ptr<scalar_t>();
    std::vector<TileBuffers> worker_buffers;
    for (int64_t t = 0; t < worker_count(problem.n_blocks); ++t) worker_buffers.emplace_back(grad_a.options());

    for_each_tile_by_diagonals(problem.n_blocks, [&](int64_t worker, int64_t row_block, int64_t col_block) {
      auto& buf = worker_buffers[worker];
      const int64_t i0 = row_block * problem.block, rows = std::min(problem.block, B - i0);
      const int64_t j0 = col_block * problem.block, cols = std::min(problem.block, B - j0);
      logit_tile(problem, buf, i0, rows, j0, cols);
      exp_shifted(buf, rows, cols, lse_r + i0, lse_c + j0);
      scalar_t* grad_logits = buf.shifted.data_ptr<scalar_t>();
      const scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
      const scalar_t* l = buf.logits.data_ptr<scalar_t>();
      constexpr scalar_t kMasked = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* gr = grad_logits + r * kBlock;
        const scalar_t* cr = by_col + r * kBlock;
        const scalar_t* lr = l + r * kBlock;
        for (int64_t c = 0; c < cols; ++c) gr[c] = lr[c] == kMasked ? scalar_t(0) : scale * (gr[c] + cr[c]);
        const int64_t diagonal = i0 + r - j0;
        if (diagonal >= 0 && diagonal < cols) gr[diagonal] -= 2 * scale;
      }
      // l = a b^T / tau
      const at::Tensor grad_tile = corner(buf.shifted, rows, cols);
      grad_a.narrow(0, i0, rows).addmm_(grad_tile, problem.b.narrow(0, j0, cols), 1, problem.inv_temperature);
      grad_b.narrow(0, j0, cols).addmm_(grad_tile.t(), problem.a.narrow(0, i0, rows), 1, problem.inv_temperature);
    });

    // dL/dtau = -sum_ij dl_ij l_ij / tau, and sum_ij dl_ij l_ij = sum_i <a_i, grad_a_i>
    const int64_t D = problem.a.size(1);
    const scalar_t* pa = problem.a.data_ptr<scalar_t>();
    const scalar_t* pga = grad_a.data_ptr<scalar_t>();
    scalar_t grad_logit_dot_logit = 0;
    for (int64_t i = 0; i < B; ++i) grad_logit_dot_logit += array_dot(pa + i * D, pga + i * D, D);
    grad_temperature = at::full({}, -grad_logit_dot_logit * problem.inv_temperature, temperature.options());
  });
  return {grad_a.to(a.scalar_type()), grad_b.to(b.scalar_type()), grad_temperature};
}

}  // namespace tgfr::cpu
