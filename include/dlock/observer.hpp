// dlock/observer.hpp: the hook through which a Lock reports what happens to it.
//
// A Lock calls its Observer for every attempt, acquisition, contention,
// failure, release, extension and loss. Metrics, logging and alerting are all
// Observers. on_event() runs on the thread that caused the event (the caller's,
// or the heartbeat's for auto-extension), must be thread-safe, must be quick,
// and must not throw (it is noexcept). The string views in an Event are valid
// only during the call.
//
// Every acquisition ends with exactly one of released, release_not_held,
// release_failed (reason other than "after_loss") or lost, so observers can
// keep a gauge of held locks.
//
// With no observer configured, a Lock reports through default_observer(),
// which writes a line to stderr for every event that means something went
// wrong (a failed or expired release, a lost lock, a failed extension, an
// acquire or an attempt that failed with an error), so no failure is ever
// silent. It is rate-limited: at most one line per lock and kind of event
// every LogOptions::interval (5 s); the next line says how many were left
// out. Contention (try_lock() false, a timed acquire that ran out of time
// because the lock stayed held) is a value returned to the caller, not a
// failure, and is not logged; nor is an acquire cancelled by its caller's
// stop token (errc::cancelled).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "detail/utf8.hpp"

namespace dlock {

enum class EventType {
  attempt,            ///< one acquire attempt is about to be sent
  acquired,           ///< wait, attempts, token
  contended,          ///< an attempt found the lock held by someone else
  acquire_failed,     ///< the acquire ended with an error (error, reason: its kind); thrown to the caller
  attempt_failed,     ///< one attempt failed with a transient error (connection, timeout); the acquire retries
  acquire_timed_out,  ///< the acquire ended without the lock: it stayed held until the deadline or
                      ///< retry.max_attempts (contention, not a failure)
  released,           ///< held: how long the lock was held
  release_failed,     ///< the release could not be delivered (error); the lock expires by TTL
  release_not_held,   ///< at release the lock had already expired or been taken:
                      ///< the end of the critical section ran unprotected
  extended,
  extend_failed,    ///< error set: transient failure; the lease may still be valid
  lost,             ///< the lease is gone (expired, taken, connection); reason in message
  long_held,        ///< a hold passed its long-held threshold
  callback_failed,  ///< an on_lost callback threw; message says what
  order_violation,  ///< the lock-order checker found a cycle; message names it
  degraded,         ///< acquired without the primary lock service (fallback policy); reason, message
};

[[nodiscard]] constexpr std::string_view to_string(EventType t) noexcept {
  switch (t) {
    case EventType::attempt:
      return "attempt";
    case EventType::acquired:
      return "acquired";
    case EventType::contended:
      return "contended";
    case EventType::acquire_failed:
      return "acquire_failed";
    case EventType::attempt_failed:
      return "attempt_failed";
    case EventType::acquire_timed_out:
      return "acquire_timed_out";
    case EventType::released:
      return "released";
    case EventType::release_failed:
      return "release_failed";
    case EventType::release_not_held:
      return "release_not_held";
    case EventType::extended:
      return "extended";
    case EventType::extend_failed:
      return "extend_failed";
    case EventType::lost:
      return "lost";
    case EventType::long_held:
      return "long_held";
    case EventType::callback_failed:
      return "callback_failed";
    case EventType::order_violation:
      return "order_violation";
    case EventType::degraded:
      return "degraded";
  }
  return "unknown";
}

struct Event {
  EventType type{};
  std::string_view backend;   ///< backend kind: "memory", "redis", ...
  std::string_view endpoint;  ///< where the lock lives, e.g. "127.0.0.1:6379" (never a password)
  std::string_view lock;      ///< the lock name
  /// Which primitive the lock is: "mutex" (a plain Lock), "rw_read" /
  /// "rw_write" (RwLock's shared / exclusive side), "permit" (Semaphore),
  /// "leader" (Election). Metrics export it as the `kind` label.
  std::string_view primitive = "mutex";
  std::string_view owner;  ///< owner id of the acquisition, when there is one
  std::optional<std::uint64_t> token;
  std::uint32_t attempts = 0;       ///< acquired / acquire_*: attempts made
  std::chrono::nanoseconds wait{};  ///< acquired / acquire_*: time spent acquiring
  std::chrono::nanoseconds held{};  ///< released / release_*: / lost: time since acquisition
  std::error_code error;            ///< failures: what went wrong
  std::string_view message;         ///< failures: a sentence for humans
  /// A short, bounded label: lost: "expired", "taken", "connection",
  /// "max_hold"; acquire_failed and attempt_failed: the error kind
  /// ("connection", "timeout", "server", ...); release_failed after a loss: "after_loss"; degraded:
  /// the secondary backend's kind ("memory", "unlocked").
  std::string_view reason;
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(const Event& event) noexcept = 0;
};

struct LogOptions {
  /// At most one line per (lock, event type) this often; the rest are counted
  /// and the count is printed with the next line for that pair.
  std::chrono::milliseconds interval{std::chrono::seconds(5)};
  /// Where lines go (without the trailing newline); empty: stderr.
  std::function<void(std::string_view)> sink{};
  /// The time source for the rate limit; empty: std::chrono::steady_clock.
  std::function<std::chrono::steady_clock::time_point()> now{};
};

/// Whether the default log reports an event: problems, not routine events
/// or contention.
[[nodiscard]] constexpr bool is_problem(EventType t) noexcept {
  switch (t) {
    case EventType::release_failed:
    case EventType::release_not_held:
    case EventType::extend_failed:
    case EventType::lost:
    case EventType::acquire_failed:
    case EventType::attempt_failed:
    case EventType::long_held:
    case EventType::callback_failed:
    case EventType::order_violation:
    case EventType::degraded:
      return true;
    default:
      return false;
  }
}

namespace detail {
/// A per-key rate limit: admit() is true at most once per interval for each
/// key and then returns how many were refused since the last admission. The
/// table holds at most `max_keys` keys; when full it is cleared (a burst of
/// distinct keys costs one extra line each, never unbounded memory).
class RateLimit {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  explicit RateLimit(std::chrono::nanoseconds interval, std::size_t max_keys = 4096) noexcept
      : interval_(interval), max_keys_(max_keys) {}

  /// nullopt: refused (counted); else admitted, with the refused count since.
  std::optional<std::uint64_t> admit(const std::string& key, TimePoint now) {
    std::lock_guard lk(mu_);
    auto it = slots_.find(key);
    if (it == slots_.end()) {
      if (slots_.size() >= max_keys_) slots_.clear();
      slots_.emplace(key, Slot{now, 0});
      return std::uint64_t{0};
    }
    if (now - it->second.last < interval_) {
      ++it->second.refused;
      return std::nullopt;
    }
    it->second.last = now;
    return std::exchange(it->second.refused, 0);
  }

 private:
  struct Slot {
    TimePoint last;
    std::uint64_t refused;
  };
  const std::chrono::nanoseconds interval_;
  const std::size_t max_keys_;
  std::mutex mu_;
  std::map<std::string, Slot, std::less<>> slots_;
};
}  // namespace detail

/// Writes problems (not routine events, not contention) as one line each,
/// to stderr by default, rate-limited per lock and event type.
class LogObserver : public Observer {
 public:
  explicit LogObserver(LogOptions options = {}) : options_(std::move(options)), limit_(options_.interval) {}

  void on_event(const Event& e) noexcept override {
    if (!is_problem(e.type)) return;
    if (e.error == make_error_code(errc::cancelled)) return;  // the caller asked for it: not a problem
    try {
      const auto now = options_.now ? options_.now() : std::chrono::steady_clock::now();
      const auto refused = limit_.admit(fmt::format("{}\x1f{}\x1f{}", to_string(e.type), e.backend, e.lock), now);
      if (!refused) return;
      std::string line = fmt::format("dlock: {} lock='{}' backend={} endpoint={} owner={} held={}ms: {}",
                                     to_string(e.type), detail::sanitize_utf8(e.lock), e.backend, e.endpoint, e.owner,
                                     std::chrono::duration_cast<std::chrono::milliseconds>(e.held).count(),
                                     e.message.empty() ? std::string_view("(no detail)") : e.message);
      if (*refused > 0)
        line += fmt::format(" ({} similar line{} left out in the last {} ms)", *refused, *refused == 1 ? "" : "s",
                            options_.interval.count());
      if (options_.sink) {
        options_.sink(line);
      } else {
        fmt::print(stderr, "{}\n", line);
      }
    } catch (...) {  // formatting or stderr failed: nothing sensible is left to report to
    }
  }

 private:
  LogOptions options_;
  detail::RateLimit limit_;
};

[[nodiscard]] inline std::shared_ptr<Observer> default_observer() {
  static const auto instance = std::make_shared<LogObserver>();
  return instance;
}

}  // namespace dlock
