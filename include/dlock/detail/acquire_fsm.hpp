// Internal: AcquireFsm, the one acquire state machine of Lock<Backend>.
//
// It decides, from events alone (an attempt's outcome, a wait's end, the
// time, whether a stop was requested), what an acquire does next: make an
// attempt (subscribing to releases first, and with which server-side wait),
// wait (how long, on a release subscription or a plain timer), or end
// (acquired, timed out, failed with the last error, cancelled). It does no
// I/O, never sleeps and never reads a clock: the blocking loop (Lock::lock()
// and friends) and the asynchronous operation (Lock::async_acquire() and
// friends) perform its decisions, so both follow one policy (retry, backoff,
// jitter, holder TTL, deadline, outage_timeout, cancellation, the wake-up
// protocol). Tested on its own with a manual clock (acquire_fsm_test.cpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>

#include "../backend.hpp"
#include "../clock.hpp"
#include "../retry.hpp"
#include "time.hpp"

namespace dlock::detail {

/// How long one server-side wait may last when the caller gave no deadline, so
/// that a dead connection is noticed and the attempt is made again.
inline constexpr std::chrono::milliseconds server_wait_slice{std::chrono::seconds(5)};
/// The same for a cancellable acquire (a stop token that can be requested): a
/// server-side wait cannot be interrupted from the client, so a stop request
/// is honoured when the current slice ends, at most this long after it.
inline constexpr std::chrono::milliseconds cancellable_server_wait_slice{250};

enum class AcquireStep {
  attempt,    ///< make one attempt now (subscribe first when `subscribe`)
  wait,       ///< wait up to `wait` (on the subscription when `on_subscription`), then woken()
  acquired,   ///< done: the grant is the caller's
  timed_out,  ///< done: the lock stayed held until the deadline or retry.max_attempts
  failed,     ///< done: throw (report) the last attempt's error
  cancelled,  ///< done: a stop was requested; release a grant the attempt brought
};

struct AcquireDecision {
  AcquireStep step = AcquireStep::attempt;
  /// attempt, wait: subscribe to releases of the name first (NotifiesRelease).
  bool subscribe = false;
  /// wait: how long at most.
  Clock::duration wait{};
  /// wait: a release notification ends it early (else a plain timer).
  bool on_subscription = false;
};

/// What the machine knows about the acquire and its backend.
struct AcquirePlan {
  bool single = false;            ///< try_lock(): exactly one attempt
  bool notifies_release = false;  ///< the backend models NotifiesRelease (and the driver can wait on it)
  bool waits_on_server = false;   ///< the backend models WaitsOnServer (and the driver uses acquire_wait)
  bool cancellable = false;       ///< the caller's stop token can be requested
  /// The waits' subscription wakes one waiter per release and passes an
  /// unused wake on (RedisBackend::subscribe_release_one): while subscribed, a
  /// contended wait is only the backstop poll (a holder that died, a lost
  /// pub/sub connection), so it is drawn at retry.max_delay from the first, as
  /// fair mode's. Waits after a failed attempt keep the policy's fast start.
  bool wakes_one = false;
};

template <class URBG>
class AcquireFsm {
 public:
  AcquireFsm(const RetryPolicy& retry, std::optional<std::chrono::milliseconds> outage_timeout,
             std::optional<TimePoint> deadline, AcquirePlan plan, URBG& rng)
      : retry_(retry), outage_timeout_(outage_timeout), deadline_(deadline), plan_(plan), backoff_(retry, rng) {}

  /// The first decision.
  [[nodiscard]] AcquireDecision start(bool stop_requested) const noexcept {
    if (stop_requested) return {.step = AcquireStep::cancelled};
    return {};
  }

  /// The driver subscribed to releases before the first attempt (the
  /// backend's subscription was already up, so it costs no round trip): no
  /// release after it can be missed, so the first contention waits at once
  /// instead of subscribing and trying once more.
  void subscribed_before_first_attempt() noexcept { subscribed_ = true; }

  /// An attempt is sent at `sent`. Returns the server-side wait to ask for
  /// (WaitsOnServer); zero means one plain attempt.
  [[nodiscard]] std::chrono::milliseconds attempt_started(TimePoint sent) noexcept {
    ++attempts_;
    if (plan_.single || !plan_.waits_on_server) return std::chrono::milliseconds::zero();
    auto max_wait = plan_.cancellable ? cancellable_server_wait_slice : server_wait_slice;
    if (deadline_)
      max_wait = std::clamp(std::chrono::floor<std::chrono::milliseconds>(saturating_sub(*deadline_, sent)),
                            std::chrono::milliseconds::zero(), max_wait);
    return max_wait;
  }
  /// The attempt brought a grant. A stop requested meanwhile wins: the grant
  /// must be released (cancelled).
  [[nodiscard]] AcquireDecision granted(bool stop_requested) noexcept {
    failure_ = false;
    return {.step = stop_requested ? AcquireStep::cancelled : AcquireStep::acquired};
  }

  /// The attempt found the lock held (holder_ttl: its remaining TTL, when known).
  [[nodiscard]] AcquireDecision contended(std::optional<std::chrono::milliseconds> holder_ttl, TimePoint now,
                                          bool stop_requested) {
    failure_ = false;
    outage_since_.reset();  // an answer: the outage, if any, is over
    if (plan_.single) return {.step = AcquireStep::timed_out};
    bool subscribe = false;
    if (plan_.notifies_release && !subscribed_) subscribe = subscribed_ = true;
    if (auto end = give_up(now, stop_requested)) return with_subscribe(*end, subscribe);
    // Subscribed just now after the first attempt: try once more before
    // waiting, so that a release between that attempt and the subscription
    // is not missed (the wake-up protocol).
    if (subscribe && attempts_ == 1) return {.step = AcquireStep::attempt, .subscribe = true};
    if (plan_.waits_on_server) return {.step = AcquireStep::attempt};  // the server did the waiting
    return with_subscribe(wait(holder_ttl, now, plan_.wakes_one && subscribed_), subscribe);
  }

  /// The attempt sent at `sent` failed at `now`; `transient`: a connection or
  /// timeout error (its outcome unknown: the attempt may have been granted).
  [[nodiscard]] AcquireDecision failed(bool transient, TimePoint sent, TimePoint now, bool stop_requested) {
    in_doubt_ = in_doubt_ || transient;
    if (transient && !outage_since_) outage_since_ = sent;
    if (plan_.single || !transient || outage_exceeded(now)) return {.step = AcquireStep::failed};
    failure_ = true;
    if (auto end = give_up(now, stop_requested)) return *end;
    return wait(std::nullopt, now);
  }

  /// A wait ended: its time passed, a release was observed, or a stop was
  /// requested. Waits end by the deadline at the latest; one more attempt is
  /// made then (the holder's TTL may have ended just now).
  [[nodiscard]] AcquireDecision woken(bool stop_requested) const noexcept {
    if (stop_requested) return {.step = AcquireStep::cancelled};
    return {};
  }

  [[nodiscard]] std::uint32_t attempts() const noexcept { return attempts_; }
  /// An attempt failed after it may have reached the server: giving up on
  /// this owner id must abandon it (AbandonsInDoubt).
  [[nodiscard]] bool in_doubt() const noexcept { return in_doubt_; }
  [[nodiscard]] std::optional<TimePoint> deadline() const noexcept { return deadline_; }

 private:
  static AcquireDecision with_subscribe(AcquireDecision d, bool subscribe) noexcept {
    d.subscribe = subscribe && (d.step == AcquireStep::attempt || d.step == AcquireStep::wait);
    return d;
  }
  [[nodiscard]] bool outage_exceeded(TimePoint now) const noexcept {
    return outage_timeout_ && outage_since_ && now >= saturating_add(*outage_since_, *outage_timeout_);
  }
  // The end of the acquire after an attempt that did not get the lock, if it ends now.
  [[nodiscard]] std::optional<AcquireDecision> give_up(TimePoint now, bool stop_requested) const noexcept {
    if (stop_requested) return AcquireDecision{.step = AcquireStep::cancelled};
    const bool attempts_used = retry_.max_attempts != 0 && attempts_ >= retry_.max_attempts;
    if (attempts_used || (deadline_ && now >= *deadline_))
      return AcquireDecision{.step = failure_ ? AcquireStep::failed : AcquireStep::timed_out};
    return std::nullopt;
  }
  // The wait before the next attempt: the backoff, capped by the holder's
  // TTL, the deadline and the end of outage_timeout.
  // at_cap: a backstop poll of a wake-one waiter (AcquirePlan::wakes_one).
  [[nodiscard]] AcquireDecision wait(std::optional<std::chrono::milliseconds> holder_ttl, TimePoint now,
                                     bool at_cap = false) {
    Clock::duration wait = saturating_ceil<Clock::duration>(at_cap ? backoff_.next_at_cap() : backoff_.next());
    if (holder_ttl) wait = std::min(wait, saturating_ceil<Clock::duration>(*holder_ttl));
    if (deadline_) wait = std::min(wait, saturating_sub(*deadline_, now));
    if (outage_since_ && outage_timeout_)  // give up on the outage on time
      wait = std::max(Clock::duration::zero(),
                      std::min(wait, saturating_sub(saturating_add(*outage_since_, *outage_timeout_), now)));
    return {.step = AcquireStep::wait, .wait = wait, .on_subscription = subscribed_};
  }

  const RetryPolicy& retry_;
  const std::optional<std::chrono::milliseconds> outage_timeout_;
  const std::optional<TimePoint> deadline_;
  const AcquirePlan plan_;
  Backoff<URBG> backoff_;
  std::uint32_t attempts_ = 0;
  bool subscribed_ = false;
  bool failure_ = false;  // the last attempt failed with a transient error
  bool in_doubt_ = false;
  std::optional<TimePoint> outage_since_;  // the first of the current run of failed attempts
};

}  // namespace dlock::detail
