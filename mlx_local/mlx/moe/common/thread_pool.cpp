// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/thread_pool.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace mlx::core::moe {

namespace {

int default_threads() {
  if (const char* env = std::getenv("MLX_MOE_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v <= 256) {
      return static_cast<int>(v);
    }
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw > 256 ? 256 : hw);
}

// Kernels rely on IEEE subnormals (fp8 subnormal decoding, prescaled activations): run every piece
// with flush-to-zero and denormals-are-zero off, and restore the thread's mode afterwards.
struct FloatModeGuard {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned saved;
  FloatModeGuard() : saved(_mm_getcsr()) {
    _mm_setcsr(saved & ~(0x8000u | 0x0040u));
  }
  ~FloatModeGuard() {
    _mm_setcsr(saved);
  }
#endif
};

} // namespace

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: workers must not be joined during static destruction while MLX's stream
  // threads (also leaked by MLX) may still be running tasks.
  static ThreadPool* pool = new ThreadPool(default_threads());
  return *pool;
}

ThreadPool::ThreadPool(int n) {
  start(n);
}

ThreadPool::~ThreadPool() {
  stop();
}

int ThreadPool::num_threads() const {
  return static_cast<int>(workers_.size()) + 1;
}

void ThreadPool::start(int n) {
  stopping_ = false;
  for (int i = 1; i < n; ++i) {
    workers_.emplace_back([this, i] { worker(i); });
  }
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lk(mtx_);
    stopping_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) {
    t.join();
  }
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1 || n > 256) {
    throw std::invalid_argument(
        "[moe] number of threads must be in 1..256, got " + std::to_string(n));
  }
  std::lock_guard<std::mutex> run(run_mtx_);
  if (n == num_threads()) {
    return;
  }
  stop();
  start(n);
}

void ThreadPool::run_pieces() {
  FloatModeGuard mode;
  while (!failed_.load(std::memory_order_relaxed)) {
    int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_) {
      break;
    }
    try {
      (*fn_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mtx_);
      if (!error_) {
        error_ = std::current_exception();
      }
      failed_.store(true, std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker(int) {
  uint64_t seen = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mtx_);
      cv_work_.wait(lk, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) {
        return;
      }
      seen = generation_;
    }
    run_pieces();
    {
      std::lock_guard<std::mutex> lk(mtx_);
      if (--busy_workers_ == 0) {
        cv_done_.notify_one();
      }
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) {
    return;
  }
  std::unique_lock<std::mutex> run(run_mtx_, std::try_to_lock);
  if (!run.owns_lock() || workers_.empty() || n == 1) {
    FloatModeGuard mode;
    for (int64_t i = 0; i < n; ++i) {
      fn(i);
    }
    return;
  }
  fn_ = &fn;
  n_ = n;
  next_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  {
    std::lock_guard<std::mutex> lk(mtx_);
    busy_workers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  cv_work_.notify_all();
  run_pieces();
  {
    std::unique_lock<std::mutex> lk(mtx_);
    cv_done_.wait(lk, [&] { return busy_workers_ == 0; });
  }
  fn_ = nullptr;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

} // namespace mlx::core::moe
