// Cancellable blocking acquires: a std::stop_token ends every wait (the
// in-process gate, a release subscription, a backoff sleep) promptly, the
// acquire throws CancelledError, and nothing stays held.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <stop_token>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::CancelledError;
using dlock::EventType;
using dlock::Lock;
using dlock::LockOptions;
using dlock::MemoryBackend;
using dlock::test::eventually;
using dlock::test::RecordingObserver;

namespace {
using Clock = std::chrono::steady_clock;

// Runs `acquire` on a thread, waits until `blocked()` says it is waiting,
// requests the stop and returns how long the acquire took to give up, or
// fails the test.
template <class Acquire, class Blocked>
Clock::duration cancel_while_blocked(Acquire acquire, Blocked blocked, const char* what) {
  std::stop_source stop;
  std::atomic<bool> threw_cancelled{false};
  std::atomic<Clock::rep> ended_at{0};
  std::thread waiter([&] {
    try {
      acquire(stop.get_token());
    } catch (const CancelledError& e) {
      threw_cancelled = e.code() == dlock::errc::cancelled;
    } catch (...) {
    }
    ended_at = Clock::now().time_since_epoch().count();
  });
  EXPECT_TRUE(eventually(blocked)) << what << ": never blocked";
  const auto requested = Clock::now();
  stop.request_stop();
  waiter.join();
  EXPECT_TRUE(threw_cancelled.load()) << what << ": no CancelledError";
  const auto took = Clock::time_point(Clock::duration(ended_at.load())) - requested;
  std::printf("%s: cancelled %lld us after the stop request\n", what,
              static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(took).count()));
  return took;
}

// A MemoryBackend whose subscription's wait_for() takes no stop token (as
// the Redis ones): a cancellable wait on it is sliced.
class PlainSubscriptionBackend {
 public:
  using Handle = dlock::NoHandle;
  struct Subscription {
    MemoryBackend::Subscription inner;
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) { return inner.wait_for(d); }
  };
  explicit PlainSubscriptionBackend(MemoryBackend mem) : mem_(std::move(mem)) {}
  [[nodiscard]] std::string_view kind() const noexcept { return "plain"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "in-process"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) { return mem_.try_acquire(r); }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<dlock::TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease,
                                         std::chrono::milliseconds ttl, dlock::TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }
  Subscription subscribe_release(std::string_view name) { return Subscription{mem_.subscribe_release(name)}; }

 private:
  MemoryBackend mem_;
};
static_assert(dlock::NotifiesRelease<PlainSubscriptionBackend>);

// A MemoryBackend that requests a stop while its grant is on the way back.
class RacingBackend {
 public:
  using Handle = dlock::NoHandle;
  RacingBackend(MemoryBackend mem, std::stop_source& stop) : mem_(std::move(mem)), stop_(stop) {}
  [[nodiscard]] std::string_view kind() const noexcept { return "racing"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "in-process"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) {
    auto result = mem_.try_acquire(r);
    stop_.request_stop();
    return result;
  }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) {
    ++releases;
    return mem_.release(name, lease);
  }
  std::optional<dlock::TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease,
                                         std::chrono::milliseconds ttl, dlock::TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }
  int releases = 0;

 private:
  MemoryBackend mem_;
  std::stop_source& stop_;
};
}  // namespace

TEST(Cancel, AWaitOnAReleaseSubscriptionEndsAtOnce) {
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "job", {.ttl = 60s});
  holder.lock();
  auto observer = std::make_shared<RecordingObserver>();
  // A long backoff: only the stop request can end the wait early.
  Lock<MemoryBackend> waiter(mem, "job",
                             {.ttl = 60s, .retry = {.initial_delay = 30s, .max_delay = 30s}, .observer = observer});
  const auto took = cancel_while_blocked([&](std::stop_token st) { waiter.lock(st); },
                                         [&] { return observer->count(EventType::contended) >= 2; }, "subscription");
  EXPECT_LT(took, 1s);
  EXPECT_FALSE(waiter.owns_lock());
  EXPECT_TRUE(holder.owns_lock());
  EXPECT_EQ(observer->count(EventType::acquired), 0u);
  EXPECT_EQ(observer->events().back().reason, "cancelled");  // acquire_failed, reason cancelled
  holder.unlock();
  EXPECT_TRUE(waiter.try_lock());  // nothing was left behind
}

TEST(Cancel, ASlicedSubscriptionWaitEndsWithinOneSlice) {
  MemoryBackend mem;
  PlainSubscriptionBackend plain(mem);
  Lock<MemoryBackend> holder(mem, "job", {.ttl = 60s});
  holder.lock();
  auto observer = std::make_shared<RecordingObserver>();
  Lock<PlainSubscriptionBackend> waiter(
      plain, "job", {.ttl = 60s, .retry = {.initial_delay = 30s, .max_delay = 30s}, .observer = observer});
  const auto took =
      cancel_while_blocked([&](std::stop_token st) { (void)waiter.try_lock_for(1h, st); },
                           [&] { return observer->count(EventType::contended) >= 2; }, "sliced subscription");
  EXPECT_LT(took, dlock::detail::cancel_poll_slice + 500ms);
}

TEST(Cancel, ABackoffSleepEndsAtOnce) {
  dlock::test::FaultyBackend backend;  // no subscription: the waiter sleeps its backoff
  backend.failing_acquires = 1'000'000;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<dlock::test::FaultyBackend> waiter(
      backend, "job",
      {.retry = {.initial_delay = 30s, .max_delay = 30s}, .outage_timeout = std::nullopt, .observer = observer});
  const auto took = cancel_while_blocked([&](std::stop_token st) { (void)waiter.try_acquire_for(1h, st); },
                                         [&] { return observer->count(EventType::attempt_failed) >= 1; }, "backoff");
  EXPECT_LT(took, 1s);
  EXPECT_EQ(backend.acquire_calls.load(), 1);
}

TEST(Cancel, AWaitAtTheInProcessGateEndsAtOnce) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  lock.lock();  // this thread holds the Lock object; another thread waits for it in-process
  std::atomic<bool> started{false};
  const auto took = cancel_while_blocked(
      [&](std::stop_token st) {
        started = true;
        lock.lock(st);
      },
      [&] { return started.load(); }, "gate");
  EXPECT_LT(took, 1s);
  EXPECT_TRUE(lock.owns_lock());
  lock.unlock();
}

TEST(Cancel, AStopRequestedBeforehandCancelsWithoutAnAttempt) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.observer = observer});
  std::stop_source stop;
  stop.request_stop();
  EXPECT_THROW(lock.lock(stop.get_token()), CancelledError);
  EXPECT_THROW((void)lock.try_lock_for(1s, stop.get_token()), CancelledError);
  EXPECT_THROW((void)lock.try_lock_until(std::chrono::system_clock::now() + 1s, stop.get_token()), CancelledError);
  EXPECT_THROW((void)lock.acquire(stop.get_token()), CancelledError);
  EXPECT_EQ(observer->count(EventType::attempt), 0u);
  EXPECT_FALSE(lock.owns_lock());
  EXPECT_TRUE(lock.try_lock());  // the gate was let go
}

TEST(Cancel, AGrantThatRacesTheStopRequestIsReleased) {
  MemoryBackend mem;
  std::stop_source stop;
  RacingBackend racing(mem, stop);
  Lock<RacingBackend> lock(racing, "job");
  EXPECT_THROW(lock.lock(stop.get_token()), CancelledError);
  EXPECT_EQ(lock.backend().releases, 1);  // the Lock keeps a copy of the backend
  EXPECT_FALSE(lock.owns_lock());
  Lock<MemoryBackend> other(mem, "job");
  EXPECT_TRUE(other.try_lock());  // the grant did not stay behind on the server
}

TEST(Cancel, AnUnrequestedTokenChangesNothing) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  std::stop_source stop;
  EXPECT_TRUE(lock.try_lock_for(1s, stop.get_token()));
  lock.unlock();
  auto g = lock.acquire(stop.get_token());
  EXPECT_TRUE(g.owns_lock());
}
