// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/thread_pool.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <chrono>

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

int64_t spin_ns_from_env() {
  if (const char* env = std::getenv("MLX_MOE_SPIN_US")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0 && v <= 100000) {
      return static_cast<int64_t>(v) * 1000;
    }
  }
  return 2000000;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until pred() or spin_ns elapsed; returns pred().
template <class P>
bool spin_until(P pred, int64_t spin_ns) {
  if (pred()) {
    return true;
  }
  auto t0 = std::chrono::steady_clock::now();
  while (true) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (pred()) {
        return true;
      }
    }
    auto dt = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - t0);
    if (dt.count() >= spin_ns) {
      return pred();
    }
  }
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

ThreadPool::ThreadPool(int n) : spin_ns_(spin_ns_from_env()) {
  start(n);
}

ThreadPool::~ThreadPool() {
  stop();
}

int ThreadPool::num_threads() const {
  return static_cast<int>(workers_.size()) + 1;
}

void ThreadPool::start(int n) {
  stopping_.store(false);
  // The generation the workers start from is read here, before any parallel_for can publish a
  // job (none runs during start), so that no job is mistaken for an old one.
  const uint64_t gen = generation_.load(std::memory_order_acquire);
  for (int i = 1; i < n; ++i) {
    workers_.emplace_back([this, gen] { worker(gen); });
  }
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lk(mtx_);
    stopping_.store(true);
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

void ThreadPool::worker(uint64_t seen) {
  while (true) {
    auto has_work = [&] {
      return stopping_.load(std::memory_order_acquire) ||
          generation_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(has_work, spin_ns_)) {
      std::unique_lock<std::mutex> lk(mtx_);
      cv_work_.wait(lk, has_work);
    }
    if (stopping_.load(std::memory_order_acquire)) {
      return;
    }
    seen = generation_.load(std::memory_order_acquire);
    run_pieces();
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mtx_);
      cv_done_.notify_one();
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
  busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(mtx_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_work_.notify_all();
  run_pieces();
  auto done = [&] { return busy_workers_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, spin_ns_)) {
    std::unique_lock<std::mutex> lk(mtx_);
    cv_done_.wait(lk, done);
  }
  fn_ = nullptr;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

} // namespace mlx::core::moe
