// Fused InfoNCE on the CPU, forward and backward, without the B x M logits.
//
// a [B, D] against b [M, D]; the positive of row i is column offset + i, and the column term
// (symmetric only) runs over the B positives' columns. The logits are visited in tiles of up to
// kBlock x kBlock, each one GEMM into a per-worker buffer (parallel.h: one parallel region,
// blocks handed out one at a time, single-threaded GEMMs).
//  - Forward: an item is a row block with all its column tiles, so its rows' online
//    (running max, running sum) log-sum-exps have one writer; its part of the positives' column
//    statistics is a partial result, merged into the total in row-block order
//    (for_each_item_in_order), so that the loss does not follow the threads' timing.
//  - Backward: the tiles are recomputed from the saved log-sum-exps (as Inf-CL does), twice: once
//    by row blocks for grad_a, once by column blocks for grad_b, so that every gradient row has
//    one writer without per-worker copies of grad_b or a barrier between tiles.
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../tgfr.h"
#include "array_ops.h"
#include "parallel.h"

namespace tgfr::cpu {
namespace {

// Largest tile side (buffers of kBlock^2 stay in L2); smaller batches use smaller tiles so
// that every thread gets row blocks, down to kMinBlock.
constexpr int64_t kBlock = 256, kMinBlock = 64;

int64_t tile_side(int64_t size, int64_t n_threads) {
  const int64_t per_thread = (size + n_threads - 1) / n_threads;
  return std::clamp<int64_t>((per_thread + 15) / 16 * 16, kMinBlock, kBlock);
}

template <typename scalar_t>
struct Problem {
  at::Tensor a, b;  // [B, D] and [M, D] in the accumulation dtype
  const int64_t* class_ids;  // [M]
  bool masked;               // some pair other than a positive shares a class id
  scalar_t inv_temperature;
  int64_t B, M, offset;
  bool symmetric;
  int64_t block;  // tile side

  int64_t blocks(int64_t size) const { return (size + block - 1) / block; }
  // whether column j is one of the positives' columns, which have column statistics
  bool has_column_stat(int64_t j) const { return symmetric && j >= offset && j < offset + B; }
};

// Whether two rows of b share a class id, i.e. whether any logit may be masked at all.
bool has_repeated_class(const int64_t* class_ids, int64_t M) {
  std::vector<int64_t> ids(class_ids, class_ids + M);
  std::sort(ids.begin(), ids.end());
  return std::adjacent_find(ids.begin(), ids.end()) != ids.end();
}

// One worker's tile buffers, [kBlock, kBlock] each; a tile of [rows, cols] is the view of their
// top-left corner (row stride kBlock, which BLAS accepts).
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
    const int64_t positive = problem.offset + i0 + r, id = problem.class_ids[positive];
    for (int64_t c = 0; c < cols; ++c)
      if (problem.class_ids[j0 + c] == id && j0 + c != positive) lr[c] = -std::numeric_limits<scalar_t>::infinity();
  }
  return l;
}

// exp(logits - row_shift[r]) into buf.shifted and, where column_shift is given,
// exp(logits - column_shift[c]) into buf.shifted_by_column, arguments clamped to kExpFloor (so
// masked pairs get about 1e-38, not 0: forward sums are unaffected, the backward zeroes them).
template <typename scalar_t>
void exp_shifted(TileBuffers& buf, int64_t rows, int64_t cols, const scalar_t* row_shift,
                 const scalar_t* column_shift) {
  const scalar_t* l = buf.logits.data_ptr<scalar_t>();
  scalar_t* by_row = buf.shifted.data_ptr<scalar_t>();
  scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* lr = l + r * kBlock;
    for (int64_t c = 0; c < cols; ++c) by_row[r * kBlock + c] = max_of(lr[c] - row_shift[r], kExpFloor<scalar_t>);
    if (column_shift == nullptr) continue;
    for (int64_t c = 0; c < cols; ++c)
      by_col[r * kBlock + c] = max_of(lr[c] - column_shift[c], kExpFloor<scalar_t>);
  }
  corner(buf.shifted, rows, cols).exp_();
  if (column_shift != nullptr) corner(buf.shifted_by_column, rows, cols).exp_();
}

template <typename scalar_t>
at::Tensor accumulation_tensor(const at::Tensor& t) {
  return t.to(c10::CppTypeToScalarType<scalar_t>::value).contiguous();
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const Workers& threads, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
                               const at::Tensor& class_ids, int64_t offset, bool symmetric) {
  const int64_t B = a.size(0), M = b.size(0);
  const int64_t* ids = class_ids.data_ptr<int64_t>();
  return {accumulation_tensor<scalar_t>(a),
          accumulation_tensor<scalar_t>(b),
          ids,
          has_repeated_class(ids, M),
          scalar_t(1) / temperature.item<scalar_t>(),
          B,
          M,
          offset,
          symmetric,
          tile_side(B, threads.count(B))};
}

// Running (max, sum of exp(x - max)) of n log-sum-exps.
template <typename scalar_t>
struct RunningLse {
  std::vector<scalar_t> max, sum;
  explicit RunningLse(int64_t n) : max(n), sum(n) { clear(); }
  // every log-sum-exp back to that of no value
  void clear() {
    std::fill(max.begin(), max.end(), -std::numeric_limits<scalar_t>::infinity());
    std::fill(sum.begin(), sum.end(), scalar_t(0));
  }
  // new_max >= max[i] is the running max with the part included; part_sum is the part's sum of
  // exp(x - shift), shift = finite_shift(new_max)
  void add(int64_t i, scalar_t new_max, scalar_t shift, scalar_t part_sum) {
    sum[i] = sum[i] * std::exp(max[i] - shift) + part_sum;
    max[i] = new_max;
  }
  // includes the values of other's log-sum-exps
  void merge(const RunningLse& other) {
    for (size_t i = 0; i < max.size(); ++i) {
      const scalar_t new_max = max_of(max[i], other.max[i]), shift = finite_shift(new_max);
      add(i, new_max, shift, other.sum[i] * std::exp(other.max[i] - shift));
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids, int64_t offset,
                                                                bool symmetric) {
  const int64_t B = a.size(0);
  const auto acc = accumulation_type(a);
  auto lse_rows = at::empty({B}, a.options().dtype(acc));
  auto lse_cols = at::empty({symmetric ? B : 0}, a.options().dtype(acc));
  at::Tensor loss;
  const Workers threads;
  AT_DISPATCH_FLOATING_TYPES(acc, "info_nce_forward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(threads, a, b, temperature, class_ids, offset, symmetric);
    const int64_t M = problem.M, n_row_blocks = problem.blocks(B), n_col_blocks = problem.blocks(M);
    const int64_t n_workers = threads.count(n_row_blocks);
    RunningLse<scalar_t> rows_lse(B);
    // the positives' column statistics (index k = column offset + k): the total, and a row block's part
    RunningLse<scalar_t> cols_lse(symmetric ? B : 0);
    auto make_part = [&] { return RunningLse<scalar_t>(symmetric ? B : 0); };
    auto fold_part = [&](const RunningLse<scalar_t>& part) { cols_lse.merge(part); };
    std::vector<TileBuffers> worker_buffers;
    for (int64_t w = 0; w < n_workers; ++w) worker_buffers.emplace_back(lse_rows.options());

    threads.for_each_item_in_order(n_row_blocks, make_part, [&](int64_t worker, int64_t row_block,
                                                                RunningLse<scalar_t>& col_lse) {
      auto& buf = worker_buffers[worker];
      col_lse.clear();
      const int64_t i0 = row_block * problem.block, rows = std::min(problem.block, B - i0);
      std::vector<scalar_t> new_row_max(rows), row_shift(rows), new_col_max, col_shift;
      for (int64_t col_block = 0; col_block < n_col_blocks; ++col_block) {
        const int64_t j0 = col_block * problem.block, cols = std::min(problem.block, M - j0);
        const scalar_t* l = logit_tile(problem, buf, i0, rows, j0, cols);
        // the tile's columns that have statistics: [c0, c1)
        const int64_t c0 = symmetric ? std::clamp<int64_t>(offset - j0, 0, cols) : 0;
        const int64_t c1 = symmetric ? std::clamp<int64_t>(offset + B - j0, 0, cols) : 0;
        const bool with_columns = c1 > c0;
        for (int64_t r = 0; r < rows; ++r) {
          new_row_max[r] = max_of(rows_lse.max[i0 + r], array_max(l + r * kBlock, cols));
          row_shift[r] = finite_shift(new_row_max[r]);
        }
        if (with_columns) {
          new_col_max.assign(cols, -std::numeric_limits<scalar_t>::infinity());
          col_shift.assign(cols, 0);
          for (int64_t c = c0; c < c1; ++c) new_col_max[c] = col_lse.max[j0 + c - offset];
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = c0; c < c1; ++c) new_col_max[c] = max_of(new_col_max[c], l[r * kBlock + c]);
          for (int64_t c = c0; c < c1; ++c) col_shift[c] = finite_shift(new_col_max[c]);
        }
        exp_shifted(buf, rows, cols, row_shift.data(), with_columns ? col_shift.data() : nullptr);

        const scalar_t* by_row = buf.shifted.data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; ++r)
          rows_lse.add(i0 + r, new_row_max[r], row_shift[r], array_sum(by_row + r * kBlock, cols));
        if (!with_columns) continue;
        const scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
        std::vector<scalar_t> tile_col_sum(cols, 0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = c0; c < c1; ++c) tile_col_sum[c] += by_col[r * kBlock + c];
        for (int64_t c = c0; c < c1; ++c) col_lse.add(j0 + c - offset, new_col_max[c], col_shift[c], tile_col_sum[c]);
      }
    }, fold_part);

    // loss = mean over rows (and the positives' columns) of (lse - positive logit)
    const scalar_t* pa = problem.a.data_ptr<scalar_t>();
    const scalar_t* pb = problem.b.data_ptr<scalar_t>();
    const int64_t D = problem.a.size(1);
    scalar_t* lr = lse_rows.data_ptr<scalar_t>();
    scalar_t total = 0;
    for (int64_t i = 0; i < B; ++i) {
      lr[i] = rows_lse.max[i] + std::log(rows_lse.sum[i]);
      const scalar_t positive = array_dot(pa + i * D, pb + (offset + i) * D, D) * problem.inv_temperature;
      total += lr[i] - positive;
      if (!symmetric) continue;
      const scalar_t lse = finite_shift(cols_lse.max[i]) + std::log(cols_lse.sum[i]);
      lse_cols.data_ptr<scalar_t>()[i] = lse;
      total += lse - positive;
    }
    loss = at::full({}, total / (symmetric ? 2 * B : B), lse_rows.options());
  });
  return {loss, lse_rows, lse_cols};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
    const at::Tensor& class_ids, const at::Tensor& lse_rows, const at::Tensor& lse_cols, int64_t offset,
    bool symmetric) {
  const int64_t B = a.size(0);
  const auto acc = accumulation_type(a);
  at::Tensor grad_a, grad_b, grad_temperature;
  const Workers threads;
  AT_DISPATCH_FLOATING_TYPES(acc, "info_nce_backward_cpu", [&] {
    const auto problem = make_problem<scalar_t>(threads, a, b, temperature, class_ids, offset, symmetric);
    const int64_t M = problem.M;
    grad_a = at::zeros_like(problem.a);
    grad_b = at::zeros_like(problem.b);
    // dL/dl_ij = scale * (softmax_row_ij + [column j has a statistic] softmax_col_ij
    //                     - (1 + symmetric) [j == offset + i])
    const scalar_t scale = grad_loss.item<scalar_t>() / (symmetric ? 2 * B : B);
    const scalar_t* lse_r = lse_rows.data_ptr<scalar_t>();
    const scalar_t* lse_c = symmetric ? lse_cols.data_ptr<scalar_t>() : nullptr;
    const int64_t n_workers = threads.count(std::max(problem.blocks(B), problem.blocks(M)));
    std::vector<TileBuffers> worker_buffers;
    for (int64_t w = 0; w < n_workers; ++w) worker_buffers.emplace_back(grad_a.options());
    std::vector<std::vector<scalar_t>> worker_col_shift(n_workers, std::vector<scalar_t>(kBlock));

    // the gradient of the tile's logits, into buf.shifted
    auto grad_logit_tile = [&](int64_t worker, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
      auto& buf = worker_buffers[worker];
      logit_tile(problem, buf, i0, rows, j0, cols);
      const int64_t c0 = symmetric ? std::clamp<int64_t>(offset - j0, 0, cols) : 0;
      const int64_t c1 = symmetric ? std::clamp<int64_t>(offset + B - j0, 0, cols) : 0;
      scalar_t* col_shift = worker_col_shift[worker].data();
      for (int64_t c = c0; c < c1; ++c) col_shift[c] = lse_c[j0 + c - offset];
      exp_shifted(buf, rows, cols, lse_r + i0, c1 > c0 ? col_shift : nullptr);
      scalar_t* grad_logits = buf.shifted.data_ptr<scalar_t>();
      const scalar_t* by_col = buf.shifted_by_column.data_ptr<scalar_t>();
      const scalar_t* l = buf.logits.data_ptr<scalar_t>();
      constexpr scalar_t kMasked = -std::numeric_limits<scalar_t>::infinity();
      const scalar_t positive_grad = (symmetric ? 2 : 1) * scale;
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* gr = grad_logits + r * kBlock;
        const scalar_t* cr = by_col + r * kBlock;
        const scalar_t* lr = l + r * kBlock;
        for (int64_t c = c0; c < c1; ++c) gr[c] += cr[c];
        for (int64_t c = 0; c < cols; ++c) gr[c] = lr[c] == kMasked ? scalar_t(0) : scale * gr[c];
        const int64_t positive = offset + i0 + r - j0;
        if (positive >= 0 && positive < cols) gr[positive] -= positive_grad;
      }
      return corner(buf.shifted, rows, cols);
    };

    // l = a b^T / tau: grad_a = dl b / tau by row blocks, grad_b = dl^T a / tau by column blocks
    threads.for_each_item(problem.blocks(B), [&](int64_t worker, int64_t row_block) {
      const int64_t i0 = row_block * problem.block, rows = std::min(problem.block, B - i0);
      auto grad_rows = grad_a.narrow(0, i0, rows);
      for (int64_t j0 = 0; j0 < M; j0 += problem.block) {
        const int64_t cols = std::min(problem.block, M - j0);
        grad_rows.addmm_(grad_logit_tile(worker, i0, rows, j0, cols), problem.b.narrow(0, j0, cols), 1,
                         problem.inv_temperature);
      }
    });
    threads.for_each_item(problem.blocks(M), [&](int64_t worker, int64_t col_block) {
      const int64_t j0 = col_block * problem.block, cols = std::min(problem.block, M - j0);
      auto grad_cols = grad_b.narrow(0, j0, cols);
      for (int64_t i0 = 0; i0 < B; i0 += problem.block) {
        const int64_t rows = std::min(problem.block, B - i0);
        grad_cols.addmm_(grad_logit_tile(worker, i0, rows, j0, cols).t(), problem.a.narrow(0, i0, rows), 1,
                         problem.inv_temperature);
      }
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
