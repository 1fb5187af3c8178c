// Work splitting over XLA's intra-op thread pool, shared by the native CPU kernels.

#ifndef PNAS_JAX_LAYERS_NATIVE_PARALLEL_H_
#define PNAS_JAX_LAYERS_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace pnas {

namespace ffi = xla::ffi;

// Runs body(chunk) for chunk in [0, n): the caller and up to pool.num_threads() pool tasks claim
// chunks from one counter, so the call finishes even if no pool thread ever runs (the caller does
// all chunks). Tasks that start after every chunk is claimed return without touching `body`.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& body) {
  int64_t threads = std::min<int64_t>(pool.num_threads(), n - 1);
  if (threads <= 0) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body]() {
    int64_t finished = 0;
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      body(i);
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->done += finished;
      if (state->done == n) state->cv.notify_all();
    }
  };
  for (int64_t t = 0; t < threads; ++t) {
    pool.Schedule(decltype(work)(work));  // each task owns a copy (Schedule takes an rvalue)
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n; });
}

// body(chunk, lo, hi) for `chunks` consecutive ranges [lo, hi) covering [0, total), in parallel.
template <typename F>
void ForRanges(ffi::ThreadPool& pool, int64_t total, int64_t chunks, const F& body) {
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    body(chunk, total * chunk / chunks, total * (chunk + 1) / chunks);
  });
}

// Row-chunk count: enough chunks to balance the threads, each a few rows.
inline int64_t Chunks(int64_t rows, ffi::ThreadPool& pool) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * threads));
}

}  // namespace pnas

#endif  // PNAS_JAX_LAYERS_NATIVE_PARALLEL_H_
