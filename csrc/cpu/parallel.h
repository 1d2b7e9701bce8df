// How the CPU kernels use threads: one parallel region per call, work items handed out one at
// a time, and every GEMM inside the region on the calling thread.
//
// Why (measured on the 2-core machine, torch's OpenMP + MKL build): ATen turns MKL's dynamic
// threading off (mkl_set_dynamic(0)) and libgomp allows nested parallel regions
// (omp_get_max_active_levels() is INT_MAX there), so every at::mm inside an at::parallel_for
// worker forked a nested team of at::get_num_threads() MKL threads: 2 workers x 2 = 4 threads on
// 2 cores, and a fork/join barrier per tile GEMM (thousands per call). On an idle machine that
// costs oversubscription only; beside busy processes each barrier waits for a thread the
// scheduler has just put behind them (a time slice, milliseconds) while the waiting threads
// spin, so the kernels went from 0.7 s to 40-60 s. Plain PyTorch ops do not degrade so: each op
// is one flat region with large chunks. Here, items are independent (no barrier until the end of
// the region), the GEMMs run single-threaded inside it (MKL's per-thread setting),
// and a thread that the scheduler slows down simply takes fewer items.
//
// Not yet the whole cause: measured after this change on the shared 2-core machine (B=16
// word-region forward), 2 threads took 0.52 s, 1 thread 0.028 s, and 2 threads with
// OMP_WAIT_POLICY=PASSIVE 0.022 s; perf put 35% of the samples in libgomp's spin loops and 3% in
// sgemm. Some thread still spins on every item; finding it is the next step.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

// MKL's per-thread thread count, the C entry point behind mkl_service.h's mkl_set_num_threads_local
// (the lower-case symbol itself is the Fortran one, taking a pointer). Declared weak: torch builds
// without MKL (OpenBLAS, ARM) lack it, and their BLAS does not nest teams inside an OpenMP region.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace tgfr::cpu {

// While alive, BLAS calls on this thread use this thread alone.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);  // 0 restores the global setting
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// The number of workers for_each_item uses for n_items items.
inline int64_t worker_count(int64_t n_items) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
}

// Calls work(worker, item) for every item in [0, n_items) inside one parallel region, with
// worker < worker_count(n_items) naming the caller's buffers. Items go out one at a time from
// an atomic counter; there is no synchronisation between items, only the region's end.
template <typename Work>
void for_each_item(int64_t n_items, const Work& work) {
  if (n_items <= 0) return;
  std::atomic<int64_t> next_item{0};
  // the first index of each call's range names its worker (one call takes all when run inline,
  // e.g. when the caller is itself inside a parallel region)
  at::parallel_for(0, worker_count(n_items), 1, [&](int64_t worker, int64_t) {
    SingleThreadedBlas single_threaded;
    for (int64_t item = next_item++; item < n_items; item = next_item++) work(worker, item);
  });
}

}  // namespace tgfr::cpu
