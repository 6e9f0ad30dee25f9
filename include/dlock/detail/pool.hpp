// Internal: a bounded, thread-safe pool of connections, generic over the
// connection handle (the Redis transport's links and PostgreSQL's
// sessions), so the pool logic exists once.
//
//  - bounded: at most `capacity` handles are open (idle or checked out);
//    take() beyond that waits for one to come back, up to a given time;
//  - a handle that broke is dropped, never reused: give_back(h, false), or a
//    handle the `usable` predicate rejects when it is taken out of the idle
//    list. A broken one bumps the generation: the handles taken before it
//    (idle, or checked out and given back later) are suspect (same server)
//    and dropped when next met; invalidate() bumps it too (a failover);
//  - a handle closed on purpose while healthy (its session state was changed
//    for good, or it holds something only closing it frees) is retire()d:
//    its slot is freed and nothing else is suspected;
//  - asynchronous opening: `open()` may return an empty handle, which
//    reserves the slot; the caller opens the connection without blocking and
//    fills the Checkout's handle, or gives it back unhealthy when that failed;
//  - fork(): a pool used in a child process drops what it inherited (the
//    handles' destructors must then send nothing: the parent owns the
//    sessions), bumps the generation and counts from zero. A handle checked
//    out in the parent and given back in the child is dropped uncounted.
#pragma once

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace dlock::detail {

template <class Handle>
class Pool {
 public:
  /// `usable` is asked about an idle handle before it is handed out again
  /// (e.g. "not closed by the server meanwhile"); it must not block.
  explicit Pool(std::size_t capacity, std::function<bool(const Handle&)> usable = {})
      : capacity_(capacity), usable_(std::move(usable)), pid_(::getpid()) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// A checked-out handle; give it back with Pool::give_back().
  struct Checkout {
    Handle handle;
    std::uint64_t epoch = 0;       ///< the process epoch it was taken in (fork())
    std::uint64_t generation = 0;  ///< the generation it was taken in
  };

  /// An idle usable handle of the current generation, else a new one from
  /// `open()` while fewer than capacity are open, else waits up to `wait`
  /// for one of those. Empty when the wait ended first. An exception from
  /// `open()` propagates (the slot is freed and the generation bumped).
  template <class Open>
  [[nodiscard]] std::optional<Checkout> take(std::chrono::nanoseconds wait, Open&& open) {
    std::unique_lock lk(mu_);
    forked_check();
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      while (!idle_.empty()) {
        Idle idle = std::move(idle_.back());
        idle_.pop_back();
        if (idle.generation == generation_ && (!usable_ || usable_(idle.handle)))
          return Checkout{std::move(idle.handle), epoch_, generation_};
        --open_;  // dropped: from before a failure, or no longer usable
      }
      if (open_ < capacity_) break;
      // No wait asked for: return at once (a condition variable's wait for a
      // time already past still sleeps in the kernel, ~0.1 ms, which a caller
      // polling from an event loop pays on every poll).
      if (wait <= std::chrono::nanoseconds::zero()) return std::nullopt;
      if (!free_cv_.wait_until(lk, until, [&] { return !idle_.empty() || open_ < capacity_; })) return std::nullopt;
    }
    ++open_;
    const std::uint64_t epoch = epoch_;
    const std::uint64_t generation = generation_;
    lk.unlock();
    try {
      return Checkout{open(), epoch, generation};
    } catch (...) {
      lk.lock();
      if (epoch == epoch_) {
        --open_;
        ++generation_;
      }
      lk.unlock();
      free_cv_.notify_one();
      throw;
    }
  }

  /// Returns a checked-out handle: kept idle when `healthy` (and usable),
  /// else dropped and the generation bumped.
  void give_back(Checkout c, bool healthy) noexcept {
    {
      std::lock_guard lk(mu_);
      forked_check();
      if (c.epoch != epoch_) {
        // taken before a fork(): not counted here; dropped outside the lock below
      } else if (!healthy || (usable_ && !usable_(c.handle))) {
        --open_;
        ++generation_;  // the others to this server are suspect too
      } else {
        try {
          idle_.push_back(Idle{std::move(c.handle), c.generation});
        } catch (...) {
          --open_;
        }
      }
    }
    free_cv_.notify_one();
  }

  /// Drops a checked-out handle that is healthy but must not be reused (see
  /// above): frees its slot without bumping the generation.
  void retire(Checkout c) noexcept {
    {
      std::lock_guard lk(mu_);
      forked_check();
      if (c.epoch == epoch_) --open_;
    }
    free_cv_.notify_one();
  }

  /// Handles open now (idle or checked out) in this process.
  [[nodiscard]] std::size_t open_count() const {
    std::lock_guard lk(mu_);
    return pid_ == ::getpid() ? open_ : 0;
  }
  /// Idle handles kept now.
  [[nodiscard]] std::size_t idle_count() const {
    std::lock_guard lk(mu_);
    return pid_ == ::getpid() ? idle_.size() : 0;
  }
  /// Retires every handle open now: idle ones are dropped when next met,
  /// checked-out ones when given back (e.g. the server they reach stopped
  /// being the primary).
  void invalidate() noexcept {
    std::lock_guard lk(mu_);
    ++generation_;
  }
  /// Bumped by every broken handle, by invalidate() and by fork().
  [[nodiscard]] std::uint64_t generation() const {
    std::lock_guard lk(mu_);
    return generation_;
  }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct Idle {
    Handle handle;
    std::uint64_t generation;
  };

  void forked_check() {  // under mu_
    if (pid_ == ::getpid()) return;
    // A child process: the idle handles are the parent's sessions too. Drop
    // them (their destructors send nothing); the ones the parent's other
    // threads had checked out never come back here.
    idle_.clear();
    open_ = 0;
    ++generation_;
    ++epoch_;
    pid_ = ::getpid();
  }

  const std::size_t capacity_;
  const std::function<bool(const Handle&)> usable_;
  mutable std::mutex mu_;
  std::condition_variable free_cv_;
  std::vector<Idle> idle_;  ///< most recently used last
  std::size_t open_ = 0;
  std::uint64_t generation_ = 0;
  std::uint64_t epoch_ = 0;  ///< bumped by fork()
  pid_t pid_;
};

}  // namespace dlock::detail
