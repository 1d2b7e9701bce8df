// CPU emulation of the CUDA execution model, just enough to run the kernels of
// csrc/cuda/ on CPU tensors in tests (tests/test_cuda_compile.py). Force-included
// (-include) ahead of the sources, whose `kernel<<<...>>>(args)` launches the test
// rewrites as `emulated_launch(..., kernel, args)`.
//
// Every CUDA thread of a block is a fiber (ucontext) on the one calling OS thread; the
// blocks of a grid run one after another. A fiber runs until it waits at __syncthreads
// or at a warp shuffle, then the next one runs: no OS threads, no locks, deterministic.
// A barrier that some threads never reach (a divergent __syncthreads) is reported as
// an error instead of hanging.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <functional>
#include <math.h>
#include <memory>
#include <stdexcept>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's device max() overloads
inline float max(float a, float b) { return a > b ? a : b; }
inline double max(double a, double b) { return a > b ? a : b; }

namespace cuda_emulation {

constexpr size_t kStackBytes = size_t{256} << 10;
constexpr unsigned kWarpSize = 32;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  bool done = false;
};

struct Barrier {
  unsigned arrived = 0;
  unsigned long generation = 0;
};

struct Scheduler {
  ucontext_t context;
  std::vector<Fiber> fibers;  // one per thread of the block, reused by every launch
  Fiber* running = nullptr;
  unsigned running_thread = 0;
  std::function<void()> kernel;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<double> lanes;  // the values exchanged by the warp shuffles
  unsigned long progress = 0;   // barrier arrivals and finished threads, to detect a deadlock
};

inline Scheduler scheduler;

inline void yield() { swapcontext(&scheduler.running->context, &scheduler.context); }

// Waits until `participants` threads have arrived (the barrier is reusable).
inline void wait(Barrier& barrier, unsigned participants) {
  ++scheduler.progress;
  const unsigned long generation = barrier.generation;
  if (++barrier.arrived == participants) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  while (barrier.generation == generation) yield();
}

inline void run_fiber() {
  scheduler.kernel();
  scheduler.running->done = true;
  ++scheduler.progress;
}  // returns to scheduler.context through uc_link

// Runs one block: every thread from the start to its end, switching at the barriers.
inline void run_block(unsigned threads) {
  Scheduler& s = scheduler;
  s.block_barrier = Barrier{};
  s.warp_barriers.assign((threads + kWarpSize - 1) / kWarpSize, Barrier{});
  s.lanes.assign(s.warp_barriers.size() * kWarpSize, 0.0);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = s.fibers[t];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &s.context;
    makecontext(&f.context, run_fiber, 0);
    f.done = false;
  }
  for (unsigned live = threads; live > 0;) {
    const unsigned long progress = s.progress;
    live = 0;
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[t];
      if (f.done) continue;
      s.running = &f;
      s.running_thread = t;
      threadIdx = dim3(t);
      swapcontext(&s.context, &f.context);
      live += f.done ? 0 : 1;
    }
    if (live > 0 && s.progress == progress)
      throw std::runtime_error("emulated CUDA kernel deadlock: threads wait at a barrier the others never reach");
  }
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::wait(cuda_emulation::scheduler.block_barrier, blockDim.x); }

// Every lane publishes its value, waits for the warp, reads its partner's, waits again
// (so no lane overwrites its slot before the partner has read it).
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
  using cuda_emulation::kWarpSize;
  cuda_emulation::Scheduler& s = cuda_emulation::scheduler;
  const unsigned thread = s.running_thread, warp = thread / kWarpSize;
  s.lanes[thread] = static_cast<double>(value);
  cuda_emulation::wait(s.warp_barriers[warp], kWarpSize);
  const double other = s.lanes[warp * kWarpSize + ((thread % kWarpSize) ^ lane_mask)];
  cuda_emulation::wait(s.warp_barriers[warp], kWarpSize);
  return static_cast<T>(other);
}

template <typename Kernel, typename... Args>
void emulated_launch(dim3 grid, dim3 block, size_t /*shared_bytes*/, cudaStream_t, Kernel kernel, Args... args) {
  cuda_emulation::Scheduler& s = cuda_emulation::scheduler;
  if (block.x % cuda_emulation::kWarpSize != 0 || block.y != 1 || block.z != 1 || grid.z != 1)
    throw std::invalid_argument("the emulation runs one-dimensional blocks of whole warps, grids in x and y");
  gridDim = grid;
  blockDim = block;
  if (s.fibers.size() < block.x) s.fibers.resize(block.x);
  s.kernel = [&] { kernel(args...); };
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx = dim3(bx, by);
      cuda_emulation::run_block(block.x);
    }
  }
}
