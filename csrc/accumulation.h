// The dtype rule of every kernel, CPU and CUDA: inputs are float16, bfloat16, float32 or float64;
// float64 inputs compute in float64, all others (float32, and float16/bfloat16 upcast) in float32.
// Temperatures and the saved log-sum-exp statistics use the same type. (The Python side:
// tgfr.ops.common, FLOAT_DTYPES and accumulation_dtype.)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <type_traits>

namespace tgfr {

inline bool is_float_input(at::ScalarType type) {
  return type == at::kHalf || type == at::kBFloat16 || type == at::kFloat || type == at::kDouble;
}

inline at::ScalarType accumulation_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::ScalarType accumulation_type(const at::Tensor& t) { return accumulation_type(t.scalar_type()); }

// The same rule at compile time, for a kernel templated on its input type.
template <typename scalar_t>
using accumulation_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace tgfr
