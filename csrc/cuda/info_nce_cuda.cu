// Symmetric InfoNCE on CUDA (DESIGN.md §1b) without the B x B logits.
//
// The logits are visited in tiles of at most kTileRows rows x as many columns as fit
// in kScratchBytes. Each tile is one GEMM (input dtype in, accumulation dtype out);
// the forward folds it into running row and column log-sum-exps, the backward
// recomputes it, turns it into d(loss)/d(logits) and accumulates the gradients of
// a and b with two more GEMMs. The temperature stays on the device (kernels read it
// through a pointer) and the incoming gradient is applied with tensor ops: the host
// never synchronises.
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

// Pairs of the same identity other than the positive pair leave both softmaxes.
__device__ __forceinline__ bool masked_out(int64_t row, int64_t col, const int64_t* class_ids) {
  return row != col && class_ids[row] == class_ids[col];
}

// Where a tile lives in the logits and how they are scaled.
template <typename acc_t>
struct Tile {
  const acc_t* logits;  // [rows, cols] unscaled a_r b_c^T
  int64_t rows, cols, row0, col0;
  const int64_t* class_ids;
  const acc_t* temperature;
};

// One warp per tile row: folds the row's masked logits / tau into lse_rows and, when
// the tile holds the row's positive pair, records that logit in `positive`.
template <typename acc_t>
__global__ void row_lse_kernel(Tile<acc_t> tile, acc_t* __restrict__ lse_rows, acc_t* __restrict__ positive) {
  const int64_t r = int64_t{blockIdx.x} * kBlockWarps + threadIdx.x / kWarpSize;
  if (r >= tile.rows) return;  // r is the same for the whole warp
  const int lane = threadIdx.x % kWarpSize;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t row = tile.row0 + r;
  const acc_t* l = tile.logits + r * tile.cols;
  OnlineLse<acc_t> state;
  for (int64_t c = lane; c < tile.cols; c += kWarpSize) {
    if (!masked_out(row, tile.col0 + c, tile.class_ids)) state.add(l[c] * inv_tau);
  }
  state.warp_merge();
  if (lane == 0) {
    lse_rows[row] = log_add_exp(lse_rows[row], state.value());
    if (row >= tile.col0 && row < tile.col0 + tile.cols) positive[row] = l[row - tile.col0] * inv_tau;
  }
}

// One thread per tile column and group of kColumnGroupRows rows (blockIdx.y): the
// log-sum-exp of that piece of the column, into partial[group, column].
template <typename acc_t>
__global__ void column_partial_lse_kernel(Tile<acc_t> tile, acc_t* __restrict__ partial) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= tile.cols) return;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t col = tile.col0 + c;
  const int64_t r_begin = int64_t{blockIdx.y} * kColumnGroupRows;
  const int64_t r_end = r_begin + kColumnGroupRows < tile.rows ? r_begin + kColumnGroupRows : tile.rows;
  OnlineLse<acc_t> state;
  for (int64_t r = r_begin; r < r_end; ++r) {
    if (!masked_out(tile.row0 + r, col, tile.class_ids)) state.add(tile.logits[r * tile.cols + c] * inv_tau);
  }
  partial[blockIdx.y * tile.cols + c] = state.value();
}

// One thread per tile column: folds the column's partial results into lse_cols.
template <typename acc_t>
__global__ void column_merge_kernel(const acc_t* __restrict__ partial, int groups, int64_t cols, int64_t col0,
                                    acc_t* __restrict__ lse_cols) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  acc_t lse = lse_cols[col0 + c];
  for (int g = 0; g < groups; ++g) lse = log_add_exp(lse, partial[g * cols + c]);
  lse_cols[col0 + c] = lse;
}

// One warp per tile row: d(loss)/d(l_ij) = grad / (2B) * q_ij with
// q_ij = softmax_row + softmax_col - 2[i == j] (0 where masked). Writes q, which lies in
// [-2, 2] whatever B (grad / (2B) could underflow float16), in the input dtype for the
// gradient GEMMs, and adds the row's sum of q_ij * l_ij to tau_terms.
template <typename scalar_t, typename acc_t>
__global__ void logit_grad_kernel(Tile<acc_t> tile, const acc_t* __restrict__ lse_rows,
                                  const acc_t* __restrict__ lse_cols, scalar_t* __restrict__ grad_logits,
                                  acc_t* __restrict__ tau_terms) {
  const int64_t r = int64_t{blockIdx.x} * kBlockWarps + threadIdx.x / kWarpSize;
  if (r >= tile.rows) return;  // r is the same for the whole warp
  const int lane = threadIdx.x % kWarpSize;
  const acc_t inv_tau = acc_t(1) / *tile.temperature;
  const int64_t row = tile.row0 + r;
  const acc_t lse_row = lse_rows[row];
  const acc_t* l_row = tile.logits + r * tile.cols;
  scalar_t* dl_row = grad_logits + r * tile.cols;
  acc_t q_times_l = 0;
  for (int64_t c = lane; c < tile.cols; c += kWarpSize) {
    const int64_t col = tile.col0 + c;
    acc_t q = 0;
    if (!masked_out(row, col, tile.class_ids)) {
      const acc_t l = l_row[c] * inv_tau;
      q = exp(l - lse_row) + exp(l - lse_cols[col]) - (col == row ? acc_t(2) : acc_t(0));
      q_times_l += q * l;
    }
    dl_row[c] = static_cast<scalar_t>(q);
  }
  q_times_l = warp_sum(q_times_l);
  if (lane == 0) tau_terms[row] += q_times_l;
}

// Tile extents: kTileRows rows, and as many columns as `bytes_per_logit` allows.
struct TileSize {
  int64_t rows, cols;
};

TileSize plan_tiles(int64_t batch, int64_t bytes_per_logit) {
  const int64_t rows = std::min(batch, kTileRows);
  const int64_t cols = std::min(batch, std::max<int64_t>(kBlockThreads, kScratchBytes / (rows * bytes_per_logit)));
  return {rows, cols};
}

template <typename F>
void for_each_tile(int64_t batch, TileSize size, F&& body) {
  for (int64_t row0 = 0; row0 < batch; row0 += size.rows) {
    for (int64_t col0 = 0; col0 < batch; col0 += size.cols) {
      body(row0, std::min(size.rows, batch - row0), col0, std::min(size.cols, batch - col0));
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& class_ids) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t batch = a.size(0);
  const auto acc_dtype = accumulation_dtype(a.scalar_type());
  const auto acc_options = a.options().dtype(acc_dtype);
  const TileSize size = plan_tiles(batch, c10::elementSize(acc_dtype));
  const at::Tensor logits_buffer = at::empty({size.rows * size.cols}, acc_options);
  const at::Tensor partial_buffer = at::empty({ceil_div(size.rows, kColumnGroupRows) * size.cols}, acc_options);
  at::Tensor lse_rows = at::full({batch}, -INFINITY, acc_options);
  at::Tensor lse_cols = at::full({batch}, -INFINITY, acc_options);
  at::Tensor positive = at::empty({batch}, acc_options);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "info_nce_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    for_each_tile(batch, size, [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
      at::Tensor logits = scratch_view(logits_buffer, {rows, cols});
      matmul_into(logits, a.narrow(0, row0, rows), b.narrow(0, col0, cols).t());
      const Tile<acc_t> tile{logits.data_ptr<acc_t>(), rows, cols, row0, col0, class_ids.data_ptr<int64_t>(),
                             temperature.data_ptr<acc_t>()};
      row_lse_kernel<acc_t><<<ceil_div(rows, kBlockWarps), kBlockThreads, 0, stream>>>(
          tile, lse_rows.data_ptr<acc_t>(), positive.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int groups = static_cast<int>(ceil_div(rows, kColumnGroupRows));
      const dim3 partial_grid(static_cast<unsigned>(ceil_div(cols, kBlockThreads)), groups);
      column_partial_lse_kernel<acc_t><<<partial_grid, kBlockThreads, 0, stream>>>(tile,
                                                                                   partial_buffer.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      column_merge_kernel<acc_t><<<ceil_div(cols, kBlockThreads), kBlockThreads, 0, stream>>>(
          partial_buffer.data_ptr<acc_t>(), groups, cols, col0, lse_cols.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // mean_i (lse_row_i - l_ii) and mean_k (lse_col_k - l_kk), averaged
  at::Tensor loss = 0.5 * (lse_rows.mean() + lse_cols.mean()) - positive.mean();
  return {loss, lse_rows, lse_cols};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(const at::Tensor& grad_loss, const at::Tensor& a,
                                                                 const at::Tensor& b, const at::Tensor& temperature,
                                                                 const at::Tensor& class_ids,
                                                                 const at::Tensor& lse_rows,
                                                                 const at::Tensor& lse_cols) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t batch = a.size(0);
  const auto acc_dtype = accumulation_dtype(a.scalar_type());
  const auto acc_options = a.options().dtype(acc_dtype);
  const TileSize size = plan_tiles(batch, c10::elementSize(acc_dtype) + a.element_size());
  const at::Tensor logits_buffer = at::empty({size.rows * size.cols}, acc_options);
  const at::Tensor grad_logits_buffer = at::empty({size.rows * size.cols}, a.options());
  at::Tensor grad_a = at::zeros(a.sizes(), acc_options);
  at::Tensor grad_b = at::zeros(b.sizes(), acc_options);
  at::Tensor tau_terms = at::zeros({batch}, acc_options);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "info_nce_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    for_each_tile(batch, size, [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
      const at::Tensor a_rows = a.narrow(0, row0, rows), b_cols = b.narrow(0, col0, cols);
      at::Tensor logits = scratch_view(logits_buffer, {rows, cols});
      at::Tensor grad_logits = scratch_view(grad_logits_buffer, {rows, cols});
      matmul_into(logits, a_rows, b_cols.t());
      const Tile<acc_t> tile{logits.data_ptr<acc_t>(), rows, cols, row0, col0, class_ids.data_ptr<int64_t>(),
                             temperature.data_ptr<acc_t>()};
      logit_grad_kernel<scalar_t, acc_t><<<ceil_div(rows, kBlockWarps), kBlockThreads, 0, stream>>>(
          tile, lse_rows.data_ptr<acc_t>(), lse_cols.data_ptr<acc_t>(), grad_logits.data_ptr<scalar_t>(),
          tau_terms.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // l = a b^T / tau: grad / (2B) and 1/tau are applied once at the end
      matmul_accumulate(grad_a.narrow(0, row0, rows), grad_logits, b_cols);
      matmul_accumulate(grad_b.narrow(0, col0, cols), grad_logits.t(), a_rows);
    });
  });
  const at::Tensor tau = temperature.reshape({});
  const at::Tensor scale = grad_loss.reshape({}).to(acc_dtype) / (2.0 * static_cast<double>(batch));
  return {(grad_a * (scale / tau)).to(a.scalar_type()), (grad_b * (scale / tau)).to(b.scalar_type()),
          (-tau_terms.sum() * (scale / tau)).reshape(temperature.sizes())};
}

}  // namespace tgfr::cuda
