// dlock/memory_primitives.hpp: MemoryPrimitives, the in-process backend of
// RwLock, Semaphore and Election.
//
// The primitives' counterpart of MemoryBackend (memory.hpp): a lock service
// that lives in this process. Leases expire on the given clock, release and
// extend are owner-checked, fencing tokens increase per name and primitive,
// and every release wakes the name's waiters at once (subscribe_release, with
// the non-blocking Subscription::on_release of AsyncNotifiesRelease).
// It models SharedLockBackend, SemaphoreBackend and ElectionBackend
// (primitives_backend.hpp), and their asynchronous forms
// (AsyncSharedLockBackend, ...: each operation is done at once, its
// completion posted to the caller's executor); a read-write lock, a semaphore
// and an election of the same name are separate objects.
//
//   dlock::MemoryPrimitives prims;
//   dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "catalog");
//   dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "tenant:7", 4);
//
// A handle, like MemoryBackend: copies share one table, which lives as long as
// any copy, Lock or subscription using it. Thread-safe (one mutex). The table
// keeps a small record per name ever used, so it suits a bounded set of
// names. The clock must outlive the table.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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
#include "primitives_backend.hpp"

namespace dlock {

class MemoryPrimitives {
  struct Lease1 {  // one live lease: its owner and expiry
    OwnerId owner;
    TimePoint expires_at;
  };
  struct Slot : detail::ReleaseSignal {    // a name's notify slot: its releases, for subscribers
    std::optional<Lease1> writer;          // rw: the writer; election: the leader
    std::map<OwnerId, TimePoint> holders;  // rw: readers; semaphore: permits (owner -> expiry)
    std::optional<Lease1> writer_waiting;  // rw: a writer blocked by readers (writer preference)
    std::optional<std::uint32_t> permits;  // semaphore: the operator's count
    std::string candidate;                 // election: the leader's candidate id
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
    std::condition_variable_any released;
    std::unordered_map<std::string, Slot, Hash, std::equal_to<>> slots;  // never erased; nodes never move
  };
  enum class Kind : char { rw = 'r', semaphore = 's', election = 'e' };
  enum class Seat { one, many };  // a lease held alone (writer, leader) or among many (readers, permits)

 public:
  using Handle = NoHandle;

  /// Waits for a release of any primitive of one name; see NotifiesRelease
  /// (backend.hpp) and AsyncNotifiesRelease (lock.hpp).
  using Subscription = detail::MemorySubscription<State>;

  explicit MemoryPrimitives(const Clock& clock = steady_clock()) : state_(std::make_shared<State>(clock)) {}

  [[nodiscard]] std::string_view kind() const noexcept { return "memory"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "in-process"; }
  [[nodiscard]] const void* identity() const noexcept { return state_.get(); }

  /// One subscription per name wakes on a release of any of its primitives.
  [[nodiscard]] Subscription subscribe_release(std::string_view name) {
    std::lock_guard lk(state_->mu);
    return Subscription(state_, notify_slot(name));
  }

  // ---- SharedLockBackend ----

  [[nodiscard]] AcquireResult<Handle> try_acquire_shared(const AcquireRequest& r) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::rw, r.name);
    const TimePoint now = state_->clock.now();
    prune(s, now);
    if (s.writer) return contended(s.writer->expires_at, now);
    if (s.writer_waiting) return contended(s.writer_waiting->expires_at, now);
    s.holders[r.owner] = detail::saturating_add(now, r.ttl);
    return Grant<Handle>{.token = s.fence, .valid_until = detail::saturating_add(r.started, r.ttl)};
  }
  [[nodiscard]] ReleaseResult release_shared(std::string_view name, Lease<Handle>& lease) {
    return release_lease(Kind::rw, name, lease.owner, Seat::many);
  }
  [[nodiscard]] std::optional<TimePoint> extend_shared(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend_lease(Kind::rw, name, lease.owner, Seat::many, ttl, started);
  }

  /// A writer that finds live readers marks itself waiting for the request's
  /// TTL (new readers are refused meanwhile); its next attempt renews the mark,
  /// and any writer's grant clears it.
  [[nodiscard]] AcquireResult<Handle> try_acquire_exclusive(const AcquireRequest& r) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::rw, r.name);
    const TimePoint now = state_->clock.now();
    prune(s, now);
    if (s.writer) return contended(s.writer->expires_at, now);
    if (!s.holders.empty()) {
      if (!s.writer_waiting || s.writer_waiting->owner == r.owner)
        s.writer_waiting = Lease1{r.owner, detail::saturating_add(now, r.ttl)};
      return contended(first_expiry(s), now);
    }
    s.writer_waiting.reset();  // a writer got in: the preference has done its work
    return grant_single(s, r, now);
  }
  [[nodiscard]] ReleaseResult release_exclusive(std::string_view name, Lease<Handle>& lease) {
    return release_lease(Kind::rw, name, lease.owner, Seat::one);
  }
  [[nodiscard]] std::optional<TimePoint> extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                          std::chrono::milliseconds ttl, TimePoint started) {
    return extend_lease(Kind::rw, name, lease.owner, Seat::one, ttl, started);
  }

  // ---- SemaphoreBackend ----

  [[nodiscard]] AcquireResult<Handle> try_acquire_permit(const AcquireRequest& r, std::uint32_t permits) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::semaphore, r.name);
    const TimePoint now = state_->clock.now();
    prune(s, now);
    if (s.holders.size() >= s.permits.value_or(permits)) {
      return contended(first_expiry(s), now);
    }
    s.holders[r.owner] = detail::saturating_add(now, r.ttl);
    return Grant<Handle>{.token = ++s.fence, .valid_until = detail::saturating_add(r.started, r.ttl)};
  }
  [[nodiscard]] ReleaseResult release_permit(std::string_view name, Lease<Handle>& lease) {
    return release_lease(Kind::semaphore, name, lease.owner, Seat::many);
  }
  [[nodiscard]] std::optional<TimePoint> extend_permit(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend_lease(Kind::semaphore, name, lease.owner, Seat::many, ttl, started);
  }
  [[nodiscard]] std::uint32_t permits(std::string_view name, std::uint32_t configured) {
    std::lock_guard lk(state_->mu);
    return slot(Kind::semaphore, name).permits.value_or(configured);
  }
  /// Operator: sets the count of `name` (nullopt: each caller's own count).
  /// A larger count wakes waiters.
  void set_permits(std::string_view name, std::optional<std::uint32_t> permits) {
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(state_->mu);
      slot(Kind::semaphore, name).permits = permits;
      wake = notify_slot(name).released();
    }
    detail::wake_waiters(state_->released, wake);
  }
  /// Live permits of `name` (operator view).
  [[nodiscard]] std::size_t permits_held(std::string_view name) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::semaphore, name);
    prune(s, state_->clock.now());
    return s.holders.size();
  }

  // ---- ElectionBackend ----

  [[nodiscard]] AcquireResult<Handle> try_acquire_leader(const AcquireRequest& r, std::string_view candidate) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::election, r.name);
    const TimePoint now = state_->clock.now();
    prune(s, now);
    if (s.writer) return contended(s.writer->expires_at, now);
    s.candidate = candidate;
    return grant_single(s, r, now);
  }
  [[nodiscard]] ReleaseResult release_leader(std::string_view name, Lease<Handle>& lease) {
    return release_lease(Kind::election, name, lease.owner, Seat::one);
  }
  [[nodiscard]] std::optional<TimePoint> extend_leader(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend_lease(Kind::election, name, lease.owner, Seat::one, ttl, started);
  }
  [[nodiscard]] std::optional<LeaderInfo> leader(std::string_view name) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(Kind::election, name);
    prune(s, state_->clock.now());
    if (!s.writer) return std::nullopt;
    return LeaderInfo{s.candidate, s.fence};
  }

  // ---- asynchronous forms (AsyncSharedLockBackend, AsyncSemaphoreBackend,
  // AsyncElectionBackend): each operation is done at once; its completion is
  // posted to `ex`. ----

  void async_try_acquire_shared(const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<Handle> done) {
    detail::post_outcome(ex, std::move(done), [&] { return try_acquire_shared(r); });
  }
  void async_release_shared(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return release_shared(name, lease); });
  }
  void async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return extend_shared(name, lease, ttl, started); });
  }
  void async_try_acquire_exclusive(const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                                   AcquireCompletion<Handle> done) {
    detail::post_outcome(ex, std::move(done), [&] { return try_acquire_exclusive(r); });
  }
  void async_release_exclusive(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                               ReleaseCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return release_exclusive(name, lease); });
  }
  void async_extend_exclusive(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                              TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return extend_exclusive(name, lease, ttl, started); });
  }
  void async_try_acquire_permit(const AcquireRequest& r, std::uint32_t permits, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<Handle> done) {
    detail::post_outcome(ex, std::move(done), [&] { return try_acquire_permit(r, permits); });
  }
  void async_release_permit(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return release_permit(name, lease); });
  }
  void async_extend_permit(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return extend_permit(name, lease, ttl, started); });
  }
  void async_try_acquire_leader(const AcquireRequest& r, std::string_view candidate,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
    detail::post_outcome(ex, std::move(done), [&] { return try_acquire_leader(r, candidate); });
  }
  void async_release_leader(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return release_leader(name, lease); });
  }
  void async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    detail::post_outcome(ex, std::move(done), [&] { return extend_leader(name, lease, ttl, started); });
  }

  /// Administrative: ends every lease of every primitive named `name` (like
  /// an operator deleting its keys on a server); holders find them lost at
  /// their next extension. Returns how many live leases were removed.
  std::size_t force_release(std::string_view name) {
    std::size_t removed = 0;
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(state_->mu);
      const TimePoint now = state_->clock.now();
      for (Kind k : {Kind::rw, Kind::semaphore, Kind::election}) {
        Slot& s = slot(k, name);
        prune(s, now);
        removed += s.holders.size() + (s.writer ? 1 : 0);
        s.holders.clear();
        s.writer.reset();
        s.writer_waiting.reset();
      }
      wake = notify_slot(name).released();
    }
    detail::wake_waiters(state_->released, wake);
    return removed;
  }

 private:
  static std::string key(Kind k, std::string_view name) {
    std::string out(1, static_cast<char>(k));
    out.append(1, ':').append(name);
    return out;
  }
  // Require state_->mu.
  Slot& slot_at(const std::string& k) {
    auto it = state_->slots.find(k);
    if (it == state_->slots.end()) it = state_->slots.emplace(k, Slot{}).first;
    return it->second;
  }
  Slot& slot(Kind k, std::string_view name) { return slot_at(key(k, name)); }
  Slot& notify_slot(std::string_view name) { return slot_at(std::string("n:").append(name)); }

  static void prune(Slot& s, TimePoint now) {
    if (s.writer && now >= s.writer->expires_at) s.writer.reset();
    if (s.writer_waiting && now >= s.writer_waiting->expires_at) s.writer_waiting.reset();
    std::erase_if(s.holders, [now](const auto& h) { return now >= h.second; });
  }
  static TimePoint first_expiry(const Slot& s) {
    TimePoint first = TimePoint::max();
    for (const auto& [owner, expires] : s.holders) first = std::min(first, expires);
    return first;
  }
  static Contended contended(TimePoint until, TimePoint now) {
    return Contended{detail::saturating_ceil<std::chrono::milliseconds>(detail::saturating_sub(until, now))};
  }
  static Grant<Handle> grant_single(Slot& s, const AcquireRequest& r, TimePoint now) {
    s.writer = Lease1{r.owner, detail::saturating_add(now, r.ttl)};
    return Grant<Handle>{.token = ++s.fence, .valid_until = detail::saturating_add(r.started, r.ttl)};
  }

  // The live lease of `owner` in `s`: the single holder (writer, leader) or
  // one of the set (readers, permits); its expiry, or null when it has none.
  static TimePoint* lease_of(Slot& s, const OwnerId& owner, Seat seat) {
    if (seat == Seat::one) return s.writer && s.writer->owner == owner ? &s.writer->expires_at : nullptr;
    auto it = s.holders.find(owner);
    return it == s.holders.end() ? nullptr : &it->second;
  }
  ReleaseResult release_lease(Kind k, std::string_view name, const OwnerId& owner, Seat seat) {
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(state_->mu);
      Slot& s = slot(k, name);
      prune(s, state_->clock.now());
      if (!lease_of(s, owner, seat)) return ReleaseResult::not_held;
      if (seat == Seat::one) {
        s.writer.reset();
      } else {
        s.holders.erase(owner);
      }
      wake = notify_slot(name).released();
    }
    detail::wake_waiters(state_->released, wake);
    return ReleaseResult::released;
  }
  std::optional<TimePoint> extend_lease(Kind k, std::string_view name, const OwnerId& owner, Seat seat,
                                        std::chrono::milliseconds ttl, TimePoint started) {
    std::lock_guard lk(state_->mu);
    Slot& s = slot(k, name);
    const TimePoint now = state_->clock.now();
    prune(s, now);
    TimePoint* expires = lease_of(s, owner, seat);
    if (!expires) return std::nullopt;
    *expires = detail::saturating_add(now, ttl);
    return detail::saturating_add(started, ttl);
  }

  std::shared_ptr<State> state_;
};

}  // namespace dlock
