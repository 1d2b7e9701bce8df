// Device and host helpers shared by the CUDA kernels of both ops.
//
// Precision convention: GEMM operands stay in the input dtype (tensor cores for
// float16/bfloat16), GEMM results and every softmax/log-sum-exp are in the
// accumulation dtype acc_t (float, or double for double inputs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>

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

template <typename scalar_t>
using acc_type = at::acc_type<scalar_t, /*is_cuda=*/true>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline at::ScalarType accumulation_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// out = a @ b with a, b in the input dtype and out in the accumulation dtype.
inline void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
    at::mm_out(out, a, b, out.scalar_type());
  }
}

// Batched form of matmul_into: out[i] = a[i] @ b[i].
inline void batched_matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::bmm_out(out, a, b);
  } else {
    at::bmm_out(out, a, b, out.scalar_type());
  }
}

// total += a @ b (total in the accumulation dtype, a and b in the input dtype).
inline void matmul_accumulate(at::Tensor total, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == total.scalar_type()) {
    total.addmm_(a, b);
  } else {
    total.add_(at::mm(a, b, total.scalar_type()));
  }
}

// total[i] += a[i] @ b[i].
inline void batched_matmul_accumulate(at::Tensor total, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == total.scalar_type()) {
    total.baddbmm_(a, b);
  } else {
    total.add_(at::bmm(a, b, total.scalar_type()));
  }
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
