// Copyright © 2026 zmlx contributors.
#include "mlx/moe/common/thread_pool.h"

#include <algorithm>
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

// Spins until pred() or spin_ns elapsed; returns pred(). Spinning only pays while this thread and
// the one it waits for both own a core: after a short pure spin it yields between polls, and a gap
// between two polls longer than any spin batch means the scheduler took the core away (more runnable
// threads than cores), so it stops and lets the caller block instead of burning the waited-for
// thread's time slices.
template <class P>
bool spin_until(P pred, int64_t spin_ns) {
  if (pred()) {
    return true;
  }
  constexpr int64_t kPureSpinNs = 20000;
  constexpr int64_t kPreemptedNs = 200000;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto last = t0;
  while (true) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (pred()) {
        return true;
      }
    }
    const auto now = clock::now();
    const int64_t gap =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
    const int64_t dt =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - t0).count();
    last = now;
    if (dt >= spin_ns || gap >= kPreemptedNs) {
      return pred();
    }
    if (dt >= kPureSpinNs) {
      std::this_thread::yield();
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
  ranges_ = std::vector<Range>(static_cast<size_t>(n));
  for (int i = 1; i < n; ++i) {
    workers_.emplace_back([this, gen, i] { worker(gen, i); });
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

bool ThreadPool::take(int id, int64_t& piece) {
  auto pop = [&](std::atomic<uint64_t>& r, bool front) {
    uint64_t v = r.load(std::memory_order_relaxed);
    while (true) {
      const uint64_t f = v >> 32;
      const uint64_t b = v & 0xffffffffu;
      if (f >= b) {
        return false;
      }
      const uint64_t next = front ? ((f + 1) << 32) | b : (f << 32) | (b - 1);
      if (r.compare_exchange_weak(v, next, std::memory_order_relaxed)) {
        piece = static_cast<int64_t>(front ? f : b - 1);
        return true;
      }
    }
  };
  if (pop(ranges_[id].bounds, true)) {
    return true;
  }
  // Steal from the range with most pieces left, until every range is empty.
  while (true) {
    int victim = -1;
    uint64_t most = 0;
    for (int t = 0; t < static_cast<int>(ranges_.size()); ++t) {
      const uint64_t v = ranges_[t].bounds.load(std::memory_order_relaxed);
      const uint64_t f = v >> 32;
      const uint64_t b = v & 0xffffffffu;
      if (f < b && b - f > most) {
        most = b - f;
        victim = t;
      }
    }
    if (victim < 0) {
      return false;
    }
    if (pop(ranges_[victim].bounds, false)) {
      return true;
    }
  }
}

void ThreadPool::run_pieces(int id) {
  FloatModeGuard mode;
  int64_t i = 0;
  while (!failed_.load(std::memory_order_relaxed) && take(id, i)) {
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

void ThreadPool::worker(uint64_t seen, int id) {
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
    run_pieces(id);
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
  // Piece numbers are packed in 32 bits (see Range): larger counts run in slices.
  constexpr int64_t kMaxPieces = int64_t{1} << 31;
  if (n > kMaxPieces) {
    for (int64_t s = 0; s < n; s += kMaxPieces) {
      parallel_for(std::min(kMaxPieces, n - s), [&](int64_t i) { fn(s + i); });
    }
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
  const int64_t nt = static_cast<int64_t>(ranges_.size());
  for (int64_t t = 0; t < nt; ++t) {
    const auto f = static_cast<uint64_t>(n * t / nt);
    const auto b = static_cast<uint64_t>(n * (t + 1) / nt);
    ranges_[static_cast<size_t>(t)].bounds.store((f << 32) | b, std::memory_order_relaxed);
  }
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(mtx_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_work_.notify_all();
  run_pieces(0);
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
