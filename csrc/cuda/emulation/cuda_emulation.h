// CPU emulation of the CUDA execution model, just enough to run the kernels of
// csrc/cuda/ on CPU tensors in tests (tests/test_cuda_compile.py): one std::thread
// per CUDA thread, the blocks of a grid one after another, std::barrier for
// __syncthreads and for the exchanges of the warp shuffles. Force-included
// (-include) ahead of the sources, whose `kernel<<<...>>>(args)` launches the test
// rewrites as `emulated_launch(..., kernel, args)`.
#pragma once

#include <barrier>
#include <cmath>
#include <cstddef>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim, gridDim;

// CUDA's device max() overloads
inline float max(float a, float b) { return a > b ? a : b; }
inline double max(double a, double b) { return a > b ? a : b; }

namespace cuda_emulation {

struct Warp {
  std::barrier<> arrived{32};
  double lanes[32];
};

struct Block {
  std::barrier<> arrived;
  std::vector<std::unique_ptr<Warp>> warps;
  explicit Block(unsigned threads) : arrived(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
  }
};

inline Block* running_block = nullptr;

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::running_block->arrived.arrive_and_wait(); }

// Every lane publishes its value, waits for the warp, reads its partner's, waits again
// (so no lane overwrites its slot before the partner has read it).
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
  cuda_emulation::Warp& warp = *cuda_emulation::running_block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  warp.lanes[lane] = static_cast<double>(value);
  warp.arrived.arrive_and_wait();
  const double other = warp.lanes[lane ^ lane_mask];
  warp.arrived.arrive_and_wait();
  return static_cast<T>(other);
}

template <typename Kernel, typename... Args>
void emulated_launch(dim3 grid, dim3 block, size_t /*shared_bytes*/, cudaStream_t, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = block;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      cuda_emulation::Block state(block.x);
      cuda_emulation::running_block = &state;
      std::vector<std::thread> threads;
      for (unsigned tx = 0; tx < block.x; ++tx) {
        threads.emplace_back([=] {
          threadIdx = dim3(tx);
          blockIdx = dim3(bx, by);
          kernel(args...);
        });
      }
      for (auto& t : threads) t.join();
    }
  }
}
