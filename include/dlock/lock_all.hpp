// dlock/lock_all.hpp: lock_all(), several distributed locks taken in one
// canonical order, and MultiGuard, which holds them.
//
//   auto both = dlock::lock_all(payments, orders);            // blocks
//   auto maybe = dlock::try_lock_all_for(2s, payments, orders); // one deadline for the set
//   if (maybe) { ... }
//
// Whatever order the caller passes, the locks are acquired in one total order
// (backend object, then lock name), so two processes taking the same set can
// never deadlock on each other. If any acquisition fails (timeout, error), the
// ones already taken are released before lock_all returns or throws. The guard
// releases them all on destruction, without throwing (failures go to each
// lock's observer).
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

namespace dlock {

template <class... Ls>
class [[nodiscard]] MultiGuard {
 public:
  MultiGuard() noexcept = default;
  explicit MultiGuard(Ls&... locks) noexcept : locks_(&locks...), engaged_(true) {}
  MultiGuard(MultiGuard&& other) noexcept : locks_(other.locks_), engaged_(std::exchange(other.engaged_, false)) {}
  MultiGuard& operator=(MultiGuard&& other) noexcept {
    if (this != &other) {
      unlock();
      locks_ = other.locks_;
      engaged_ = std::exchange(other.engaged_, false);
    }
    return *this;
  }
  MultiGuard(const MultiGuard&) = delete;
  MultiGuard& operator=(const MultiGuard&) = delete;
  ~MultiGuard() { unlock(); }

  /// True if the set was acquired (and not yet released).
  explicit operator bool() const noexcept { return engaged_; }
  /// True while every lock of the set is held and valid.
  [[nodiscard]] bool owns_lock() const noexcept {
    return engaged_ && std::apply([](auto*... l) { return (l->owns_lock() && ...); }, locks_);
  }
  /// The I-th lock, in the order the caller passed them.
  template <std::size_t I>
  [[nodiscard]] auto& get() const noexcept {
    return *std::get<I>(locks_);
  }
  /// Releases every lock; never throws.
  void unlock() noexcept {
    if (!std::exchange(engaged_, false)) return;
    std::apply([](auto*... l) { (l->unlock(), ...); }, locks_);
  }

 private:
  std::tuple<Ls*...> locks_{};
  bool engaged_ = false;
};

namespace detail {

/// One lock of a set, type-erased for sorting and acquisition.
struct SetMember {
  const void* backend;
  std::string_view name;
  std::function<bool(std::optional<TimePoint>)> acquire;  // nullopt: block (lock())
  std::function<void()> release;                          // noexcept unlock()
};

/// The canonical order: backend object, then name.
inline void sort_canonically(std::span<SetMember> members) {
  std::sort(members.begin(), members.end(), [](const SetMember& a, const SetMember& b) {
    return std::less<const void*>{}(a.backend, b.backend) || (a.backend == b.backend && a.name < b.name);
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
  return SetMember{backend_identity(std::as_const(lock).backend()), lock.name(),
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
  return try_lock_all_until(
      std::chrono::steady_clock::now() + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout), locks...);
}

}  // namespace dlock
