// How the CPU kernels use threads: a kernel call's items go out one at a time to the calling
// thread and to helpers on ATen's inter-op pool, and every ATen op and GEMM inside the call runs
// single-threaded on the thread that calls it. Nothing waits by spinning.
//
// Why (measured on the 2-core machine, torch's OpenMP + MKL build, word-region B=64 forward +
// backward, T=22, N=196, D=256, beside 4 busy processes), three causes, one under the other:
//  1. Nested teams. ATen turns MKL's dynamic threading off (mkl_set_dynamic(0)) and libgomp
//     allows nested regions, so every at::mm inside an at::parallel_for worker forked a team of
//     its own: 2 x 2 threads on 2 cores and a fork/join barrier per tile GEMM. 0.7 s idle,
//     40-60 s loaded. Fixed first by one flat region with single-threaded GEMMs (0.93 s idle,
//     9.2 s loaded, 10x).
//  2. Spin-waiting. libgomp's threads wait by spinning (GOMP_SPINCOUNT, unless
//     OMP_WAIT_POLICY=PASSIVE): at the end of the flat region a worker that ran out of items
//     spun on a core that the scheduler could have given to the one still working, and after
//     it, for the next region; perf put 35% of the samples in libgomp's spin loops.
//  3. The kernel's own ATen ops outside the item loop (the images' Gram matrices by at::bmm,
//     zeroing the gradient) each opened a team whose threads then spun beside the items.
// Now the helpers and the caller block on condition variables, the Gram matrices are items too,
// and Workers keeps the caller's ATen ops and BLAS single-threaded for the whole call (its
// OpenMP team size and MKL's per-thread count, both per thread; restored after). A thread the
// scheduler slows down simply takes fewer items, and a helper that starts late (the pool busy,
// e.g. the caller itself runs on it) finds the items gone and exits, so a call never waits for
// a helper that has not started. Measured after, on the same machine with other jobs running
// too (so wall times are high): beside 4 busy processes B=64 took 1.5 s against vectorized 4.4 s
// (1.7x and 1.4x their times without the 4), B=16 0.25 s against 0.72 s, InfoNCE B=4096 2.8 s
// against F.cross_entropy 5.5 s; in an A/B before this change, 31 s against 14 s at B=64. CPU
// time per B=64 step is about 1 s, busy or not (before: 2.4-7.9 s, mostly spinning), of which
// the GEMMs alone are 0.67 s (benchmarks/gemm_floor.py).
//
// Which thread runs an item, and when, must not change a result: an item writes outputs of its own
// only, or a partial result that for_each_item_in_order folds into a total in item order. So a
// kernel gives the same bits run to run at a given thread count.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

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
  SingleThreadedOps() {
    // ATen sets a thread's OpenMP and MKL thread counts to its own on the thread's first parallel
    // op (at::internal::lazy_init_num_threads, with its flag in libtorch, where get_num_threads
    // runs it). Done here first: on a pool thread's first item it undid the settings below
    // halfway through, and the item's later GEMMs forked teams and summed in another order.
    at::get_num_threads();
    previous_blas_ = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
    previous_omp_ = omp_get_max_threads ? omp_get_max_threads() : 0;
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

// The partial results of items, folded into a total in item order whatever order the items finish
// in. A worker takes a partial (a free one, or a new one from make), fills it for its item and hands
// it back with finish; the thread that hands back the item next due folds it, and after it every
// later item already handed back, while the other threads go on with new items. A partial is reused
// once folded, so there are about as many as items in flight, plus those finished ahead of one that
// is slow (on a loaded machine; all n_items at worst).
template <typename Partial>
class InOrderFold {
 public:
  explicit InOrderFold(int64_t n_items) : finished_(static_cast<size_t>(n_items)) {}

  template <typename Make>
  Partial take(const Make& make) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        Partial partial = std::move(free_.back());
        free_.pop_back();
        return partial;
      }
    }
    return make();
  }

  template <typename Fold>
  void finish(int64_t item, Partial partial, const Fold& fold) {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_[item] = std::move(partial);
    if (folding_) return;  // the thread folding reaches this item, or stops at an earlier one not yet back
    folding_ = true;
    while (next_ < static_cast<int64_t>(finished_.size()) && finished_[next_]) {
      Partial due = std::move(*finished_[next_]);
      finished_[next_].reset();
      lock.unlock();
      try {
        fold(due);
      } catch (...) {  // the call fails; items after this one are never folded
        lock.lock();
        folding_ = false;
        throw;
      }
      lock.lock();
      free_.push_back(std::move(due));
      ++next_;
    }
    folding_ = false;
  }

 private:
  std::mutex mutex_;
  std::vector<std::optional<Partial>> finished_;  // handed back, not yet folded
  std::vector<Partial> free_;
  int64_t next_ = 0;      // the item due to be folded
  bool folding_ = false;  // a thread is folding
};

}  // namespace detail

// The threads of one kernel call. Constructed at the kernel's entry, it remembers how many
// threads the caller allows (at::get_num_threads(); 1 inside a parallel region) and then keeps
// the calling thread's own ATen ops and BLAS calls single-threaded for the whole call: the
// kernel's parallelism is for_each_item alone, and no OpenMP team is opened whose threads would
// spin beside the items (see for_each_item).
class Workers {
 public:
  Workers() : n_threads_(at::in_parallel_region() ? 1 : at::get_num_threads()) {}

  // The number of workers for_each_item uses for n_items items.
  int64_t count(int64_t n_items) const { return std::max<int64_t>(1, std::min<int64_t>(n_threads_, n_items)); }

  // Calls work(worker, item) for every item in [0, n_items), with worker < count(n_items)
  // naming the caller's per-worker buffers (no two items run on one worker at once). The caller
  // is worker 0 and takes items itself; helpers run on ATen's inter-op pool. Items go out one at
  // a time from an atomic counter; the only synchronisation is the caller's wait for the items
  // other workers took, on a condition variable. The first exception thrown by an item is
  // rethrown here, after every item taken has finished (items not yet started are skipped).
  template <typename Work>
  void for_each_item(int64_t n_items, const Work& work) const {
    if (n_items <= 0) return;
    const int64_t n_workers = count(n_items);
    if (n_workers == 1) {
      for (int64_t item = 0; item < n_items; ++item) work(0, item);
      return;
    }
    auto queue = std::make_shared<detail::ItemQueue>(n_items);
    for (int64_t helper = 1; helper < n_workers; ++helper) {
      // work is only called for an item taken, and the caller waits for every item taken, so the
      // reference to it stays valid for as long as it is used
      at::launch([queue, &work] {
        if (queue->next_item.load() >= queue->n_items) return;
        SingleThreadedOps single_threaded;
        const int64_t worker = queue->next_worker++;
        queue->finish(queue->drain(worker, work));
      });
    }
    queue->finish(queue->drain(0, work));
    {
      std::unique_lock<std::mutex> lock(queue->mutex);
      queue->all_done.wait(lock, [&] { return queue->done == n_items; });
    }
    if (queue->error) std::rethrow_exception(queue->error);
  }

  // for_each_item for items that each contribute to a sum (a gradient several items add to, a
  // log-sum-exp over all of them): work(worker, item, partial) fills a partial result of the item,
  // overwriting all of it (it may hold an earlier item's), and fold(partial) adds one to the total.
  // fold sees the partials in item order, one at a time, whichever threads ran the items: summing
  // them as they arrived would make the result follow the threads' timing, since floating-point
  // addition is not associative, and differ run to run. make_partial() makes a partial when none
  // is free (detail::InOrderFold). The total is the same whichever workers ran the items, and
  // however many there were.
  template <typename MakePartial, typename Work, typename Fold>
  void for_each_item_in_order(int64_t n_items, const MakePartial& make_partial, const Work& work,
                              const Fold& fold) const {
    using Partial = std::invoke_result_t<MakePartial>;
    detail::InOrderFold<Partial> partials(n_items);
    for_each_item(n_items, [&](int64_t worker, int64_t item) {
      Partial partial = partials.take(make_partial);
      work(worker, item, partial);
      partials.finish(item, std::move(partial), fold);
    });
  }

 private:
  int64_t n_threads_;
  SingleThreadedOps single_threaded_;  // constructed after n_threads_ is read
};

}  // namespace tgfr::cpu
