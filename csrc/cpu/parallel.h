#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

// MKL's per-thread thread count, the C entry point behind mkl_service.h's mkl_set_num_threads_local
// (the lower-case symbol itself is the Fortran one, taking a pointer), and OpenMP's per-thread
// team size. Declared weak: torch builds without MKL (OpenBLAS, ARM) or without OpenMP lack them,
// and then there is nothing of theirs to keep single-threaded.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
extern "C" void omp_set_num_threads(int) __attribute__((weak));
extern "C" int omp_get_max_threads() __attribute__((weak));

namespace tgfr::cpu {

// While alive, ATen ops (their at::parallel_for reads this thread's OpenMP team size) and BLAS
// calls on this thread use this thread alone.
class SingleThreadedOps {
 public:
  SingleThreadedOps()
      : previous_blas_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0),
        previous_omp_(omp_get_max_threads ? omp_get_max_threads() : 0) {
    if (omp_set_num_threads) omp_set_num_threads(1);
  }
  ~SingleThreadedOps() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_blas_);  // 0 restores the global setting
    if (omp_set_num_threads && previous_omp_ > 0) omp_set_num_threads(previous_omp_);
  }
  SingleThreadedOps(const SingleThreadedOps&) = delete;
  SingleThreadedOps& operator=(const SingleThreadedOps&) = delete;

 private:
  int previous_blas_, previous_omp_;
};

// The number of workers for_each_item uses for n_items items.
inline int64_t worker_count(int64_t n_items) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
}

namespace detail {

// What the caller and its helpers share. Helpers hold it by shared_ptr: one that starts after the
// caller has returned finds no item left and touches nothing else.
struct ItemQueue {
  explicit ItemQueue(int64_t n) : n_items(n) {}
  const int64_t n_items;
  std::atomic<int64_t> next_item{0};
  std::atomic<int64_t> next_worker{1};  // worker 0 is the caller
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::condition_variable all_done;
  int64_t done = 0;  // items finished (or skipped after a failure), under mutex
  std::exception_ptr error;

  // Takes items until none is left; returns how many it took.
  template <typename Work>
  int64_t drain(int64_t worker, const Work& work) {
    int64_t taken = 0;
    for (int64_t item = next_item++; item < n_items; item = next_item++) {
      ++taken;
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        work(worker, item);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
    return taken;
  }

  void finish(int64_t taken) {
    if (taken == 0) return;
    std::lock_guard<std::mutex> lock(mutex);
    done += taken;
    if (done == n_items) all_done.notify_all();
  }
};

}  // namespace detail

// Calls work(worker, item) for every item in [0, n_items), with worker < worker_count(n_items)
// naming the caller's per-worker buffers (no two items run on one worker at once). The caller
// is worker 0 and takes items itself; helpers run on ATen's inter-op pool. Items go out one at a
// time from an atomic counter; the only synchronisation is the caller's wait for the items other
// workers took, on a condition variable. The first exception thrown by an item is rethrown here,
// after every item taken has finished (items not yet started are skipped).
//
// Why not at::parallel_for (measured on the 2-core machine beside 4 busy processes, B=64
// word-region forward+backward): libgomp threads wait by spinning, at a region's end and for the
// next region (GOMP_SPINCOUNT, unless OMP_WAIT_POLICY=PASSIVE), so a worker that finished spins
// on a core that the scheduler could give to the one still working, and the ATen ops inside each
// item (mm, exp_) opened nested teams or barriers of their own. Before any fix every at::mm in a
// worker forked a nested MKL team (ATen sets mkl_set_dynamic(0) and libgomp allows nesting):
// 0.7 s idle, 40-60 s loaded. One flat region with single-threaded GEMMs: 0.93 s idle, 9.2 s
// loaded, 35% of perf samples in libgomp's spin loops. Here nothing spins: the inter-op pool's
// threads and the caller block on condition variables, every thread runs its ATen ops and BLAS
// calls single-threaded (SingleThreadedOps), and a thread the scheduler slows down simply takes
// fewer items. A helper that starts late (pool busy, e.g. the caller itself runs on it) finds
// the items gone and exits, so the call never waits for a helper that has not started.
template <typename Work>
void for_each_item(int64_t n_items, const Work& work) {
  if (n_items <= 0) return;
  const int64_t n_workers = worker_count(n_items);
  SingleThreadedOps single_threaded;
  if (n_workers == 1 || at::in_parallel_region()) {
    for (int64_t item = 0; item < n_items; ++item) work(0, item);
    return;
  }
  auto queue = std::make_shared<detail::ItemQueue>(n_items);
  for (int64_t helper = 1; helper < n_workers; ++helper) {
    // work is only called for an item taken, and the caller waits for every item taken, so the
    // reference to it stays valid for as long as it is used
    at::launch([queue, &work] {
      if (queue->next_item.load() >= queue->n_items) return;
      SingleThreadedOps helper_single_threaded;
      const int64_t worker = queue->next_worker++;
      queue->finish(queue->drain(worker, work));
    });
  }
  const int64_t taken = queue->drain(0, work);
  {
    std::unique_lock<std::mutex> lock(queue->mutex);
    queue->done += taken;
    queue->all_done.wait(lock, [&] { return queue->done == n_items; });
  }
  if (queue->error) std::rethrow_exception(queue->error);
}

}  // namespace tgfr::cpu
