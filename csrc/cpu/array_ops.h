// Helpers shared by the CPU kernels, mostly loops over short contiguous arrays.
//
// Reductions keep kLanes independent partial results instead of one serial chain, so
// that gcc -O3 turns them into SIMD code without -ffast-math (which would also relax
// the float64 results the tests compare to 1e-10).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#include "../accumulation.h"

namespace tgfr::cpu {

using tgfr::accumulation_type;

constexpr int64_t kLanes = 16;

template <typename T, typename Term, typename Combine>
inline T reduce(int64_t n, T init, Term term, Combine combine) {
  T lane[kLanes];
  for (auto& v : lane) v = init;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane[l] = combine(lane[l], term(j + l));
  for (; j < n; ++j) lane[0] = combine(lane[0], term(j));
  T out = lane[0];
  for (int64_t l = 1; l < kLanes; ++l) out = combine(out, lane[l]);
  return out;
}

template <typename T>
inline T max_of(T x, T y) {
  return x < y ? y : x;
}

template <typename T>
inline T array_sum(const T* x, int64_t n) {
  return reduce<T>(n, T(0), [x](int64_t j) { return x[j]; }, [](T s, T v) { return s + v; });
}

template <typename T>
inline T array_dot(const T* x, const T* y, int64_t n) {
  return reduce<T>(n, T(0), [x, y](int64_t j) { return x[j] * y[j]; }, [](T s, T v) { return s + v; });
}

template <typename T>
inline T array_max(const T* x, int64_t n) {
  return reduce<T>(n, -std::numeric_limits<T>::infinity(), [x](int64_t j) { return x[j]; }, max_of<T>);
}

// Smallest argument passed to exp: its exp is still a normal number. The kernels clamp
// softmax arguments to it because MKL's vector exp (behind at::exp_) takes a slow error
// path for every result that underflows (about 10x slower). The clamped terms differ from
// the exact ones by less than 1e-37 (float) / 1e-307 (double), in sums that are at least 1.
template <typename T>
constexpr T kExpFloor = sizeof(T) == sizeof(float) ? T(-87) : T(-708);

// Softmax shift that keeps exp(-inf - shift) = 0 when every entry so far is -inf.
template <typename T>
inline T finite_shift(T running_max) {
  return running_max == -std::numeric_limits<T>::infinity() ? T(0) : running_max;
}

}  // namespace tgfr::cpu
