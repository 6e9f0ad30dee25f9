// dlock/memory.hpp: MemoryBackend, locks inside one process.
//
// Behaves like a lock server that lives in this process: TTLs expire on the
// backend's clock, release and extend are owner-checked, fencing tokens
// increase per name, and releases wake waiters at once. Use it for locks
// between threads of one process, as the embedded default, and in unit tests
// (with a ManualClock to move time). Thread-safe; every operation is a short
// critical section on one mutex. The backend keeps a small record per lock
// name ever used (the fencing counter), so it suits a bounded set of names.
// It must outlive the Locks and subscriptions that use it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "backend.hpp"
#include "clock.hpp"

namespace dlock {

class MemoryBackend {
  struct Slot {
    std::optional<OwnerId> owner;
    TimePoint expires_at{};
    std::uint64_t fence = 0;
    std::uint64_t releases = 0;  ///< bumped on every release, for subscribers
  };

 public:
  using Handle = NoHandle;

  /// Waits for a release of one lock name; see NotifiesRelease in backend.hpp.
  class Subscription {
   public:
    /// True when a release happened since subscribing or since the last
    /// wait_for() that returned true.
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) {
      std::unique_lock lk(backend_->mu_);
      if (!backend_->released_.wait_for(lk, d, [this] { return slot_->releases != seen_; })) return false;
      seen_ = slot_->releases;
      return true;
    }

   private:
    friend class MemoryBackend;
    Subscription(MemoryBackend& b, const Slot& s) : backend_(&b), slot_(&s), seen_(s.releases) {}
    MemoryBackend* backend_;
    const Slot* slot_;  // slots are never erased, and unordered_map nodes never move
    std::uint64_t seen_;
  };

  explicit MemoryBackend(const Clock& clock = steady_clock()) : clock_(clock) {}
  MemoryBackend(const MemoryBackend&) = delete;
  MemoryBackend& operator=(const MemoryBackend&) = delete;

  [[nodiscard]] std::string_view kind() const noexcept { return "memory"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "in-process"; }

  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& r) {
    std::lock_guard lk(mu_);
    Slot& s = slot(r.name);
    const TimePoint now = clock_.now();
    if (s.owner && now < s.expires_at) {
      return Contended{std::chrono::ceil<std::chrono::milliseconds>(s.expires_at - now)};
    }
    s.owner = r.owner;
    s.expires_at = now + r.ttl;
    return Grant<Handle>{.token = ++s.fence, .valid_until = r.started + r.ttl};
  }

  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    {
      std::lock_guard lk(mu_);
      Slot* s = held_by(name, lease.owner);
      if (!s) return ReleaseResult::not_held;
      s->owner.reset();
      ++s->releases;
    }
    released_.notify_all();
    return ReleaseResult::released;
  }

  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started) {
    std::lock_guard lk(mu_);
    Slot* s = held_by(name, lease.owner);
    if (!s) return std::nullopt;
    s->expires_at = clock_.now() + ttl;
    return started + ttl;
  }

  [[nodiscard]] Subscription subscribe_release(std::string_view name) {
    std::lock_guard lk(mu_);
    return Subscription(*this, slot(name));
  }

  /// Administrative: deletes the lock whoever holds it (like an operator's
  /// DEL on a server). Returns whether a live lock was removed.
  bool force_release(std::string_view name) {
    bool removed = false;
    {
      std::lock_guard lk(mu_);
      auto it = slots_.find(name);
      if (it != slots_.end() && it->second.owner) {
        removed = clock_.now() < it->second.expires_at;
        it->second.owner.reset();
        ++it->second.releases;
      }
    }
    released_.notify_all();
    return removed;
  }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  Slot& slot(std::string_view name) {
    auto it = slots_.find(name);
    if (it == slots_.end()) it = slots_.emplace(std::string(name), Slot{}).first;
    return it->second;
  }

  Slot* held_by(std::string_view name, const OwnerId& owner) {
    auto it = slots_.find(name);
    if (it == slots_.end()) return nullptr;
    Slot& s = it->second;
    if (!s.owner || *s.owner != owner || clock_.now() >= s.expires_at) return nullptr;
    return &s;
  }

  const Clock& clock_;
  std::mutex mu_;
  std::condition_variable released_;
  std::unordered_map<std::string, Slot, Hash, std::equal_to<>> slots_;
};

}  // namespace dlock
