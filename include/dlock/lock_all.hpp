// dlock/lock_all.hpp: lock_all(), several distributed locks taken in one
// canonical order, and MultiGuard, which holds them.
//
//   auto both = dlock::lock_all(payments, orders);            // blocks
//   auto maybe = dlock::try_lock_all_for(2s, payments, orders); // one deadline for the set
//   if (maybe) { ... }
//
// Whatever order the caller passes, the locks are acquired in one total order
// that every process computes alike: backend kind, then endpoint, then lock
// name (see detail::sort_canonically), so two processes taking the same set
// can never deadlock on each other. If any acquisition fails (timeout,
// error), the ones already taken are released before lock_all returns or
// throws. The guard releases them all on destruction, without throwing
// (failures go to each lock's observer); like Guard, it is bound to the
// acquisitions it adopted and must not outlive the locks.
//
// std::scoped_lock also works with dlock locks, but its try-and-back-off
// algorithm spins between processes under contention; prefer lock_all.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <tuple>
#include <utility>

#include "backend.hpp"
#include "detail/time.hpp"
#include "guard.hpp"

namespace dlock {

template <class... Ls>
class [[nodiscard]] MultiGuard {
 public:
  MultiGuard() noexcept = default;
  /// Adopts the acquisitions the locks hold now.
  explicit MultiGuard(Ls&... locks) noexcept
      : locks_(&locks...), guards_(Guard<Ls>(locks, std::adopt_lock)...), engaged_(true) {}
  MultiGuard(MultiGuard&& other) noexcept
      : locks_(other.locks_), guards_(std::move(other.guards_)), engaged_(std::exchange(other.engaged_, false)) {}
  MultiGuard& operator=(MultiGuard&& other) noexcept {
    if (this != &other) {
      unlock();
      locks_ = other.locks_;
      guards_ = std::move(other.guards_);
      engaged_ = std::exchange(other.engaged_, false);
    }
    return *this;
  }
  MultiGuard(const MultiGuard&) = delete;
  MultiGuard& operator=(const MultiGuard&) = delete;
  ~MultiGuard() { unlock(); }

  /// True if the set was acquired (and not yet released).
  explicit operator bool() const noexcept { return engaged_; }
  /// True while every acquisition of the set is held and valid.
  [[nodiscard]] bool owns_lock() const noexcept {
    return engaged_ && std::apply([](const auto&... g) { return (g.owns_lock() && ...); }, guards_);
  }
  /// The I-th lock, in the order the caller passed them.
  template <std::size_t I>
  [[nodiscard]] auto& get() const noexcept {
    return *std::get<I>(locks_);
  }
  /// Releases every acquisition of the set that is still its lock's current
  /// one; never throws.
  void unlock() noexcept {
    if (!std::exchange(engaged_, false)) return;
    std::apply([](auto&... g) { (g.unlock(), ...); }, guards_);
  }

 private:
  std::tuple<Ls*...> locks_{};
  std::tuple<Guard<Ls>...> guards_{};
  bool engaged_ = false;
};

namespace detail {

/// One lock of a set, type-erased for sorting and acquisition.
struct SetMember {
  std::string_view kind;      // backend kind()
  std::string_view endpoint;  // backend endpoint()
  std::string_view name;
  const void* backend;                                    // backend_identity(): breaks ties within this process only
  std::function<bool(std::optional<TimePoint>)> acquire;  // nullopt: block (lock())
  std::function<void()> release;                          // noexcept unlock()
};

/// The canonical order: backend kind, endpoint, then lock name, which every
/// process computes alike (object addresses differ per process). Members
/// equal in all three (two backend objects for one service) are ordered by
/// backend identity, which is consistent within this process.
inline void sort_canonically(std::span<SetMember> members) {
  std::sort(members.begin(), members.end(), [](const SetMember& a, const SetMember& b) {
    const auto ka = std::tie(a.kind, a.endpoint, a.name);
    const auto kb = std::tie(b.kind, b.endpoint, b.name);
    return ka < kb || (ka == kb && std::less<const void*>{}(a.backend, b.backend));
  });
}

/// Acquires all in canonical order; on failure releases what it took. Returns
/// false on a deadline; rethrows errors.
inline bool acquire_set(std::span<SetMember> members, std::optional<TimePoint> deadline) {
  sort_canonically(members);
  std::size_t taken = 0;
  try {
    for (; taken < members.size(); ++taken)
      if (!members[taken].acquire(deadline)) break;
  } catch (...) {
    while (taken > 0) members[--taken].release();
    throw;
  }
  if (taken == members.size()) return true;
  while (taken > 0) members[--taken].release();
  return false;
}

template <class L>
SetMember member_of(L& lock) {
  const auto& backend = std::as_const(lock).backend();
  return SetMember{backend.kind(),
                   backend.endpoint(),
                   lock.name(),
                   backend_identity(backend),
                   [&lock](std::optional<TimePoint> deadline) {
                     if (!deadline) {
                       lock.lock();
                       return true;
                     }
                     return lock.try_lock_until(*deadline);
                   },
                   [&lock] { lock.unlock(); }};
}

}  // namespace detail

/// Blocks until every lock is held (each with its own retry policy and
/// acquire_timeout). Throws what Lock::lock() throws, after releasing the
/// locks already taken.
template <class... Ls>
[[nodiscard]] MultiGuard<Ls...> lock_all(Ls&... locks) {
  std::array<detail::SetMember, sizeof...(Ls)> members{detail::member_of(locks)...};
  detail::acquire_set(members, std::nullopt);
  return MultiGuard<Ls...>(locks...);
}

/// Tries until `deadline` (steady clock) to hold every lock; an empty guard
/// if the deadline passes first, with none of them held.
template <class... Ls>
[[nodiscard]] MultiGuard<Ls...> try_lock_all_until(TimePoint deadline, Ls&... locks) {
  std::array<detail::SetMember, sizeof...(Ls)> members{detail::member_of(locks)...};
  if (!detail::acquire_set(members, deadline)) return MultiGuard<Ls...>();
  return MultiGuard<Ls...>(locks...);
}

template <class Rep, class Period, class... Ls>
[[nodiscard]] MultiGuard<Ls...> try_lock_all_for(const std::chrono::duration<Rep, Period>& timeout, Ls&... locks) {
  return try_lock_all_until(detail::saturating_add(std::chrono::steady_clock::now(), timeout), locks...);
}

}  // namespace dlock
