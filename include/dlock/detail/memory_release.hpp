// Internal: the release notifications of the in-process backends
// (MemoryBackend, MemoryPrimitives): a name's release count with the
// callbacks registered on it, and the subscription that waits on it, blocking
// (wait_for, stop-aware) or not (on_release: AsyncNotifiesRelease in lock.hpp).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <utility>
#include <vector>

#include "time.hpp"

namespace dlock::detail {

/// One subscription's view of its name: the releases it has seen, and the
/// callback it registered with on_release() (empty: none).
struct ReleaseWaiter {
  std::uint64_t seen = 0;
  std::function<void()> on_release;
};

/// A name's releases, for its subscribers. Guarded by the table's mutex.
struct ReleaseSignal {
  std::uint64_t releases = 0;                           ///< bumped on every release
  std::vector<std::shared_ptr<ReleaseWaiter>> waiters;  ///< subscriptions with a callback registered

  /// Counts a release and takes the callbacks it wakes (each subscription's
  /// release is consumed by its callback).
  [[nodiscard]] std::vector<std::function<void()>> released() {
    ++releases;
    std::vector<std::function<void()>> wake;
    wake.reserve(waiters.size());
    for (auto& w : waiters) {
      w->seen = releases;
      wake.push_back(std::exchange(w->on_release, nullptr));
    }
    waiters.clear();
    return wake;
  }
  /// Removes `w`'s registration.
  void drop(const std::shared_ptr<ReleaseWaiter>& w) noexcept {
    w->on_release = nullptr;
    std::erase(waiters, w);
  }
};

/// Without the table's mutex: wakes the blocked (`cv`) and the registered waiters.
inline void wake_waiters(std::condition_variable_any& cv, std::vector<std::function<void()>>& wake) {
  cv.notify_all();
  for (auto& f : wake) f();
}

/// A subscription to one name's ReleaseSignal (see NotifiesRelease in
/// backend.hpp and AsyncNotifiesRelease in lock.hpp). State has `mu` (the
/// table's mutex) and `released` (a condition_variable_any notified on every
/// release); the subscription keeps it alive.
template <class State>
class MemorySubscription {
 public:
  /// Requires state->mu.
  MemorySubscription(std::shared_ptr<State> state, ReleaseSignal& s)
      : state_(std::move(state)),
        signal_(&s),
        w_(std::make_shared<ReleaseWaiter>(ReleaseWaiter{.seen = s.releases, .on_release = {}})) {}
  MemorySubscription(MemorySubscription&&) noexcept = default;
  MemorySubscription& operator=(MemorySubscription&& o) noexcept {
    if (this != &o) {
      unregister();
      state_ = std::move(o.state_);
      signal_ = o.signal_;
      w_ = std::move(o.w_);
    }
    return *this;
  }
  ~MemorySubscription() { unregister(); }

  /// True when a release happened since subscribing or since the last
  /// wait_for() that returned true (or on_release() callback that ran).
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) { return wait_for(d, std::stop_token{}); }
  /// wait_for(d), ended early (false) when `stop` is requested.
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds d, const std::stop_token& stop) {
    std::unique_lock lk(state_->mu);
    const auto until = saturating_add(std::chrono::steady_clock::now(), d);  // d may be "forever"
    if (!state_->released.wait_until(lk, stop, until, [this] { return signal_->releases != w_->seen; })) return false;
    w_->seen = signal_->releases;
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
      if (signal_->releases == w_->seen) {
        if (!w_->on_release) signal_->waiters.push_back(w_);
        w_->on_release = std::move(f);
        return;
      }
      w_->seen = signal_->releases;
      signal_->drop(w_);
    }
    f();
  }

 private:
  void unregister() noexcept {
    if (!w_) return;
    std::lock_guard lk(state_->mu);
    if (w_->on_release) signal_->drop(w_);
  }
  std::shared_ptr<State> state_;
  ReleaseSignal* signal_;
  std::shared_ptr<ReleaseWaiter> w_;
};

}  // namespace dlock::detail
