// Device and host helpers shared by the CUDA kernels of both ops.
//
// Precision convention: GEMM operands stay in the input dtype (tensor cores for
// float16/bfloat16), GEMM results and every softmax/log-sum-exp are in the
// accumulation dtype (accumulation.h: float, or double for double inputs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "../accumulation.h"

namespace tgfr::cuda_common {

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / kWarpSize;
// Upper bound on the scratch one chunk of work may allocate, whatever the batch size
// (a build-time knob; the emulated tests make it tiny to exercise the chunking).
#ifndef TGFR_CUDA_SCRATCH_BYTES
#define TGFR_CUDA_SCRATCH_BYTES (int64_t{256} << 20)
#endif
constexpr int64_t kScratchBytes = TGFR_CUDA_SCRATCH_BYTES;

// The block's dynamic shared memory, sized at launch.
extern __shared__ __align__(16) unsigned char dynamic_shared_bytes[];

template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  return reinterpret_cast<T*>(dynamic_shared_bytes);
}

// Every kernel is launched with kBlockThreads threads; __launch_bounds__ lets the
// compiler budget registers for exactly that (255 per thread at most).
#define TGFR_LAUNCH_BOUNDS __launch_bounds__(tgfr::cuda_common::kBlockThreads)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A one-dimensional grid of `blocks` blocks (x may reach 2^31 - 1; y and z only 65535).
inline dim3 grid_1d(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= int64_t{0x7fffffff}, "tgfr CUDA kernel grid of ", blocks, " blocks");
  return dim3(static_cast<unsigned>(blocks));
}

// ATen's GEMMs with an out_dtype (aten::mm.dtype_out, aten::bmm.dtype_out: float16/bfloat16
// in, float32 out, accumulated in float32 by cuBLAS) have CUDA kernels only. The CPU
// emulation of these sources multiplies float32 copies instead: a product of two
// float16/bfloat16 numbers is exact in float32, so only the summation order differs.
#ifdef TGFR_CUDA_EMULATION
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

// out = a @ b with a, b in the input dtype and out in the accumulation dtype.
inline void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const auto dtype = out.scalar_type();
  if (a.scalar_type() == dtype) {
    at::mm_out(out, a, b);
  } else if (kEmulated) {
    at::mm_out(out, a.to(dtype), b.to(dtype));
  } else {
    at::mm_out(out, a, b, dtype);
  }
}

// Batched form of matmul_into: out[i] = a[i] @ b[i].
inline void batched_matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const auto dtype = out.scalar_type();
  if (a.scalar_type() == dtype) {
    at::bmm_out(out, a, b);
  } else if (kEmulated) {
    at::bmm_out(out, a.to(dtype), b.to(dtype));
  } else {
    at::bmm_out(out, a, b, dtype);
  }
}

// total += a @ b (total in the accumulation dtype, a and b in the input dtype). The
// mixed case goes through a temporary: aten::addmm.dtype_out requires `self` in the
// input dtype, so it cannot accumulate into a float32 total.
inline void matmul_accumulate(at::Tensor total, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == total.scalar_type()) {
    total.addmm_(a, b);
  } else {
    at::Tensor product = at::empty({a.size(0), b.size(1)}, total.options());
    matmul_into(product, a, b);
    total.add_(product);
  }
}

// total[i] += a[i] @ b[i].
inline void batched_matmul_accumulate(at::Tensor total, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == total.scalar_type()) {
    total.baddbmm_(a, b);
  } else {
    at::Tensor product = at::empty({a.size(0), a.size(1), b.size(2)}, total.options());
    batched_matmul_into(product, a, b);
    total.add_(product);
  }
}

// Gradient operands stored in the input dtype for a GEMM are first multiplied by a
// power of two (exact in every dtype, undone exactly on the float32/float64 result):
// float16 keeps 11 significant bits only down to 2^-14 and flushes below 2^-24, so
// without it small gradients (a softmax probability ~2/B at large B) lose precision or
// vanish. The scale is the largest power of two s with s * bound <= ceiling, where
// `bound` bounds the magnitude of the values scaled.
inline double power_of_two_scale(double bound, double ceiling) {
  return std::exp2(std::floor(std::log2(ceiling / bound)));
}

// The same for a bound known only on the device (a 0-d tensor): no host synchronisation.
// A zero bound gives the largest finite float scale rather than inf (0 * inf is NaN).
inline at::Tensor power_of_two_scale(const at::Tensor& bound, double ceiling) {
  const double smallest_normal = static_cast<double>(std::numeric_limits<float>::min());
  return at::exp2(at::floor(at::log2(ceiling / bound.clamp_min(smallest_normal))));
}

// First `numel` elements of a flat scratch buffer, shaped `sizes` (always contiguous).
inline at::Tensor scratch_view(const at::Tensor& buffer, at::IntArrayRef sizes) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  return buffer.narrow(0, 0, numel).view(sizes);
}

template <typename T>
__device__ __forceinline__ T negative_infinity() {
  return -static_cast<T>(INFINITY);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T>
__device__ __forceinline__ T warp_max(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    T other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

// log(exp(x) + exp(y)) that stays finite when one side is -inf and is -inf when both are.
template <typename T>
__device__ __forceinline__ T log_add_exp(T x, T y) {
  T m = x > y ? x : y;
  if (m == negative_infinity<T>()) return m;
  return m + log(exp(x - m) + exp(y - m));
}

// Running log-sum-exp as (max, sum of exp(x - max)), fed one value at a time.
template <typename T>
struct OnlineLse {
  T max = negative_infinity<T>();
  T sum = 0;

  __device__ __forceinline__ void add(T x) {
    if (x > max) {
      sum = sum * exp(max - x) + T(1);
      max = x;
    } else {
      sum += exp(x - max);
    }
  }

  __device__ __forceinline__ void merge(T other_max, T other_sum) {
    T m = other_max > max ? other_max : max;
    if (m == negative_infinity<T>()) return;  // both empty
    sum = sum * exp(max - m) + other_sum * exp(other_max - m);
    max = m;
  }

  // Combine the states of the 32 lanes of a warp; every lane gets the result.
  __device__ __forceinline__ void warp_merge() {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      T other_max = __shfl_xor_sync(0xffffffffu, max, offset);
      T other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
      merge(other_max, other_sum);
    }
  }

  __device__ __forceinline__ T value() const { return sum > T(0) ? max + log(sum) : negative_infinity<T>(); }
};

}  // namespace tgfr::cuda_common
