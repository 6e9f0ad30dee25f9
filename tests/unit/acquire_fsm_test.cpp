// The acquire state machine (detail/acquire_fsm.hpp) on its own: every
// decision from events and a manual clock, no backend, no sleeping.
#include <dlock/detail/acquire_fsm.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <random>

using namespace std::chrono_literals;
using dlock::RetryPolicy;
using dlock::TimePoint;
using dlock::detail::AcquireFsm;
using dlock::detail::AcquirePlan;
using dlock::detail::AcquireStep;

namespace {
using Fsm = AcquireFsm<std::minstd_rand>;
// No jitter: delays 10, 20, 40 ... ms, capped at 80 ms.
const RetryPolicy fixed{.initial_delay = 10ms, .max_delay = 80ms, .multiplier = 2.0, .jitter = dlock::Jitter::none};
const TimePoint t0 = TimePoint{} + 1h;
}  // namespace

TEST(AcquireFsm, PollingBackoffIsCappedByTheHolderTtlAndTheDeadline) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, t0 + 100ms, AcquirePlan{}, rng);
  EXPECT_EQ(fsm.start(false).step, AcquireStep::attempt);
  EXPECT_EQ(fsm.attempt_started(t0), 0ms);  // no server-side wait
  auto d = fsm.contended(std::nullopt, t0, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_EQ(d.wait, 10ms);
  EXPECT_FALSE(d.on_subscription);
  EXPECT_EQ(fsm.woken(false).step, AcquireStep::attempt);
  (void)fsm.attempt_started(t0 + 10ms);
  d = fsm.contended(5ms, t0 + 10ms, false);  // the holder's TTL ends first
  EXPECT_EQ(d.wait, 5ms);
  (void)fsm.attempt_started(t0 + 15ms);
  d = fsm.contended(std::nullopt, t0 + 90ms, false);  // 40 ms of backoff, 10 ms to the deadline
  EXPECT_EQ(d.wait, 10ms);
  (void)fsm.attempt_started(t0 + 100ms);  // the last attempt, at the deadline
  EXPECT_EQ(fsm.contended(std::nullopt, t0 + 100ms, false).step, AcquireStep::timed_out);
  EXPECT_EQ(fsm.attempts(), 4u);
  EXPECT_FALSE(fsm.in_doubt());
}

TEST(AcquireFsm, SubscribesAfterTheFirstContentionAndTriesOnceMoreBeforeWaiting) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{.notifies_release = true}, rng);
  (void)fsm.attempt_started(t0);
  auto d = fsm.contended(std::nullopt, t0, false);
  EXPECT_EQ(d.step, AcquireStep::attempt);  // no lost wake-up: subscribe, then try again
  EXPECT_TRUE(d.subscribe);
  (void)fsm.attempt_started(t0);
  d = fsm.contended(1s, t0, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_FALSE(d.subscribe);  // once
  EXPECT_TRUE(d.on_subscription);
  EXPECT_EQ(d.wait, 10ms);
}

TEST(AcquireFsm, SubscribedBeforeTheFirstAttemptWaitsAtTheFirstContention) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{.notifies_release = true}, rng);
  fsm.subscribed_before_first_attempt();
  EXPECT_FALSE(fsm.start(false).subscribe);
  (void)fsm.attempt_started(t0);
  const auto d = fsm.contended(1s, t0, false);
  EXPECT_EQ(d.step, AcquireStep::wait);  // no second attempt: no release after the subscription is missed
  EXPECT_FALSE(d.subscribe);
  EXPECT_TRUE(d.on_subscription);
  EXPECT_EQ(fsm.attempts(), 1u);
}

// A wake-one subscription (RedisBackend::subscribe_release_one) is woken by
// every release it must see, so its contended waits are only backstop polls:
// at max_delay from the first (the 10, 20, 40 ms polls of 256 waiters were a
// third of the server calls per handoff), still capped by the holder's TTL.
// A wait after a failed attempt keeps the fast start (an outage's retries).
TEST(AcquireFsm, AWakeOneWaiterPollsAtTheCapWhileSubscribed) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{.notifies_release = true, .wakes_one = true}, rng);
  (void)fsm.attempt_started(t0);
  auto d = fsm.contended(std::nullopt, t0, false);
  EXPECT_EQ(d.step, AcquireStep::attempt);  // subscribes, tries once more
  (void)fsm.attempt_started(t0);
  d = fsm.contended(1s, t0, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_TRUE(d.on_subscription);
  EXPECT_EQ(d.wait, 80ms);  // the cap, not 10 ms
  (void)fsm.attempt_started(t0 + 80ms);
  EXPECT_EQ(fsm.contended(30ms, t0 + 80ms, false).wait, 30ms);  // the holder's TTL ends first
  (void)fsm.attempt_started(t0 + 110ms);
  d = fsm.failed(true, t0 + 110ms, t0 + 111ms, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_EQ(d.wait, 40ms);  // the policy's own schedule: the third retry, 10 ms * 2^2
}

TEST(AcquireFsm, AWakeOneWaiterNotYetSubscribedKeepsTheBackoff) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{.wakes_one = true}, rng);  // no subscription
  (void)fsm.attempt_started(t0);
  EXPECT_EQ(fsm.contended(std::nullopt, t0, false).wait, 10ms);
}

TEST(AcquireFsm, MaxAttemptsEndsOnContention) {
  std::minstd_rand rng;
  RetryPolicy three = fixed;
  three.max_attempts = 3;
  Fsm fsm(three, std::nullopt, std::nullopt, AcquirePlan{}, rng);
  for (int i = 0; i < 2; ++i) {
    (void)fsm.attempt_started(t0);
    EXPECT_EQ(fsm.contended(std::nullopt, t0, false).step, AcquireStep::wait);
  }
  (void)fsm.attempt_started(t0);
  EXPECT_EQ(fsm.contended(std::nullopt, t0, false).step, AcquireStep::timed_out);
}

TEST(AcquireFsm, TransientFailuresRetryUntilOutageTimeoutThenFail) {
  std::minstd_rand rng;
  Fsm fsm(fixed, 50ms, std::nullopt, AcquirePlan{}, rng);
  (void)fsm.attempt_started(t0);
  auto d = fsm.failed(true, t0, t0 + 1ms, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_TRUE(fsm.in_doubt());  // the failed attempt may have been granted
  (void)fsm.attempt_started(t0 + 30ms);
  d = fsm.failed(true, t0 + 30ms, t0 + 45ms, false);
  EXPECT_EQ(d.step, AcquireStep::wait);
  EXPECT_EQ(d.wait, 5ms);  // 20 ms of backoff, capped by the end of the outage
  (void)fsm.attempt_started(t0 + 50ms);
  EXPECT_EQ(fsm.failed(true, t0 + 50ms, t0 + 50ms, false).step, AcquireStep::failed);
}

TEST(AcquireFsm, AnAnswerEndsTheOutage) {
  std::minstd_rand rng;
  Fsm fsm(fixed, 50ms, std::nullopt, AcquirePlan{}, rng);
  (void)fsm.attempt_started(t0);
  (void)fsm.failed(true, t0, t0 + 40ms, false);
  (void)fsm.attempt_started(t0 + 40ms);
  (void)fsm.contended(std::nullopt, t0 + 45ms, false);  // the service answered
  (void)fsm.attempt_started(t0 + 60ms);
  EXPECT_EQ(fsm.failed(true, t0 + 60ms, t0 + 70ms, false).step, AcquireStep::wait);  // a new outage, 10 ms old
}

TEST(AcquireFsm, AFailureAtTheDeadlineFailsRatherThanTimesOut) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, t0 + 20ms, AcquirePlan{}, rng);
  (void)fsm.attempt_started(t0 + 20ms);
  EXPECT_EQ(fsm.failed(true, t0 + 20ms, t0 + 20ms, false).step, AcquireStep::failed);
}

TEST(AcquireFsm, NonTransientErrorsAndSingleAttemptsEndAtOnce) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{}, rng);
  (void)fsm.attempt_started(t0);
  EXPECT_EQ(fsm.failed(false, t0, t0, false).step, AcquireStep::failed);
  EXPECT_FALSE(fsm.in_doubt());
  Fsm single(fixed, std::nullopt, std::nullopt, AcquirePlan{.single = true, .notifies_release = true}, rng);
  (void)single.attempt_started(t0);
  const auto d = single.contended(std::nullopt, t0, false);
  EXPECT_EQ(d.step, AcquireStep::timed_out);
  EXPECT_FALSE(d.subscribe);
  Fsm single_failing(fixed, std::nullopt, std::nullopt, AcquirePlan{.single = true}, rng);
  (void)single_failing.attempt_started(t0);
  EXPECT_EQ(single_failing.failed(true, t0, t0, false).step, AcquireStep::failed);
  EXPECT_TRUE(single_failing.in_doubt());
}

TEST(AcquireFsm, AStopRequestCancelsAtEveryStep) {
  std::minstd_rand rng;
  Fsm fsm(fixed, std::nullopt, std::nullopt, AcquirePlan{.cancellable = true}, rng);
  EXPECT_EQ(fsm.start(true).step, AcquireStep::cancelled);
  (void)fsm.attempt_started(t0);
  EXPECT_EQ(fsm.contended(std::nullopt, t0, true).step, AcquireStep::cancelled);
  EXPECT_EQ(fsm.failed(true, t0, t0, true).step, AcquireStep::cancelled);
  EXPECT_EQ(fsm.woken(true).step, AcquireStep::cancelled);
  EXPECT_EQ(fsm.granted(true).step, AcquireStep::cancelled);  // the caller releases the grant
  EXPECT_EQ(fsm.granted(false).step, AcquireStep::acquired);
}

TEST(AcquireFsm, ServerSideWaitsAreSlicedAndShorterWhenCancellable) {
  std::minstd_rand rng;
  Fsm plain(fixed, std::nullopt, std::nullopt, AcquirePlan{.waits_on_server = true}, rng);
  EXPECT_EQ(plain.attempt_started(t0), dlock::detail::server_wait_slice);
  EXPECT_EQ(plain.contended(std::nullopt, t0 + 5s, false).step, AcquireStep::attempt);  // the server waited
  Fsm cancellable(fixed, std::nullopt, std::nullopt, AcquirePlan{.waits_on_server = true, .cancellable = true}, rng);
  EXPECT_EQ(cancellable.attempt_started(t0), dlock::detail::cancellable_server_wait_slice);
  EXPECT_EQ(dlock::detail::cancellable_server_wait_slice, 250ms);
  Fsm near_deadline(fixed, std::nullopt, t0 + 70ms, AcquirePlan{.waits_on_server = true}, rng);
  EXPECT_EQ(near_deadline.attempt_started(t0), 70ms);
  Fsm past_deadline(fixed, std::nullopt, t0, AcquirePlan{.waits_on_server = true}, rng);
  EXPECT_EQ(past_deadline.attempt_started(t0 + 1s), 0ms);
  Fsm single(fixed, std::nullopt, std::nullopt, AcquirePlan{.single = true, .waits_on_server = true}, rng);
  EXPECT_EQ(single.attempt_started(t0), 0ms);
}
