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

#include <boost/asio/post.hpp>

#include "backend.hpp"
#include "clock.hpp"
#include "detail/time.hpp"

namespace dlock {

class MemoryBackend {
  // One subscription's view of its name: the releases it has seen, and the
  // callback it registered with on_release() (empty: none).
  struct Waiter {
    std::uint64_t seen = 0;
    std::function<void()> on_release;
  };
  struct Slot {
    std::optional<OwnerId> owner;
    TimePoint expires_at{};
    std::uint64_t fence = 0;
    std::uint64_t releases = 0;                    ///< bumped on every release, for subscribers
    std::vector<std::shared_ptr<Waiter>> waiters;  ///< subscriptions with a callback registered
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
  /// and AsyncNotifiesRelease in lock.hpp.
  class Subscription {
   public:
    Subscription(Subscription&&) noexcept = default;
    Subscription& operator=(Subscription&& o) noexcept {
      if (this != &o) {
        unregister();
        state_ = std::move(o.state_);
        slot_ = o.slot_;
        w_ = std::move(o.w_);
      }
      return *this;
    }
    ~Subscription() { unregister(); }

    /// True when a release happened since subscribing or since the last
    /// wait_for() that returned true (or on_release() callback that ran).
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) { return wait_for(d, std::stop_token{}); }
    /// wait_for(d), ended early (false) when `stop` is requested.
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d, const std::stop_token& stop) {
      std::unique_lock lk(state_->mu);
      const auto until = detail::saturating_add(std::chrono::steady_clock::now(), d);  // d may be "forever"
      if (!state_->released.wait_until(lk, stop, until, [this] { return slot_->releases != w_->seen; })) return false;
      w_->seen = slot_->releases;
      return true;
    }

    /// Non-blocking wait: `f` runs once, on the releasing thread, at the next
    /// release of the name, or at once (inside this call) when a release
    /// happened since subscribing or since the last wake-up. Replaces a
    /// callback registered before; destroying the subscription drops it (a
    /// release that took it just before may still run it once). `f` must
    /// not throw and must not block.
    void on_release(std::function<void()> f) {
      {
        std::lock_guard lk(state_->mu);
        if (slot_->releases == w_->seen) {
          if (!w_->on_release) slot_->waiters.push_back(w_);
          w_->on_release = std::move(f);
          return;
        }
        w_->seen = slot_->releases;
        drop(*slot_, w_);
      }
      f();
    }

   private:
    friend class MemoryBackend;
    Subscription(std::shared_ptr<State> state, Slot& s)
        : state_(std::move(state)),
          slot_(&s),
          w_(std::make_shared<Waiter>(Waiter{.seen = s.releases, .on_release = {}})) {}
    void unregister() noexcept {
      if (!w_) return;
      std::lock_guard lk(state_->mu);
      if (w_->on_release) drop(*slot_, w_);
    }
    std::shared_ptr<State> state_;
    Slot* slot_;
    std::shared_ptr<Waiter> w_;
  };

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
      wake = released(*s);
    }
    notify(wake);
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
    complete(ex, std::move(done), [&] { return try_acquire(r); });
  }
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done) {
    complete(ex, std::move(done), [&] { return release(name, lease); });
  }
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    complete(ex, std::move(done), [&] { return extend(name, lease, ttl, started); });
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
        wake = released(it->second);
      }
    }
    notify(wake);
    return removed;
  }

 private:
  // Runs `op` now and posts its outcome to `done` on `ex`.
  template <class Done, class Op>
  static void complete(const boost::asio::any_io_executor& ex, Done done, Op op) {
    using R = decltype(op());
    std::exception_ptr error;
    std::optional<R> result;
    try {
      result.emplace(op());
    } catch (...) {
      error = std::current_exception();
    }
    boost::asio::post(ex, [done = std::move(done), error, result = std::move(result)]() mutable {
      done(error, result ? std::move(*result) : R{});
    });
  }

  // Requires state_->mu: counts a release of `s` and takes the callbacks it
  // wakes (each subscription's release is consumed by its callback).
  static std::vector<std::function<void()>> released(Slot& s) {
    ++s.releases;
    std::vector<std::function<void()>> wake;
    wake.reserve(s.waiters.size());
    for (auto& w : s.waiters) {
      w->seen = s.releases;
      wake.push_back(std::exchange(w->on_release, nullptr));
    }
    s.waiters.clear();
    return wake;
  }
  // Without state_->mu: wakes the blocked and the registered waiters.
  void notify(std::vector<std::function<void()>>& wake) {
    state_->released.notify_all();
    for (auto& f : wake) f();
  }
  // Requires state_->mu: removes `w`'s registration.
  static void drop(Slot& s, const std::shared_ptr<Waiter>& w) noexcept {
    w->on_release = nullptr;
    std::erase(s.waiters, w);
  }

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
