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
// which writes one line to stderr for every event that means something went
// wrong (a failed or expired release, a lost lock, a failed extension, an
// acquire that failed with an error), so no failure is ever silent.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

namespace dlock {

enum class EventType {
  attempt,           ///< one acquire attempt is about to be sent
  acquired,          ///< wait, attempts, token
  contended,         ///< an attempt found the lock held by someone else
  acquire_failed,    ///< error set: a connection/server error; else timeout or attempts used up
  released,          ///< held: how long the lock was held
  release_failed,    ///< the release could not be delivered (error); the lock expires by TTL
  release_not_held,  ///< at release the lock had already expired or been taken:
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
  std::string_view owner;     ///< owner id of the acquisition, when there is one
  std::optional<std::uint64_t> token;
  std::uint32_t attempts = 0;       ///< acquired / acquire_failed: attempts made
  std::chrono::nanoseconds wait{};  ///< acquired / acquire_failed: time spent acquiring
  std::chrono::nanoseconds held{};  ///< released / release_*: / lost: time since acquisition
  std::error_code error;            ///< failures: what went wrong
  std::string_view message;         ///< failures: a sentence for humans
  /// A short, bounded label: lost: "expired", "taken", "connection",
  /// "max_hold"; acquire_failed: "timeout" or the error kind ("connection",
  /// "server", ...); release_failed after a loss: "after_loss"; degraded:
  /// the secondary backend's kind ("memory", "unlocked").
  std::string_view reason;
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(const Event& event) noexcept = 0;
};

/// Writes problems (not routine events) to stderr, one line each.
class LogObserver : public Observer {
 public:
  void on_event(const Event& e) noexcept override {
    switch (e.type) {
      case EventType::release_failed:
      case EventType::release_not_held:
      case EventType::extend_failed:
      case EventType::lost:
      case EventType::acquire_failed:
      case EventType::long_held:
      case EventType::callback_failed:
      case EventType::order_violation:
      case EventType::degraded:
        break;
      default:
        return;
    }
    try {
      fmt::print(stderr, "dlock: {} lock='{}' backend={} endpoint={} owner={} held={}ms: {}\n", to_string(e.type),
                 e.lock, e.backend, e.endpoint, e.owner,
                 std::chrono::duration_cast<std::chrono::milliseconds>(e.held).count(),
                 e.message.empty() ? std::string_view("(no detail)") : e.message);
    } catch (...) {  // formatting or stderr failed: nothing sensible is left to report to
    }
  }
};

[[nodiscard]] inline std::shared_ptr<Observer> default_observer() {
  static const auto instance = std::make_shared<LogObserver>();
  return instance;
}

}  // namespace dlock
