// Copyright © 2026 zmlx contributors.
//
// The fused MoE kernels' own thread pool. MLX runs each CPU task on the stream's single worker
// thread; inside such a task `parallel_for` spreads independent pieces of work over all cores (the
// calling thread takes part). Exceptions thrown by a piece are caught on the thread that ran it and
// the first one is rethrown by `parallel_for` on the calling thread, so nothing escapes a worker.
// Idle workers spin for a while (MLX_MOE_SPIN_US microseconds, default 2000) before sleeping, and so
// does the caller waiting for them: the kernels of a decode step (a few hundred microseconds of other
// ops apart) then do not pay a thread wake-up each (a sleeping worker joins a kernel an order of
// magnitude later than a spinning one: BENCHMARKS.md).
//
// Scheduling: the pieces are split into one contiguous range per thread; a thread runs its own range
// front to back and, when it is done, takes pieces from the back of the range with most left. The
// kernels number their pieces so that consecutive pieces read consecutive weight rows, so each
// thread reads one long stream (the hardware and software prefetches run on across pieces) instead of
// every other piece of a shared counter, which was measurably slower (BENCHMARKS.md).
#pragma once

#include <mlx/api.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mlx::core::moe {

// The members marked MLX_API are exported so that a C API over a shared libmlx can size the pool.
class ThreadPool {
 public:
  // The process-wide pool, started lazily with the default size: MLX_MOE_NUM_THREADS if set to a
  // positive integer, else the number of hardware threads.
  MLX_API static ThreadPool& instance();

  // Threads that take part in parallel_for, the caller included.
  MLX_API int num_threads() const;

  // Changes the number of threads (1..256); waits for a running parallel_for to finish first.
  MLX_API void set_num_threads(int n);

  // Runs fn(i) for every i in [0, n): each i once, in any order, on any of the threads. Returns when
  // all are done; rethrows the first exception. If the pool is busy (another MLX stream is inside
  // parallel_for) the calling thread runs everything itself.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

 private:
  explicit ThreadPool(int n);
  void start(int n);
  void stop();
  void worker(uint64_t seen, int id);
  // Runs pieces on thread `id` (0: the caller) until none is left.
  void run_pieces(int id);
  // The next piece for thread `id` (own range first, then stolen); false when none is left.
  bool take(int id, int64_t& piece);

  std::mutex run_mtx_; // one parallel_for at a time
  std::mutex mtx_;
  std::condition_variable cv_work_;
  std::condition_variable cv_done_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> busy_workers_{0};

  // The current job.
  const std::function<void(int64_t)>* fn_ = nullptr;
  // Per thread: its range of pieces [front, back) packed as (front << 32) | back, taken from the
  // front by its thread and from the back by the others (one compare-and-swap each).
  struct alignas(64) Range {
    std::atomic<uint64_t> bounds{0};
  };
  std::vector<Range> ranges_;
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
  std::mutex error_mtx_;
  int64_t spin_ns_ = 2000000;
};

} // namespace mlx::core::moe
