// dlock/options.hpp: LockOptions, the per-lock settings, and their validation.
//
// LockOptions is an aggregate; set what you need with designated initialisers:
//
//   dlock::LockOptions{.ttl = 10s, .retry = {.max_delay = 200ms}, .acquire_timeout = 5s}
//
// A Lock validates its options and name once, in its constructor, and throws
// dlock::InvalidArgument naming the field and the value.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include "clock.hpp"
#include "detail/format.hpp"
#include "error.hpp"
#include "heartbeat.hpp"
#include "lock_order.hpp"
#include "observer.hpp"
#include "retry.hpp"

namespace dlock {

/// Longest accepted lock name, in bytes.
inline constexpr std::size_t max_lock_name_size = 1024;

/// Longest accepted TTL (LockOptions::ttl, Lock::extend(ttl)) and retry delay:
/// 365 days. A TTL is how long a crashed holder keeps everyone else out, so a
/// longer one is a mistake; the bound also keeps every validity and deadline
/// computed from it far inside the range of the clocks and of the servers'
/// expiry arithmetic (docs/safety.md, "Time arithmetic saturates").
inline constexpr std::chrono::milliseconds max_ttl = std::chrono::days(365);

struct LockOptions {
  /// How long the lock stays valid after each acquire or extend without
  /// another extension. The server frees it after this even if the holder died.
  std::chrono::milliseconds ttl{std::chrono::seconds(30)};
  /// Backoff between attempts of the blocking acquires.
  RetryPolicy retry{};
  /// lock() throws TimeoutError after this long; unset: lock() waits until it
  /// gets the lock (or retry.max_attempts is used up).
  std::optional<std::chrono::milliseconds> acquire_timeout{};
  /// A blocking acquire whose attempts have failed with connection or
  /// timeout errors for this long without a single answer from the lock
  /// service (contention counts as an answer) gives up and throws the last
  /// error: an outage fails closed instead of blocking forever, even with no
  /// acquire_timeout. Unset: retry through outages until the deadline.
  std::optional<std::chrono::milliseconds> outage_timeout{std::chrono::seconds(30)};
  /// Keep the lock while held: a heartbeat extends it to `ttl` every
  /// `extend_interval`, and signals loss (stop token, on_lost, observer) the
  /// moment an extension fails for good or the validity ends.
  bool auto_extend = false;
  /// How often auto-extend extends; unset: ttl / 3. Must be below ttl.
  std::optional<std::chrono::milliseconds> extend_interval{};
  /// Longest total hold under auto-extend; past it the heartbeat stops
  /// extending, releases the lock and reports a max_hold loss, so a hung
  /// holder cannot keep a lock forever. Unset: no cap.
  std::optional<std::chrono::milliseconds> max_hold{};
  /// Report a long_held event (to the observer, and so to metrics and
  /// alerts) once a single hold lasts this long. Unset: never.
  std::optional<std::chrono::milliseconds> long_held{};
  /// Receives every event; null: default_observer(), which logs problems.
  std::shared_ptr<Observer> observer{};
  /// Check blocking acquires for lock-order inversions with this checker
  /// (see lock_order.hpp), e.g. &LockOrderChecker::process_wide(). Null: off,
  /// unless compiled with DLOCK_CHECK_LOCK_ORDER (then the process-wide one).
  LockOrderChecker* lock_order =
#ifdef DLOCK_CHECK_LOCK_ORDER
      &LockOrderChecker::process_wide();
#else
      nullptr;
#endif
  /// The heartbeat to use; null: Heartbeat::process_wide().
  std::shared_ptr<Heartbeat> heartbeat{};
  /// The clock that decides validity and deadlines; null: steady_clock().
  /// Must outlive the Lock.
  const Clock* clock = nullptr;
  /// Fair (FIFO) mode: blocked acquires are served in arrival order, and a
  /// release wakes only the waiter that may take the lock (docs/primitives.md,
  /// "Fair mode"). Redis keeps a queue of waiters, each dropping out after
  /// fair_waiter_ttl() without an attempt; PostgreSQL queues its waiters
  /// itself. A backend without it rejects it when the Lock is constructed.
  /// On Redis a waiter attempts every retry.max_delay (a release wakes the
  /// head at once; the attempts only renew a waiter's place), so max_delay
  /// trades calls per second against how long a dead waiter holds the queue.
  /// The asynchronous acquire queues the same way where the backend can do
  /// it without blocking (AsyncQueuesFairly: Redis; AsyncWaitsOnServer:
  /// PostgreSQL, whose asynchronous acquire waits in the server's queue); on
  /// other backends it throws InvalidArgument.
  bool fair = false;
};

namespace detail {

[[noreturn]] inline void invalid_field(std::string_view field, std::string_view requirement, std::string_view got) {
  throw InvalidArgument(fmt::format("dlock: {} {} (got {})", field, requirement, got));
}

inline void validate_lock_name(std::string_view name) {
  if (name.empty()) invalid_field("lock name", "must not be empty", "\"\"");
  if (name.size() > max_lock_name_size)
    invalid_field("lock name", fmt::format("must be at most {} bytes", max_lock_name_size),
                  fmt::format("{} bytes", name.size()));
}

template <class Rep, class Period>
void validate_within_max_ttl(std::string_view field, std::chrono::duration<Rep, Period> d) {
  if (d > max_ttl)
    invalid_field(field, fmt::format("must be at most dlock::max_ttl ({} days)", max_ttl / std::chrono::days(1)),
                  format_duration(d));
}

/// A TTL is positive and at most max_ttl; `field` names it in the error.
inline void validate_ttl(std::string_view field, std::chrono::milliseconds ttl) {
  if (ttl <= ttl.zero()) invalid_field(field, "must be positive", format_duration(ttl));
  validate_within_max_ttl(field, ttl);
}

inline void validate(const RetryPolicy& r, std::string_view where) {
  if (r.initial_delay <= r.initial_delay.zero())
    invalid_field(fmt::format("{}.initial_delay", where), "must be positive", format_duration(r.initial_delay));
  if (r.max_delay <= r.max_delay.zero())
    invalid_field(fmt::format("{}.max_delay", where), "must be positive", format_duration(r.max_delay));
  if (r.max_delay < r.initial_delay)
    invalid_field(fmt::format("{}.max_delay", where),
                  fmt::format("must be >= initial_delay ({})", format_duration(r.initial_delay)),
                  format_duration(r.max_delay));
  validate_within_max_ttl(fmt::format("{}.max_delay", where), r.max_delay);
  if (!(r.multiplier >= 1.0))  // also rejects NaN
    invalid_field(fmt::format("{}.multiplier", where), "must be >= 1", fmt::format("{}", r.multiplier));
}

inline void validate(const LockOptions& o) {
  validate_ttl("LockOptions.ttl", o.ttl);
  validate(o.retry, "LockOptions.retry");
  if (o.extend_interval && (*o.extend_interval <= o.extend_interval->zero() || *o.extend_interval >= o.ttl))
    invalid_field("LockOptions.extend_interval",
                  fmt::format("must be positive and below ttl ({})", format_duration(o.ttl)),
                  format_duration(*o.extend_interval));
  if (o.max_hold && *o.max_hold <= o.max_hold->zero())
    invalid_field("LockOptions.max_hold", "must be positive", format_duration(*o.max_hold));
  if (o.long_held && *o.long_held <= o.long_held->zero())
    invalid_field("LockOptions.long_held", "must be positive", format_duration(*o.long_held));
  if (o.outage_timeout && *o.outage_timeout <= o.outage_timeout->zero())
    invalid_field("LockOptions.outage_timeout", "must be positive", format_duration(*o.outage_timeout));
  if (o.acquire_timeout && *o.acquire_timeout < o.acquire_timeout->zero())
    invalid_field("LockOptions.acquire_timeout", "must not be negative", format_duration(*o.acquire_timeout));
}

/// Fair mode: how long a queued waiter keeps its place without an attempt
/// (its next attempt renews it). A live waiter attempts at least every
/// retry.max_delay, so twice that (at least 1 s) keeps it; a dead one drops
/// out of the queue after this.
[[nodiscard]] inline std::chrono::milliseconds fair_waiter_ttl(const LockOptions& o) noexcept {
  const auto twice = std::chrono::duration_cast<std::chrono::milliseconds>(o.retry.max_delay) * 2;
  return std::clamp<std::chrono::milliseconds>(twice, std::chrono::seconds(1), max_ttl);
}

}  // namespace detail
}  // namespace dlock
