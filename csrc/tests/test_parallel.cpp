// Tests of Workers::for_each_item (csrc/cpu/parallel.h), the scheduler under both CPU kernels:
// every item runs once, on a worker index below count() that no other item is using at the same
// time; the first exception an item throws reaches the caller after every item taken has
// finished (how many others were skipped depends on timing, so it is not checked); a call from
// inside an item completes; the caller's thread settings come back; ATen ops in an item see one
// thread, on a pool thread's first item too. And for_each_item_in_order folds every item's
// partial result once, one at a time and in item order, however the items finish.
// Exit status 0 when every check passes.
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/parallel.h"

namespace {

using tgfr::cpu::Workers;

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok      " : "FAILED  ") << what << "\n";
  failures += !ok;
}

// Each item sleeps a little so that the helpers really take some of them.
void pause_briefly() { std::this_thread::sleep_for(std::chrono::microseconds(200)); }

void test_every_item_once(int threads, int64_t n_items) {
  at::set_num_threads(threads);
  const Workers workers;
  const int64_t n_workers = workers.count(n_items);
  std::vector<std::atomic<int>> runs(static_cast<size_t>(n_items));
  std::vector<std::atomic<int>> busy(static_cast<size_t>(n_workers));
  std::atomic<bool> worker_in_range{true}, worker_shared{false};
  workers.for_each_item(n_items, [&](int64_t worker, int64_t item) {
    if (worker < 0 || worker >= n_workers) {
      worker_in_range = false;
      return;
    }
    if (busy[worker]++ != 0) worker_shared = true;
    pause_briefly();
    ++runs[item];
    --busy[worker];
  });
  bool once = true;
  for (auto& count : runs) once = once && count.load() == 1;
  const std::string shape = std::to_string(threads) + " threads, " + std::to_string(n_items) + " items";
  expect(once, "every item runs exactly once (" + shape + ")");
  expect(worker_in_range.load(), "worker indices lie below count() (" + shape + ")");
  expect(!worker_shared.load(), "no two items run on one worker at once (" + shape + ")");
}

void test_first_exception_reaches_caller() {
  at::set_num_threads(2);
  const Workers workers;
  constexpr int64_t n_items = 64, failing_item = 5;
  std::atomic<int> started{0}, finished{0};
  std::string message;
  try {
    workers.for_each_item(n_items, [&](int64_t, int64_t item) {
      ++started;
      pause_briefly();
      ++finished;
      if (item == failing_item) throw std::runtime_error("item 5 failed");
    });
  } catch (const std::runtime_error& error) {
    message = error.what();
  }
  expect(message == "item 5 failed", "the item's exception is rethrown to the caller (got '" + message + "')");
  expect(started.load() == finished.load(), "every item taken has finished when the exception arrives");
  // the scheduler is usable again after a failure
  std::atomic<int64_t> sum{0};
  workers.for_each_item(n_items, [&](int64_t, int64_t item) { sum += item; });
  expect(sum.load() == n_items * (n_items - 1) / 2, "a call after a failed one runs every item");
}

void test_nested_call_completes() {
  at::set_num_threads(2);
  const Workers outer;
  std::atomic<int64_t> inner_items{0};
  outer.for_each_item(8, [&](int64_t, int64_t) {
    const Workers inner;
    inner.for_each_item(16, [&](int64_t, int64_t) {
      pause_briefly();
      ++inner_items;
    });
  });
  expect(inner_items.load() == 8 * 16, "a call from inside an item runs all its items");
}

// Runs first, while the pool's threads have not yet run an ATen parallel op: ATen's lazy per-thread
// set-up at the first one must not give an item its threads back.
void test_items_see_one_thread_from_the_start() {
  at::set_num_threads(3);
  const Workers workers;
  std::atomic<int> threads_seen{1};
  workers.for_each_item(24, [&](int64_t, int64_t) {
    pause_briefly();
    const int threads = at::get_num_threads();
    if (threads != 1) threads_seen = threads;
  });
  expect(threads_seen.load() == 1,
         "ATen ops in every item see one thread (an item saw " + std::to_string(threads_seen.load()) + ")");
}

void test_thread_settings_restored() {
  at::set_num_threads(2);
  const int before = at::get_num_threads();
  {
    const Workers workers;
    workers.for_each_item(4, [](int64_t, int64_t) { pause_briefly(); });
  }
  expect(at::get_num_threads() == before, "the caller's ATen thread count is restored after the call");
}

// Items take uneven times (every third one longer), so that on several threads they finish out of order.
void pause_unevenly(int64_t item) { std::this_thread::sleep_for(std::chrono::microseconds(item % 3 == 0 ? 900 : 100)); }

void test_folds_in_item_order(int threads, int64_t n_items) {
  at::set_num_threads(threads);
  const Workers workers;
  std::atomic<int> partials_made{0}, folding{0};
  std::atomic<bool> overlapping{false}, whole{true};
  std::vector<int64_t> folded;  // written by fold only, which never runs twice at once
  workers.for_each_item_in_order(
      n_items,
      [&] {
        ++partials_made;
        return std::vector<int64_t>(2, -1);
      },
      [&](int64_t, int64_t item, std::vector<int64_t>& partial) {
        pause_unevenly(item);
        partial = {item, item};
      },
      [&](const std::vector<int64_t>& partial) {
        if (folding++ != 0) overlapping = true;
        if (partial[0] != partial[1]) whole = false;
        folded.push_back(partial[0]);
        --folding;
      });
  std::vector<int64_t> in_order(static_cast<size_t>(n_items));
  std::iota(in_order.begin(), in_order.end(), int64_t{0});
  const std::string shape = std::to_string(threads) + " threads, " + std::to_string(n_items) + " items";
  expect(folded == in_order, "every partial is folded once, in item order (" + shape + ")");
  expect(!overlapping.load() && whole.load(), "folds run one at a time, on whole partials (" + shape + ")");
  expect(partials_made.load() <= n_items, "no more partials than items (" + shape + ")");
  if (threads == 1) expect(partials_made.load() <= 1, "one thread reuses one partial (" + shape + ")");
}

void test_fold_stops_at_a_failed_item() {
  at::set_num_threads(2);
  const Workers workers;
  constexpr int64_t n_items = 32, failing_item = 5;
  std::vector<int64_t> folded;
  std::string message;
  try {
    workers.for_each_item_in_order(
        n_items, [] { return int64_t{-1}; },
        [&](int64_t, int64_t item, int64_t& partial) {
          pause_unevenly(item);
          if (item == failing_item) throw std::runtime_error("item 5 failed");
          partial = item;
        },
        [&](int64_t partial) { folded.push_back(partial); });
  } catch (const std::runtime_error& error) {
    message = error.what();
  }
  expect(message == "item 5 failed", "an item's exception reaches the caller of for_each_item_in_order");
  expect(folded == std::vector<int64_t>{0, 1, 2, 3, 4}, "the items before the failed one are folded, no later one");
}

}  // namespace

int main() {
  test_items_see_one_thread_from_the_start();
  for (int threads : {1, 2, 4})
    for (int64_t n_items : {0, 1, 2, 3, 97}) test_every_item_once(threads, n_items);
  test_first_exception_reaches_caller();
  test_nested_call_completes();
  test_thread_settings_restored();
  for (int threads : {1, 2, 3})
    for (int64_t n_items : {0, 1, 2, 40}) test_folds_in_item_order(threads, n_items);
  test_fold_stops_at_a_failed_item();
  std::cout << (failures ? std::to_string(failures) + " check(s) FAILED" : "all checks passed") << "\n";
  return failures ? 1 : 0;
}
