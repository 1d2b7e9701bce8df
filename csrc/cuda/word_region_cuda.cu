// Word-region matching scores on CUDA (eqs. 3-5 of the DAMSM word-level matching).
//
// Work goes in chunks of `images` images x `captions` captions, sized so that the
// scratch stays under kScratchBytes whatever B_v and B_t. Within a chunk the two
// products of every pair are GEMMs through ATen (tensor cores, M = captions*T) and
// hand kernels do the rest, one thread block per (image, caption) pair tile:
//
//   S = W_c R_b^T          one GEMM, "pair-major" layout [captions*T, images*N]:
//                          pair (i, k) is the T x N tile at rows k*T, columns i*N
//   P, A                   attention_forward_kernel (softmax over t, then over j)
//   C = A R                batched GEMM over images, layout [images, captions*T, D]
//   scores                 cosine_lse_kernel (cosine, log-sum-exp over t)
//
// The backward recomputes S, P, A and C chunk by chunk and accumulates d_words and
// d_regions with GEMMs (each output row is owned by one chunk step, so no atomics). Its
// sums run in a fixed order: it is deterministic, with nothing to report under
// torch.use_deterministic_algorithms(True) (tests/test_cuda_compile.py checks for atomics).
#include "../tgfr.h"
#include "common.cuh"

namespace tgfr::cuda {

using namespace tgfr::cuda_common;

namespace {

// Where a chunk lives: images [image0, image0+images), captions [caption0, caption0+captions).
struct Chunk {
  int64_t image0, images, caption0, captions;
};

struct ChunkSize {
  int64_t images, captions;
};

// As many pairs as fit in the scratch budget, captions first (they give the GEMMs
// their long M = captions*T), with a few images so the batched GEMMs have a batch.
ChunkSize plan_chunks(int64_t B_v, int64_t B_t, int64_t bytes_per_pair) {
  const int64_t pairs = std::max<int64_t>(1, kScratchBytes / bytes_per_pair);
  const int64_t captions = std::min(B_t, ceil_div(pairs, std::min<int64_t>(B_v, 8)));
  const int64_t images = std::min(B_v, std::max<int64_t>(1, pairs / captions));
  return {images, captions};
}

template <typename F>
void for_each_chunk(int64_t B_v, int64_t B_t, ChunkSize size, F&& body) {
  for (int64_t image0 = 0; image0 < B_v; image0 += size.images) {
    for (int64_t caption0 = 0; caption0 < B_t; caption0 += size.captions) {
      body(Chunk{image0, std::min(size.images, B_v - image0), caption0, std::min(size.captions, B_t - caption0)});
    }
  }
}

// One block per pair tile. On entry `sp` holds S, on exit P (eq. 3: softmax over the
// valid words of each region column, 0 on padded words); `attn` receives A (eq. 4:
// softmax over regions of gamma1 * P, 0 on padded words). Both tiles are pair-major.
template <typename scalar_t, typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
attention_forward_kernel(acc_t* __restrict__ sp, scalar_t* __restrict__ attn, const bool* __restrict__ word_mask,
                         int T, int N, int images, acc_t gamma1) {
  const int image = blockIdx.x % images;
  const int caption = blockIdx.x / images;
  const int64_t ld = int64_t{images} * N;
  const int64_t tile = int64_t{caption} * T * ld + int64_t{image} * N;
  acc_t* s = sp + tile;
  scalar_t* a = attn + tile;
  const bool* valid = word_mask + int64_t{caption} * T;

  for (int j = threadIdx.x; j < N; j += blockDim.x) {
    acc_t m = negative_infinity<acc_t>();
    for (int t = 0; t < T; ++t)
      if (valid[t]) m = max(m, s[t * ld + j]);
    acc_t sum = 0;
    for (int t = 0; t < T; ++t)
      if (valid[t]) sum += exp(s[t * ld + j] - m);
    const acc_t inv = sum > acc_t(0) ? acc_t(1) / sum : acc_t(0);
    for (int t = 0; t < T; ++t) s[t * ld + j] = valid[t] ? exp(s[t * ld + j] - m) * inv : acc_t(0);
  }
  __syncthreads();

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  for (int t = warp; t < T; t += blockDim.x / kWarpSize) {
    const acc_t* p = s + t * ld;
    scalar_t* a_row = a + t * ld;
    if (!valid[t]) {
      for (int j = lane; j < N; j += kWarpSize) a_row[j] = scalar_t(0);
      continue;
    }
    acc_t m = negative_infinity<acc_t>();
    for (int j = lane; j < N; j += kWarpSize) m = max(m, gamma1 * p[j]);
    m = warp_max(m);
    acc_t sum = 0;
    for (int j = lane; j < N; j += kWarpSize) sum += exp(gamma1 * p[j] - m);
    const acc_t inv = acc_t(1) / warp_sum(sum);
    for (int j = lane; j < N; j += kWarpSize) a_row[j] = static_cast<scalar_t>(exp(gamma1 * p[j] - m) * inv);
  }
}

// Per token: <w, c>, |w|^2 and |c|^2, reduced over D by one warp (every lane gets them).
template <typename scalar_t, typename acc_t>
struct TokenDots {
  acc_t wc, ww, cc;

  __device__ __forceinline__ TokenDots(const scalar_t* w, const acc_t* c, int D) {
    const int lane = threadIdx.x % kWarpSize;
    wc = ww = cc = 0;
    for (int d = lane; d < D; d += kWarpSize) {
      const acc_t wd = static_cast<acc_t>(w[d]);
      wc += wd * c[d];
      ww += wd * wd;
      cc += c[d] * c[d];
    }
    wc = warp_sum(wc);
    ww = warp_sum(ww);
    cc = warp_sum(cc);
  }

  // |w||c| before the clamp at eps
  __device__ __forceinline__ acc_t norm_product() const { return sqrt(ww) * sqrt(cc); }
};

// gamma2 * cos_t of every valid token of one pair into `logits` (-inf on padded
// words), then their log-sum-exp (eq. 5), returned to every thread of the block.
// `context` is the pair's [T, D] rows of C; called by all threads of the block.
template <typename scalar_t, typename acc_t>
__device__ acc_t pair_cosine_lse(const scalar_t* words, const acc_t* context, const bool* valid, int T, int D,
                                 acc_t gamma2, acc_t eps, acc_t* logits, acc_t* lse) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  for (int t = warp; t < T; t += blockDim.x / kWarpSize) {
    acc_t logit = negative_infinity<acc_t>();
    if (valid[t]) {
      TokenDots<scalar_t, acc_t> dots(words + int64_t{t} * D, context + int64_t{t} * D, D);
      logit = gamma2 * dots.wc / max(dots.norm_product(), eps);
    }
    if (lane == 0) logits[t] = logit;
  }
  __syncthreads();
  if (warp == 0) {
    OnlineLse<acc_t> state;
    for (int t = lane; t < T; t += kWarpSize)
      if (valid[t]) state.add(logits[t]);
    state.warp_merge();
    if (lane == 0) *lse = state.value();
  }
  __syncthreads();
  return *lse;
}

// One block per pair: scores[image, caption] = log-sum-exp over valid t of gamma2 * cos_t.
// `context` is C in layout [images, captions*T, D]; `scores` points at the chunk's
// corner of the [B_v, B_t] output, row stride `ld_scores`.
template <typename scalar_t, typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
cosine_lse_kernel(const scalar_t* __restrict__ words, const acc_t* __restrict__ context,
                  const bool* __restrict__ word_mask, scalar_t* __restrict__ scores, int64_t ld_scores, int T, int D,
                  int images, int captions, acc_t gamma2, acc_t eps) {
  acc_t* logits = dynamic_shared<acc_t>();
  const int image = blockIdx.x % images;
  const int caption = blockIdx.x / images;
  const acc_t lse = pair_cosine_lse<scalar_t, acc_t>(
      words + int64_t{caption} * T * D, context + (int64_t{image} * captions + caption) * T * D,
      word_mask + int64_t{caption} * T, T, D, gamma2, eps, logits, logits + T);
  if (threadIdx.x == 0) scores[image * ld_scores + caption] = static_cast<scalar_t>(lse);
}

// One block per caption, looping over the chunk's images. For each pair it recomputes
// cos_t and the score in acc_t, then with dcos_t = g * gamma2 * exp(gamma2*cos_t - score)
// writes d_context (layout of C, input dtype) and adds the direct cosine term to
// grad_words (the chunk's [captions*T, D] rows; this block owns its caption's rows).
// g is grad_scores times *grad_scale (power_of_two_scale: |g| <= 1), so that every
// gradient stored in the input dtype sits well inside float16's range; the caller
// divides the results by it. A caption without words has no valid token: its words,
// its context and so the regions get no gradient from it, whatever its grad_scores.
template <typename scalar_t, typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
cosine_backward_kernel(const scalar_t* __restrict__ words, const acc_t* __restrict__ context,
                       const bool* __restrict__ word_mask, const scalar_t* __restrict__ grad_scores,
                       int64_t ld_scores, const acc_t* __restrict__ grad_scale, scalar_t* __restrict__ grad_context,
                       acc_t* __restrict__ grad_words, int T, int D, int images, int captions, acc_t gamma2,
                       acc_t eps) {
  acc_t* logits = dynamic_shared<acc_t>();
  const int caption = blockIdx.x;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const scalar_t* w_caption = words + int64_t{caption} * T * D;
  const bool* valid = word_mask + int64_t{caption} * T;
  acc_t* gw_caption = grad_words + int64_t{caption} * T * D;

  for (int image = 0; image < images; ++image) {
    const int64_t pair_rows = (int64_t{image} * captions + caption) * T;
    const acc_t* c_pair = context + pair_rows * D;
    scalar_t* gc_pair = grad_context + pair_rows * D;
    const acc_t score = pair_cosine_lse<scalar_t, acc_t>(w_caption, c_pair, valid, T, D, gamma2, eps, logits,
                                                         logits + T);
    const acc_t g = static_cast<acc_t>(grad_scores[image * ld_scores + caption]) * *grad_scale;
    for (int t = warp; t < T; t += blockDim.x / kWarpSize) {
      const scalar_t* w = w_caption + int64_t{t} * D;
      const acc_t* c = c_pair + int64_t{t} * D;
      // d/dw = w_to_w * w + c_to_w * c,  d/dc = w_to_c * w + c_to_c * c
      acc_t w_to_w = 0, c_to_w = 0, w_to_c = 0, c_to_c = 0;
      if (valid[t]) {
        TokenDots<scalar_t, acc_t> dots(w, c, D);
        const acc_t norm_product = dots.norm_product();
        const acc_t dcos = g * gamma2 * exp(logits[t] - score);
        if (norm_product > eps) {
          const acc_t cos = dots.wc / norm_product;
          c_to_w = w_to_c = dcos / norm_product;
          w_to_w = -dcos * cos / dots.ww;
          c_to_c = -dcos * cos / dots.cc;
        } else {  // the denominator is the constant eps
          c_to_w = w_to_c = dcos / eps;
        }
      }
      acc_t* gw = gw_caption + int64_t{t} * D;
      scalar_t* gc = gc_pair + int64_t{t} * D;
      for (int d = lane; d < D; d += kWarpSize) {
        const acc_t wd = static_cast<acc_t>(w[d]);
        gw[d] += w_to_w * wd + c_to_w * c[d];
        gc[d] = static_cast<scalar_t>(w_to_c * wd + c_to_c * c[d]);
      }
    }
    __syncthreads();  // logits are rewritten for the next image
  }
}

// One block per pair tile: back through both softmaxes. `p` is P (pair-major),
// `grad_attn` is dA on entry (layout [images, captions*T, N]) and is overwritten
// with dP; A is recomputed from P. Writes dS (pair-major, input dtype):
//   dZ = A * (dA - rowsum(dA * A)), dP = gamma1 * dZ, dS = P * (dP - colsum_valid(dP * P)).
template <typename scalar_t, typename acc_t>
__global__ void TGFR_LAUNCH_BOUNDS
attention_backward_kernel(const acc_t* __restrict__ p, acc_t* __restrict__ grad_attn,
                          const bool* __restrict__ word_mask, scalar_t* __restrict__ grad_sim, int T, int N,
                          int images, int captions, acc_t gamma1) {
  const int image = blockIdx.x % images;
  const int caption = blockIdx.x / images;
  const int64_t ld = int64_t{images} * N;
  const int64_t tile = int64_t{caption} * T * ld + int64_t{image} * N;
  const acc_t* p_tile = p + tile;
  scalar_t* ds_tile = grad_sim + tile;
  acc_t* dp_tile = grad_attn + (int64_t{image} * captions + caption) * T * N;
  const bool* valid = word_mask + int64_t{caption} * T;

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  for (int t = warp; t < T; t += blockDim.x / kWarpSize) {
    const acc_t* p_row = p_tile + t * ld;
    acc_t* dp_row = dp_tile + int64_t{t} * N;
    if (!valid[t]) {
      for (int j = lane; j < N; j += kWarpSize) dp_row[j] = 0;
      continue;
    }
    acc_t m = negative_infinity<acc_t>();
    for (int j = lane; j < N; j += kWarpSize) m = max(m, gamma1 * p_row[j]);
    m = warp_max(m);
    acc_t sum = 0, weighted = 0;
    for (int j = lane; j < N; j += kWarpSize) {
      const acc_t e = exp(gamma1 * p_row[j] - m);
      sum += e;
      weighted += e * dp_row[j];
    }
    sum = warp_sum(sum);
    const acc_t row_dot = warp_sum(weighted) / sum;  // rowsum(dA * A)
    for (int j = lane; j < N; j += kWarpSize) {
      const acc_t a = exp(gamma1 * p_row[j] - m) / sum;
      dp_row[j] = gamma1 * a * (dp_row[j] - row_dot);
    }
  }
  __syncthreads();  // dP rows are read column-wise below

  for (int j = threadIdx.x; j < N; j += blockDim.x) {
    acc_t col_dot = 0;
    for (int t = 0; t < T; ++t)
      if (valid[t]) col_dot += dp_tile[int64_t{t} * N + j] * p_tile[t * ld + j];
    for (int t = 0; t < T; ++t) {
      const acc_t ds = valid[t] ? p_tile[t * ld + j] * (dp_tile[int64_t{t} * N + j] - col_dot) : acc_t(0);
      ds_tile[t * ld + j] = static_cast<scalar_t>(ds);
    }
  }
}

// Shapes and hyper-parameters of one call, and the views of one chunk.
struct Problem {
  at::Tensor words, regions, word_mask;
  int64_t B_t, T, D, B_v, N;
  double gamma1, gamma2, eps;

  Problem(const at::Tensor& w, const at::Tensor& r, const at::Tensor& m, double g1, double g2, double e)
      : words(w), regions(r), word_mask(m), B_t(w.size(0)), T(w.size(1)), D(w.size(2)), B_v(r.size(0)),
        N(r.size(1)), gamma1(g1), gamma2(g2), eps(e) {}

  at::Tensor chunk_words(const Chunk& c) const { return words.narrow(0, c.caption0, c.captions).view({c.captions * T, D}); }
  at::Tensor chunk_regions(const Chunk& c) const { return regions.narrow(0, c.image0, c.images); }
  at::Tensor chunk_mask(const Chunk& c) const { return word_mask.narrow(0, c.caption0, c.captions); }

  size_t logits_shared_bytes(size_t acc_bytes) const { return (T + 1) * acc_bytes; }
};

// The A tile of a chunk (pair-major [captions*T, images*N]) seen as [images, captions*T, N].
at::Tensor by_image(const at::Tensor& pair_major, const Chunk& c, int64_t T, int64_t N) {
  return pair_major.view({c.captions * T, c.images, N}).permute({1, 0, 2});
}

// S = W_c R_b^T, then P (in place) and A: the part the forward and backward share.
template <typename scalar_t, typename acc_t>
void attention_forward(const Problem& pb, const Chunk& c, at::Tensor& sp, at::Tensor& attn, cudaStream_t stream) {
  const at::Tensor regions = pb.chunk_regions(c);
  matmul_into(sp, pb.chunk_words(c), regions.view({c.images * pb.N, pb.D}).t());
  attention_forward_kernel<scalar_t, acc_t><<<grid_1d(c.images * c.captions), kBlockThreads, 0, stream>>>(
      sp.data_ptr<acc_t>(), attn.data_ptr<scalar_t>(), pb.chunk_mask(c).data_ptr<bool>(), pb.T, pb.N, c.images,
      static_cast<acc_t>(pb.gamma1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_shared_memory(const Problem& pb, size_t acc_bytes) {
  TORCH_CHECK(pb.logits_shared_bytes(acc_bytes) <= 48 * 1024, "word_region_scores on CUDA supports T up to ",
              48 * 1024 / acc_bytes - 1, " tokens, got words with T = ", pb.T);
}

}  // namespace

at::Tensor word_region_scores_forward(const at::Tensor& words, const at::Tensor& regions,
                                      const at::Tensor& word_mask, double gamma1, double gamma2, double eps) {
  c10::cuda::CUDAGuard guard(words.device());
  const Problem pb(words, regions, word_mask, gamma1, gamma2, eps);
  const auto acc_dtype = accumulation_type(words);
  const int64_t acc_bytes = c10::elementSize(acc_dtype), in_bytes = words.element_size();
  check_shared_memory(pb, acc_bytes);
  // per pair: S/P (acc), A (input dtype), C (acc)
  const int64_t bytes_per_pair = pb.T * pb.N * (acc_bytes + in_bytes) + pb.T * pb.D * acc_bytes;
  const ChunkSize size = plan_chunks(pb.B_v, pb.B_t, bytes_per_pair);
  const int64_t max_pairs = size.images * size.captions;
  const at::Tensor sp_buffer = at::empty({max_pairs * pb.T * pb.N}, words.options().dtype(acc_dtype));
  const at::Tensor attn_buffer = at::empty({max_pairs * pb.T * pb.N}, words.options());
  const at::Tensor context_buffer = at::empty({max_pairs * pb.T * pb.D}, words.options().dtype(acc_dtype));
  at::Tensor scores = at::empty({pb.B_v, pb.B_t}, words.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "word_region_scores_cuda", [&] {
    using acc_t = accumulation_t<scalar_t>;
    for_each_chunk(pb.B_v, pb.B_t, size, [&](const Chunk& c) {
      at::Tensor sp = scratch_view(sp_buffer, {c.captions * pb.T, c.images * pb.N});
      at::Tensor attn = scratch_view(attn_buffer, {c.captions * pb.T, c.images * pb.N});
      at::Tensor context = scratch_view(context_buffer, {c.images, c.captions * pb.T, pb.D});
      attention_forward<scalar_t, acc_t>(pb, c, sp, attn, stream);
      batched_matmul_into(context, by_image(attn, c, pb.T, pb.N), pb.chunk_regions(c));
      cosine_lse_kernel<scalar_t, acc_t><<<grid_1d(c.images * c.captions), kBlockThreads,
                                           pb.logits_shared_bytes(sizeof(acc_t)), stream>>>(
          pb.chunk_words(c).data_ptr<scalar_t>(), context.data_ptr<acc_t>(), pb.chunk_mask(c).data_ptr<bool>(),
          scores.data_ptr<scalar_t>() + c.image0 * pb.B_t + c.caption0, pb.B_t, pb.T, pb.D, c.images,
          c.captions, static_cast<acc_t>(gamma2), static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return scores;
}

// The backward recomputes each score in the accumulation dtype (for float16/bfloat16
// inputs more accurate than the rounded forward output).
std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(const at::Tensor& grad_scores,
                                                               const at::Tensor& words, const at::Tensor& regions,
                                                               const at::Tensor& word_mask, double gamma1,
                                                               double gamma2, double eps) {
  c10::cuda::CUDAGuard guard(words.device());
  const Problem pb(words, regions, word_mask, gamma1, gamma2, eps);
  const auto acc_dtype = accumulation_type(words);
  const auto acc_options = words.options().dtype(acc_dtype);
  const int64_t acc_bytes = c10::elementSize(acc_dtype), in_bytes = words.element_size();
  check_shared_memory(pb, acc_bytes);
  // per pair: S/P, dA/dP (acc); A, dS (input dtype); C (acc); dC (input dtype)
  const int64_t bytes_per_pair = pb.T * pb.N * 2 * (acc_bytes + in_bytes) + pb.T * pb.D * (acc_bytes + in_bytes);
  const ChunkSize size = plan_chunks(pb.B_v, pb.B_t, bytes_per_pair);
  const int64_t max_pairs = size.images * size.captions;
  const at::Tensor sp_buffer = at::empty({max_pairs * pb.T * pb.N}, acc_options);
  const at::Tensor attn_buffer = at::empty({max_pairs * pb.T * pb.N}, words.options());
  const at::Tensor context_buffer = at::empty({max_pairs * pb.T * pb.D}, acc_options);
  const at::Tensor grad_context_buffer = at::empty({max_pairs * pb.T * pb.D}, words.options());
  const at::Tensor grad_attn_buffer = at::empty({max_pairs * pb.T * pb.N}, acc_options);
  const at::Tensor grad_sim_buffer = at::empty({max_pairs * pb.T * pb.N}, words.options());
  at::Tensor grad_words = at::zeros({pb.B_t * pb.T, pb.D}, acc_options);
  at::Tensor grad_regions = at::zeros({pb.B_v * pb.N, pb.D}, acc_options);
  // captions without words take no part (their upstream gradient may be anything)
  const at::Tensor has_words = word_mask.any(1).unsqueeze(0);
  const at::Tensor grad_scale =
      power_of_two_scale(grad_scores.to(acc_dtype).masked_fill(has_words.logical_not(), 0).abs().amax(), 1.0);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, words.scalar_type(), "word_region_scores_backward_cuda", [&] {
    using acc_t = accumulation_t<scalar_t>;
    for_each_chunk(pb.B_v, pb.B_t, size, [&](const Chunk& c) {
      const int64_t rows = c.captions * pb.T, cols = c.images * pb.N;
      at::Tensor sp = scratch_view(sp_buffer, {rows, cols});
      at::Tensor attn = scratch_view(attn_buffer, {rows, cols});
      at::Tensor context = scratch_view(context_buffer, {c.images, rows, pb.D});
      at::Tensor grad_context = scratch_view(grad_context_buffer, {c.images, rows, pb.D});
      at::Tensor grad_attn = scratch_view(grad_attn_buffer, {c.images, rows, pb.N});
      at::Tensor grad_sim = scratch_view(grad_sim_buffer, {rows, cols});
      const at::Tensor w_chunk = pb.chunk_words(c);
      const at::Tensor r_chunk = pb.chunk_regions(c);
      const at::Tensor r_rows = r_chunk.view({cols, pb.D});
      at::Tensor gw_chunk = grad_words.narrow(0, c.caption0 * pb.T, rows);
      at::Tensor gr_chunk = grad_regions.narrow(0, c.image0 * pb.N, cols);
      const bool* mask = pb.chunk_mask(c).data_ptr<bool>();

      attention_forward<scalar_t, acc_t>(pb, c, sp, attn, stream);
      batched_matmul_into(context, by_image(attn, c, pb.T, pb.N), r_chunk);
      cosine_backward_kernel<scalar_t, acc_t><<<grid_1d(c.captions), kBlockThreads,
                                                pb.logits_shared_bytes(sizeof(acc_t)), stream>>>(
          w_chunk.data_ptr<scalar_t>(), context.data_ptr<acc_t>(), mask,
          grad_scores.data_ptr<scalar_t>() + c.image0 * pb.B_t + c.caption0, pb.B_t, grad_scale.data_ptr<acc_t>(),
          grad_context.data_ptr<scalar_t>(), gw_chunk.data_ptr<acc_t>(), pb.T, pb.D, c.images, c.captions,
          static_cast<acc_t>(gamma2), static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // dA = dC R^T, and the context path into the regions: dR += A^T dC
      batched_matmul_into(grad_attn, grad_context, r_chunk.transpose(1, 2));
      batched_matmul_accumulate(gr_chunk.view({c.images, pb.N, pb.D}), by_image(attn, c, pb.T, pb.N).transpose(1, 2),
                                grad_context);
      attention_backward_kernel<scalar_t, acc_t><<<grid_1d(c.images * c.captions), kBlockThreads, 0, stream>>>(
          sp.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), mask, grad_sim.data_ptr<scalar_t>(), pb.T, pb.N,
          c.images, c.captions, static_cast<acc_t>(gamma1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // S = W R^T: dW += dS R, dR += dS^T W (one GEMM each over the whole chunk)
      matmul_accumulate(gw_chunk, grad_sim, r_rows);
      matmul_accumulate(gr_chunk, grad_sim.t(), w_chunk);
    });
  });
  return {grad_words.div_(grad_scale).view({pb.B_t, pb.T, pb.D}).to(words.scalar_type()),
          grad_regions.div_(grad_scale).view({pb.B_v, pb.N, pb.D}).to(regions.scalar_type())};
}

}  // namespace tgfr::cuda
