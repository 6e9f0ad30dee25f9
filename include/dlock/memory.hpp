// dlock/memory.hpp: MemoryBackend, locks inside one process.
//
// Behaves like a lock server that lives in this process: TTLs expire on the
// backend's clock, release and extend are owner-checked, fencing tokens
// increase per name, and releases wake waiters at once. Use it for locks
// between threads of one process, as the embedded default, and in unit tests
// (with a ManualClock to move time). It models NotifiesRelease (with the
// non-blocking Subscription::on_release, AsyncNotifiesRelease in lock.hpp)
// and AsyncBackend.
//
// A MemoryBackend is a handle: copies share one lock table, and the table
// lives as long as any copy, Lock or subscription that uses it. Thread-safe;
// every operation is a short critical section on one mutex. The table keeps a
// small record per lock name ever used (the fencing counter), so it suits a
// bounded set of names. The clock must outlive the table.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "clock.hpp"
#include "detail/memory_release.hpp"
#include "detail/post_outcome.hpp"
#include "detail/time.hpp"

namespace dlock {

class MemoryBackend {
  struct Slot : detail::ReleaseSignal {  // its releases, for subscribers
    std::optional<OwnerId> owner;
    TimePoint expires_at{};
    std::uint64_t fence = 0;
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  struct State {
    explicit State(const Clock& c) : clock(c) {}
    const Clock& clock;
    std::mutex mu;
    std::condition_variable_any released;                                // _any: a waiter's stop request ends its wait
    std::unordered_map<std::string, Slot, Hash, std::equal_to<>> slots;  // never erased; nodes never move
  };

 public:
  using Handle = NoHandle;

  /// Waits for a release of one lock name; see NotifiesRelease in backend.hpp
  /// and AsyncNotifiesRelease in lock.hpp (wait_for, with or without a stop
  /// token, and the non-blocking on_release).
  using Subscription = detail::MemorySubscription<State>;

  explicit MemoryBackend(const Clock& clock = steady_clock()) : state_(std::make_shared<State>(clock)) {}

  [[nodiscard]] std::string_view kind() const noexcept { return "memory"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "in-process"; }
  /// Equal for all copies of this handle.
  [[nodiscard]] const void* identity() const noexcept { return state_.get(); }

  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& r) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(r.name);
    const TimePoint now = state_->clock.now();
    if (s.owner && now < s.expires_at) {
      return Contended{detail::saturating_ceil<std::chrono::milliseconds>(detail::saturating_sub(s.expires_at, now))};
    }
    s.owner = r.owner;
    s.expires_at = detail::saturating_add(now, r.ttl);
    return Grant<Handle>{.token = ++s.fence, .valid_until = detail::saturating_add(r.started, r.ttl)};
  }

  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(state_->mu);
      Slot* s = held_by(name, lease.owner);
      if (!s) return ReleaseResult::not_held;
      s->owner.reset();
      wake = s->released();
    }
    detail::wake_waiters(state_->released, wake);
    return ReleaseResult::released;
  }

  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started) {
    std::lock_guard lk(state_->mu);
    Slot* s = held_by(name, lease.owner);
    if (!s) return std::nullopt;
    s->expires_at = detail::saturating_add(state_->clock.now(), ttl);
    return detail::saturating_add(started, ttl);
  }

  [[nodiscard]] Subscription subscribe_release(std::string_view name) {
    std::lock_guard lk(state_->mu);
    return Subscription(state_, slot(name));
  }

  // ---- AsyncBackend: each operation is a short critical section, done at
  // once; its completion is posted to `ex`. ----

  void async_try_acquire(const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done) {
    detail::post_outcome(ex, std::move(done), [&] { return try_acquire(r); });
  }
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return release(name, lease); });
  }
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return extend(name, lease, ttl, started); });
  }

  /// Administrative: deletes the lock whoever holds it (like an operator's
  /// DEL on a server). Returns whether a live lock was removed.
  bool force_release(std::string_view name) {
    bool removed = false;
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(state_->mu);
      auto it = state_->slots.find(name);
      if (it != state_->slots.end() && it->second.owner) {
        removed = state_->clock.now() < it->second.expires_at;
        it->second.owner.reset();
        wake = it->second.released();
      }
    }
    detail::wake_waiters(state_->released, wake);
    return removed;
  }

 private:
  // Require state_->mu.
  Slot& slot(std::string_view name) {
    auto it = state_->slots.find(name);
    if (it == state_->slots.end()) it = state_->slots.emplace(std::string(name), Slot{}).first;
    return it->second;
  }
  Slot* held_by(std::string_view name, const OwnerId& owner) {
    auto it = state_->slots.find(name);
    if (it == state_->slots.end()) return nullptr;
    Slot& s = it->second;
    if (!s.owner || *s.owner != owner || state_->clock.now() >= s.expires_at) return nullptr;
    return &s;
  }

  std::shared_ptr<State> state_;
};

}  // namespace dlock
