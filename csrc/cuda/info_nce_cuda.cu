// InfoNCE on CUDA without the B x M logits.
//
// l = a b^T / tau, a [B, D], b [M, D]; the positive of row i is column offset + i. The
// logits are visited in tiles of at most kTileRows rows x as many columns as fit in
// kScratchBytes. Each tile is one GEMM (input dtype in, accumulation dtype out); the
// forward folds it into running row log-sum-exps and, when symmetric, column
// log-sum-exps of the B positive columns offset..offset+B-1; the backward recomputes
// it, turns it into d(loss)/d(logits) and accumulates the gradients of a and b with two
// more GEMMs. The temperature stays on the device (kernels read it through a pointer)
// and the incoming gradient is applied with tensor ops: the host never synchronises.
#include "../tgfr.h"
#include "common.cuh"

namespace tgfr::cuda {

using namespace tgfr::cuda_common;

namespace {

// Build-time knobs (the emulated tests make them small to exercise the tiling).
#ifndef TGFR_CUDA_INFO_NCE_TILE_ROWS
#define TGFR_CUDA_INFO_NCE_TILE_ROWS 4096
#endif
#ifndef TGFR_CUDA_INFO_NCE_GROUP_ROWS
#define TGFR_CUDA_INFO_NCE_GROUP_ROWS 256
#endif
constexpr int64_t kTileRows = TGFR_CUDA_INFO_NCE_TILE_ROWS;
// Rows one thread of the column pass folds before its partial result is merged.
constexpr int kColumnGroupRows = TGFR_CUDA_INFO_NCE_GROUP_ROWS;
static_assert(kTileRows / kColumnGroupRows < 65536, "the column pass puts the row groups in grid.y");
// |q| <= 2 (q below); scaled by 2^14 it stays under 2^15, far from float16's 65504.
constexpr double kGradLogitBound = 2.0;
constexpr double kGradLogitCeiling = 32768.0;

// Where a tile lives in the logits, and what the op needs to read it.
template <typename acc_t>
struct Tile {
  const acc_t* logits;  // [rows, cols] unscaled a_r b_c^T
  int64_t rows, cols, row0, col0;
  int64_t batch, offset;      // B, and the column of row 0's positive
  const int64_t* class_ids;   // [M], the identities of b's rows
  const acc_t* temperature;

  // Pairs of the same identity other than the positive pair leave both softmaxes.
  __device__ __forceinline__ bool masked_out(int64_t row, int64_t col) const {
    const int64_t positive = offset + row;
    return col != positive && class_ids[positive] == class_ids[col];
  }
  // Whether column `col` of the logits is one of the B positive columns.
  __device__ __forceinline__ bool positive_column(int64_t col) const {
    return col >= offset && col < offset + batch;
  }
};

// One warp per tile row: folds the row's kept logits / tau into lse_rows and, when the
// tile holds the row's positive pair, records that logit in `positive`.
template <typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
row_lse_kernel(Tile<acc_t> tile, acc_t* __restrict__ lse_rows, acc_t* __restrict__ positive) {
  const int64_t r = int64_t{blockIdx.x} * kBlockWarps + threadIdx.x / kWarpSize;
  if (r >= tile.rows) return;  // r is the same for the whole warp
  const int lane = threadIdx.x % kWarpSize;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t row = tile.row0 + r;
  const acc_t* l = tile.logits + r * tile.cols;
  OnlineLse<acc_t> state;
  for (int64_t c = lane; c < tile.cols; c += kWarpSize) {
    if (!tile.masked_out(row, tile.col0 + c)) state.add(l[c] * inv_tau);
  }
  state.warp_merge();
  if (lane == 0) {
    lse_rows[row] = log_add_exp(lse_rows[row], state.value());
    const int64_t c = tile.offset + row - tile.col0;
    if (c >= 0 && c < tile.cols) positive[row] = l[c] * inv_tau;
  }
}

// One thread per positive column of the tile (tile columns c_begin + x) and group of
// kColumnGroupRows rows (blockIdx.y): the log-sum-exp of that piece of the column,
// into partial[group, x].
template <typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
column_partial_lse_kernel(Tile<acc_t> tile, int64_t c_begin, int64_t n_cols, acc_t* __restrict__ partial) {
  const int64_t x = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (x >= n_cols) return;
  const int64_t c = c_begin + x;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t col = tile.col0 + c;
  const int64_t r_begin = int64_t{blockIdx.y} * kColumnGroupRows;
  const int64_t r_end = r_begin + kColumnGroupRows < tile.rows ? r_begin + kColumnGroupRows : tile.rows;
  OnlineLse<acc_t> state;
  for (int64_t r = r_begin; r < r_end; ++r) {
    if (!tile.masked_out(tile.row0 + r, col)) state.add(tile.logits[r * tile.cols + c] * inv_tau);
  }
  partial[int64_t{blockIdx.y} * n_cols + x] = state.value();
}

// One thread per positive column of the tile: folds its partial results into
// lse_cols[k], k = the column's index among the positive columns.
template <typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
column_merge_kernel(const acc_t* __restrict__ partial, int groups, int64_t n_cols, int64_t k_begin,
                    acc_t* __restrict__ lse_cols) {
  const int64_t x = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (x >= n_cols) return;
  acc_t lse = lse_cols[k_begin + x];
  for (int g = 0; g < groups; ++g) lse = log_add_exp(lse, partial[int64_t{g} * n_cols + x]);
  lse_cols[k_begin + x] = lse;
}

// One warp per tile row: d(loss)/d(l_ij) = grad * w * q_ij, w = 1/(2B) symmetric, 1/B
// otherwise, with q_ij = softmax_row_ij + [symmetric, j positive column] softmax_col_ij
// - (1 + [symmetric]) [j == offset + i] (0 where masked), so |q| <= 2. Writes
// q * operand_scale in the input dtype for the gradient GEMMs (power_of_two_scale) and
// adds the row's sum of q_ij * l_ij to tau_terms.
template <typename scalar_t, typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
logit_grad_kernel(Tile<acc_t> tile, bool symmetric, acc_t operand_scale, const acc_t* __restrict__ lse_rows,
                  const acc_t* __restrict__ lse_cols, scalar_t* __restrict__ grad_logits,
                  acc_t* __restrict__ tau_terms) {
  const int64_t r = int64_t{blockIdx.x} * kBlockWarps + threadIdx.x / kWarpSize;
  if (r >= tile.rows) return;  // r is the same for the whole warp
  const int lane = threadIdx.x % kWarpSize;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t row = tile.row0 + r;
  const acc_t lse_row = lse_rows[row];
  const acc_t diagonal = symmetric ? acc_t(2) : acc_t(1);
  const acc_t* l_row = tile.logits + r * tile.cols;
  scalar_t* dl_row = grad_logits + r * tile.cols;
  acc_t q_times_l = 0;
  for (int64_t c = lane; c < tile.cols; c += kWarpSize) {
    const int64_t col = tile.col0 + c;
    acc_t q = 0;
    if (!tile.masked_out(row, col)) {
      const acc_t l = l_row[c] * inv_tau;
      q = exp(l - lse_row);
      if (symmetric && tile.positive_column(col)) q += exp(l - lse_cols[col - tile.offset]);
      if (col == tile.offset + row) q -= diagonal;
      q_times_l += q * l;
    }
    dl_row[c] = static_cast<scalar_t>(q * operand_scale);
  }
  q_times_l = warp_sum(q_times_l);
  if (lane == 0) tau_terms[row] += q_times_l;
}

// Tile extents: kTileRows rows, and as many columns as `bytes_per_logit` allows.
struct TileSize {
  int64_t rows, cols;
};

TileSize plan_tiles(int64_t rows, int64_t cols, int64_t bytes_per_logit) {
  const int64_t tile_rows = std::min(rows, kTileRows);
  const int64_t tile_cols =
      std::min(cols, std::max<int64_t>(kBlockThreads, kScratchBytes / (tile_rows * bytes_per_logit)));
  return {tile_rows, tile_cols};
}

// body(row0, rows, col0, cols) for every tile of a [total_rows, total_cols] matrix.
template <typename F>
void for_each_tile(int64_t total_rows, int64_t total_cols, TileSize size, F&& body) {
  for (int64_t row0 = 0; row0 < total_rows; row0 += size.rows) {
    for (int64_t col0 = 0; col0 < total_cols; col0 += size.cols) {
      body(row0, std::min(size.rows, total_rows - row0), col0, std::min(size.cols, total_cols - col0));
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids, int64_t offset,
                                                                bool symmetric) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t batch = a.size(0), columns = b.size(0);
  const auto acc_dtype = accumulation_type(a);
  const auto acc_options = a.options().dtype(acc_dtype);
  const TileSize size = plan_tiles(batch, columns, c10::elementSize(acc_dtype));
  const at::Tensor logits_buffer = at::empty({size.rows * size.cols}, acc_options);
  const at::Tensor partial_buffer =
      at::empty({symmetric ? ceil_div(size.rows, kColumnGroupRows) * size.cols : 0}, acc_options);
  at::Tensor lse_rows = at::full({batch}, -INFINITY, acc_options);
  at::Tensor lse_cols = at::full({symmetric ? batch : 0}, -INFINITY, acc_options);
  at::Tensor positive = at::empty({batch}, acc_options);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "info_nce_cuda", [&] {
    using acc_t = accumulation_t<scalar_t>;
    for_each_tile(batch, columns, size, [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
      at::Tensor logits = scratch_view(logits_buffer, {rows, cols});
      matmul_into(logits, a.narrow(0, row0, rows), b.narrow(0, col0, cols).t());
      const Tile<acc_t> tile{logits.data_ptr<acc_t>(), rows, cols, row0, col0, batch, offset,
                             class_ids.data_ptr<int64_t>(), temperature.data_ptr<acc_t>()};
      row_lse_kernel<acc_t><<<grid_1d(ceil_div(rows, kBlockWarps)), kBlockThreads, 0, stream>>>(
          tile, lse_rows.data_ptr<acc_t>(), positive.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (!symmetric) return;
      // the tile's part of the positive columns offset..offset+B-1
      const int64_t c_begin = std::max<int64_t>(0, offset - col0);
      const int64_t c_end = std::min(cols, offset + batch - col0);
      if (c_begin >= c_end) return;
      const int64_t n_cols = c_end - c_begin;
      const int groups = static_cast<int>(ceil_div(rows, kColumnGroupRows));
      const dim3 partial_grid(grid_1d(ceil_div(n_cols, kBlockThreads)).x, groups);
      column_partial_lse_kernel<acc_t><<<partial_grid, kBlockThreads, 0, stream>>>(
          tile, c_begin, n_cols, partial_buffer.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      column_merge_kernel<acc_t><<<grid_1d(ceil_div(n_cols, kBlockThreads)), kBlockThreads, 0, stream>>>(
          partial_buffer.data_ptr<acc_t>(), groups, n_cols, col0 + c_begin - offset, lse_cols.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // row term mean_i (lse_row_i - l_i,offset+i); column term mean_k (lse_col_k - l_k,offset+k)
  at::Tensor loss = symmetric ? 0.5 * (lse_rows.mean() + lse_cols.mean()) - positive.mean()
                              : lse_rows.mean() - positive.mean();
  return {loss, lse_rows, lse_cols};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(const at::Tensor& grad_loss, const at::Tensor& a,
                                                                 const at::Tensor& b, const at::Tensor& temperature,
                                                                 const at::Tensor& class_ids,
                                                                 const at::Tensor& lse_rows,
                                                                 const at::Tensor& lse_cols, int64_t offset,
                                                                 bool symmetric) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t batch = a.size(0), columns = b.size(0);
  const auto acc_dtype = accumulation_type(a);
  const auto acc_options = a.options().dtype(acc_dtype);
  const TileSize size = plan_tiles(batch, columns, c10::elementSize(acc_dtype) + a.element_size());
  const at::Tensor logits_buffer = at::empty({size.rows * size.cols}, acc_options);
  const at::Tensor grad_logits_buffer = at::empty({size.rows * size.cols}, a.options());
  at::Tensor grad_a = at::zeros(a.sizes(), acc_options);
  at::Tensor grad_b = at::zeros(b.sizes(), acc_options);
  at::Tensor tau_terms = at::zeros({batch}, acc_options);
  const double operand_scale = power_of_two_scale(kGradLogitBound, kGradLogitCeiling);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "info_nce_backward_cuda", [&] {
    using acc_t = accumulation_t<scalar_t>;
    for_each_tile(batch, columns, size, [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
      const at::Tensor a_rows = a.narrow(0, row0, rows), b_cols = b.narrow(0, col0, cols);
      at::Tensor logits = scratch_view(logits_buffer, {rows, cols});
      at::Tensor grad_logits = scratch_view(grad_logits_buffer, {rows, cols});
      matmul_into(logits, a_rows, b_cols.t());
      const Tile<acc_t> tile{logits.data_ptr<acc_t>(), rows, cols, row0, col0, batch, offset,
                             class_ids.data_ptr<int64_t>(), temperature.data_ptr<acc_t>()};
      logit_grad_kernel<scalar_t, acc_t><<<grid_1d(ceil_div(rows, kBlockWarps)), kBlockThreads, 0, stream>>>(
          tile, symmetric, static_cast<acc_t>(operand_scale), lse_rows.data_ptr<acc_t>(),
          symmetric ? lse_cols.data_ptr<acc_t>() : nullptr, grad_logits.data_ptr<scalar_t>(),
          tau_terms.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // l = a b^T / tau: grad * w, 1/tau and 1/operand_scale are applied once at the end
      matmul_accumulate(grad_a.narrow(0, row0, rows), grad_logits, b_cols);
      matmul_accumulate(grad_b.narrow(0, col0, cols), grad_logits.t(), a_rows);
    });
  });
  const at::Tensor tau = temperature.reshape({});
  const double weight = (symmetric ? 0.5 : 1.0) / static_cast<double>(batch);
  const at::Tensor scale = grad_loss.reshape({}).to(acc_dtype) * weight;
  const at::Tensor operand_unscale = scale / (tau * operand_scale);
  return {(grad_a * operand_unscale).to(a.scalar_type()), (grad_b * operand_unscale).to(b.scalar_type()),
          (-tau_terms.sum() * (scale / tau)).reshape(temperature.sizes())};
}

}  // namespace tgfr::cuda
