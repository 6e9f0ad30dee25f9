// Lock<Backend> over the in-process backend: exclusion, tokens, expiry on an
// injected clock, release semantics, standard guards, retry and reporting.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "key_outlives_validity.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::EventType;
using dlock::Lock;
using dlock::LockOptions;
using dlock::MemoryBackend;
using dlock::test::FaultyBackend;
using dlock::test::RecordingObserver;

static_assert(dlock::Backend<MemoryBackend>);
static_assert(dlock::NotifiesRelease<MemoryBackend>);
static_assert(!dlock::WaitsOnServer<MemoryBackend>);

namespace {

// Exclusion is checked with a plain int that the threads read, then write:
// any overlap of two critical sections loses an increment.
struct Shared {
  long counter = 0;
  std::uint64_t last_token = 0;
  bool tokens_increase = true;
};

void critical_section(Lock<MemoryBackend>& lock, Shared& s) {
  const std::uint64_t token = lock.fencing_token();
  if (token <= s.last_token) s.tokens_increase = false;
  s.last_token = token;
  const long read = s.counter;
  std::this_thread::yield();
  s.counter = read + 1;
}

constexpr int kThreads = 8;
constexpr int kCycles = 2000;

LockOptions fast_retry() { return {.ttl = 30s, .retry = {.initial_delay = 50us, .max_delay = 2ms}}; }

}  // namespace

TEST(MutualExclusion, EightThreadsSharingOneLockObject) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "counter", fast_retry());
  Shared shared;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCycles; ++i) {
        auto g = lock.acquire();
        critical_section(lock, shared);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(shared.counter, kThreads * kCycles);
  EXPECT_TRUE(shared.tokens_increase);
}

TEST(Acquire, TryLockIsOneAttemptAndFalseOnContention) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> a(mem, "job");
  Lock<MemoryBackend> b(mem, "job", {.observer = observer});
  ASSERT_TRUE(a.try_lock());
  EXPECT_FALSE(b.try_lock());
  EXPECT_FALSE(b.owns_lock());
  EXPECT_EQ(observer->count(EventType::attempt), 1u);
  EXPECT_EQ(observer->count(EventType::contended), 1u);
  a.unlock();
  EXPECT_TRUE(b.try_lock());
  EXPECT_EQ(observer->count(EventType::acquired), 1u);
}

TEST(Acquire, WaitIsCappedByTheHoldersRemainingTtl) {
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "job", {.ttl = 200ms});
  Lock<MemoryBackend> waiter(mem, "job",
                             {.retry = {.initial_delay = 60s, .max_delay = 60s, .jitter = dlock::Jitter::none}});
  holder.lock();  // never released: it expires after 200 ms
  EXPECT_TRUE(waiter.try_lock_for(30s));
  EXPECT_FALSE(holder.owns_lock());
}

TEST(Acquire, LockThrowsTimeoutErrorNamingLockBackendAndTimeout) {
  MemoryBackend mem;
  Lock<MemoryBackend> a(mem, "orders:42");
  Lock<MemoryBackend> b(mem, "orders:42", {.retry = {.initial_delay = 1ms, .max_delay = 5ms}, .acquire_timeout = 50ms});
  a.lock();
  try {
    b.lock();
    FAIL() << "lock() returned";
  } catch (const dlock::TimeoutError& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.code(), dlock::errc::timeout);
    EXPECT_NE(what.find("'orders:42'"), std::string::npos) << what;
    EXPECT_NE(what.find("memory in-process"), std::string::npos) << what;
    EXPECT_NE(what.find("acquire_timeout 50ms"), std::string::npos) << what;
  }
}

TEST(Acquire, MaxAttemptsBoundsABlockingAcquire) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> a(mem, "job");
  Lock<MemoryBackend> b(mem, "job",
                        {.retry = {.initial_delay = 1ms, .max_delay = 1ms, .max_attempts = 4}, .observer = observer});
  a.lock();
  EXPECT_THROW(b.lock(), dlock::TimeoutError);
  EXPECT_EQ(observer->count(EventType::attempt), 4u);
  EXPECT_EQ(observer->count(EventType::acquire_timed_out), 1u);  // contention: not a failure
  EXPECT_EQ(observer->count(EventType::acquire_failed), 0u);
}

TEST(Acquire, ATimedAcquireThatRunsOutOnContentionIsNotAFailure) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> a(mem, "job");
  Lock<MemoryBackend> b(mem, "job", {.retry = {.initial_delay = 1ms, .max_delay = 2ms}, .observer = observer});
  a.lock();
  EXPECT_FALSE(b.try_lock_for(20ms));
  EXPECT_FALSE(b.try_lock());
  EXPECT_EQ(observer->count(EventType::acquire_timed_out), 1u);
  EXPECT_EQ(observer->count(EventType::acquire_failed), 0u);
  EXPECT_EQ(observer->count(EventType::attempt_failed), 0u);
}

TEST(Acquire, EachAcquisitionHasANewOwnerIdAndAHigherToken) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  lock.lock();
  const std::string first(lock.owner_id());
  const auto t1 = lock.fencing_token();
  lock.unlock();
  lock.lock();
  EXPECT_NE(lock.owner_id(), first);
  EXPECT_EQ(lock.owner_id().size(), 36u);
  EXPECT_GT(lock.fencing_token(), t1);
}

TEST(Expiry, ExpiredLockIsAcquirableAndTheOldHolderCannotTouchIt) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> old_holder(mem, "job", {.ttl = 10s, .observer = observer, .clock = &clock});
  Lock<MemoryBackend> new_holder(mem, "job", {.ttl = 10s, .clock = &clock});

  ASSERT_TRUE(old_holder.try_lock());
  const auto old_token = old_holder.fencing_token();
  clock.advance(9s);
  EXPECT_TRUE(old_holder.owns_lock());
  EXPECT_FALSE(new_holder.try_lock());

  clock.advance(1s + 1ms);  // past the TTL, and the holder did not extend
  EXPECT_FALSE(old_holder.owns_lock());
  EXPECT_THROW((void)old_holder.fencing_token(), dlock::LockLostError);
  ASSERT_TRUE(new_holder.try_lock());
  EXPECT_GT(new_holder.fencing_token(), old_token);

  EXPECT_THROW(old_holder.extend(), dlock::LockLostError);
  EXPECT_EQ(observer->count(EventType::lost), 1u);
  EXPECT_EQ(old_holder.release(), dlock::ReleaseResult::not_held);

  EXPECT_TRUE(new_holder.owns_lock());  // untouched by the old holder
  clock.advance(5s);
  new_holder.extend();  // still its owner
  clock.advance(9s);
  EXPECT_TRUE(new_holder.owns_lock());
}

TEST(Expiry, ReleaseAfterExpiryIsReportedAsRunUnprotected) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.ttl = 1s, .observer = observer, .clock = &clock});
  lock.lock();
  clock.advance(2s);
  lock.unlock();  // noexcept, but not silent
  ASSERT_EQ(observer->count(EventType::release_not_held), 1u);
  EXPECT_EQ(observer->count(EventType::released), 0u);
  for (const auto& e : observer->events())
    if (e.type == EventType::release_not_held) {
      EXPECT_EQ(e.lock, "job");
      EXPECT_EQ(e.error, dlock::errc::lock_lost);
      EXPECT_NE(e.message.find("unprotected"), std::string::npos);
    }
}

using dlock::test::KeyOutlivesValidityBackend;

// Past its validity the end of the critical section ran unprotected, whatever
// the server still had (seen first as a flaky Redlock conformance failure).
TEST(Release, ReleaseAfterTheValidityEndedIsNotHeldEvenIfTheServerStillHadTheKey) {
  dlock::ManualClock clock;
  KeyOutlivesValidityBackend backend(clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<KeyOutlivesValidityBackend> lock(backend, "job", {.ttl = 1s, .observer = observer, .clock = &clock});
  lock.lock();
  clock.advance(999ms);
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);  // within its validity
  lock.lock();
  clock.advance(1s);
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::not_held);
  EXPECT_EQ(observer->count(EventType::released), 1u);
  EXPECT_EQ(observer->count(EventType::release_not_held), 1u);
}

TEST(Release, ANonOwnerCannotReleaseTheOwnersLock) {
  MemoryBackend mem;
  Lock<MemoryBackend> owner(mem, "job");
  Lock<MemoryBackend> other(mem, "job");
  owner.lock();
  other.unlock();  // never acquired: no effect
  EXPECT_EQ(other.release(), dlock::ReleaseResult::not_held);

  // A forged lease with another owner id is refused by the backend.
  dlock::Lease<dlock::NoHandle> forged{dlock::OwnerId::generate(), {}, {}, {}, {}};
  EXPECT_EQ(mem.release("job", forged), dlock::ReleaseResult::not_held);
  EXPECT_FALSE(mem.extend("job", forged, 1s, std::chrono::steady_clock::now()).has_value());

  EXPECT_TRUE(owner.owns_lock());
  EXPECT_FALSE(other.try_lock());
}

TEST(Release, FencingTokenAndExtendNeedTheLock) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  try {
    (void)lock.fencing_token();
    FAIL();
  } catch (const dlock::LockLostError& e) {
    EXPECT_EQ(e.code(), dlock::errc::not_held);
  }
  EXPECT_THROW(lock.extend(), dlock::LockLostError);
  EXPECT_EQ(lock.valid_until(), dlock::TimePoint{});
}

TEST(StandardGuards, ScopedLockInOppositeOrdersDoesNotDeadlock) {
  MemoryBackend mem;
  constexpr int rounds = 300;
  std::atomic<int> done{0};
  auto worker = [&](bool reversed) {
    Lock<MemoryBackend> a(mem, "account:a", fast_retry());
    Lock<MemoryBackend> b(mem, "account:b", fast_retry());
    for (int i = 0; i < rounds; ++i) {
      if (reversed) {
        std::scoped_lock both(b, a);
        EXPECT_TRUE(a.owns_lock() && b.owns_lock());
      } else {
        std::scoped_lock both(a, b);
        EXPECT_TRUE(a.owns_lock() && b.owns_lock());
      }
      ++done;
    }
  };
  std::thread t1(worker, false);
  std::thread t2(worker, true);
  t1.join();
  t2.join();
  EXPECT_EQ(done, 2 * rounds);
}

TEST(StandardGuards, UniqueLockAndTimedForms) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  {
    std::unique_lock ul(lock, std::defer_lock);
    EXPECT_TRUE(ul.try_lock_for(1s));
    EXPECT_TRUE(lock.owns_lock());
  }
  EXPECT_FALSE(lock.owns_lock());
  EXPECT_TRUE(lock.try_lock_until(std::chrono::system_clock::now() + 1s));  // other clocks convert
  lock.unlock();
}

TEST(Guard, ReleasesOnScopeExitAndExposesTheAcquisition) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  {
    auto g = lock.acquire();
    EXPECT_TRUE(g);
    EXPECT_TRUE(g.owns_lock());
    EXPECT_EQ(g.owner_id(), lock.owner_id());
    EXPECT_EQ(g.fencing_token(), lock.fencing_token());
    auto moved = std::move(g);
    EXPECT_FALSE(g);
    EXPECT_TRUE(moved.owns_lock());
  }
  EXPECT_FALSE(lock.owns_lock());
  Lock<MemoryBackend> other(mem, "job");
  EXPECT_TRUE(other.try_lock());
}

TEST(Guard, EmptyOnContention) {
  MemoryBackend mem;
  Lock<MemoryBackend> a(mem, "job");
  Lock<MemoryBackend> b(mem, "job", {.retry = {.initial_delay = 1ms, .max_delay = 1ms}});
  auto ga = a.acquire();
  auto gb = b.try_acquire();
  EXPECT_FALSE(gb);
  EXPECT_FALSE(b.try_acquire_for(20ms));
  EXPECT_THROW((void)gb.fencing_token(), dlock::LockLostError);
  EXPECT_EQ(gb.release(), dlock::ReleaseResult::not_held);
}

TEST(Guard, FailingReleaseIsReportedNotThrownFromTheDestructor) {
  FaultyBackend backend;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<FaultyBackend> lock(backend, "job", {.observer = observer});
  static_assert(std::is_nothrow_destructible_v<Lock<FaultyBackend>::guard_type>);
  {
    auto g = lock.acquire();
    backend.release_fails = true;
  }  // must not throw or terminate
  ASSERT_EQ(observer->count(EventType::release_failed), 1u);
  for (const auto& e : observer->events())
    if (e.type == EventType::release_failed) {
      EXPECT_EQ(e.error, dlock::errc::connection);
      EXPECT_EQ(e.lock, "job");
      EXPECT_FALSE(e.owner.empty());
      EXPECT_NE(e.message.find("connection reset"), std::string::npos) << e.message;
      EXPECT_NE(e.message.find("expire by its TTL"), std::string::npos) << e.message;
    }
  EXPECT_FALSE(lock.owns_lock());

  // The failed release left the lock to expire by its TTL; an operator clears it.
  EXPECT_TRUE(backend.memory().force_release("job"));

  // release() tells the caller instead, and still lets go locally.
  backend.release_fails = false;
  auto g = lock.acquire();
  backend.release_fails = true;
  EXPECT_THROW((void)g.release(), dlock::ConnectionError);
  EXPECT_FALSE(g);
}

TEST(Transient, BlockingAcquireRetriesThroughConnectionErrors) {
  FaultyBackend backend;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<FaultyBackend> lock(backend, "job", {.retry = {.initial_delay = 1ms, .max_delay = 2ms}, .observer = observer});
  backend.failing_acquires = 3;
  lock.lock();
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_EQ(backend.acquire_calls, 4);
  EXPECT_EQ(observer->count(EventType::attempt_failed), 3u);  // one per failed attempt
  EXPECT_EQ(observer->count(EventType::acquire_failed), 0u);  // the acquire itself succeeded
}

// With no acquire_timeout, an outage used to block lock() forever, logging
// every attempt. It now fails closed after outage_timeout.
TEST(Transient, AnOutageFailsClosedAfterOutageTimeout) {
  FaultyBackend backend;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<FaultyBackend> lock(
      backend, "job",
      {.retry = {.initial_delay = 1ms, .max_delay = 5ms}, .outage_timeout = 150ms, .observer = observer});
  backend.failing_acquires = 1'000'000'000;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(lock.lock(), dlock::ConnectionError);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 5s);
  EXPECT_EQ(observer->count(EventType::acquire_failed), 1u);
  EXPECT_EQ(observer->count(EventType::attempt_failed), static_cast<std::size_t>(backend.acquire_calls.load()));
  for (const auto& e : observer->events())
    if (e.type == EventType::acquire_failed) {
      EXPECT_EQ(e.reason, "connection");
    }
  backend.failing_acquires = 0;
  EXPECT_TRUE(lock.try_lock());  // the gate was let go
}

// Issue 13: a lock() blocked by an outage must not log every attempt. The
// default observer (a LogObserver) admits one line per lock and event type
// per interval; here 100 ms, against an attempt every 1-2 ms.
TEST(Transient, ABlockedLockDuringAnOutageLogsAtABoundedRate) {
  FaultyBackend backend;
  std::mutex mu;
  std::vector<std::string> lines;
  auto log = std::make_shared<dlock::LogObserver>(dlock::LogOptions{.interval = 100ms, .sink = [&](std::string_view l) {
                                                                      std::lock_guard lk(mu);
                                                                      lines.emplace_back(l);
                                                                    }});
  Lock<FaultyBackend> lock(
      backend, "job", {.retry = {.initial_delay = 1ms, .max_delay = 2ms}, .outage_timeout = 450ms, .observer = log});
  backend.failing_acquires = 1'000'000'000;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(lock.lock(), dlock::ConnectionError);  // fails closed (outage_timeout)
  const auto took = std::chrono::steady_clock::now() - start;
  std::lock_guard lk(mu);
  std::size_t attempt_lines = 0;
  for (const auto& l : lines) attempt_lines += l.find("attempt_failed") != std::string::npos;
  const auto bound = static_cast<std::size_t>(took / 100ms) + 1;
  std::printf("%d attempts in %lld ms, %zu attempt_failed lines (bound %zu), %zu lines in all\n",
              backend.acquire_calls.load(),
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
              attempt_lines, bound, lines.size());
  EXPECT_GT(backend.acquire_calls.load(), 50);
  EXPECT_LE(attempt_lines, bound);
  EXPECT_LE(lines.size(), bound + 1);  // and the one acquire_failed line
  ASSERT_GE(lines.size(), 2u);
  EXPECT_NE(lines[1].find("left out"), std::string::npos) << lines[1];
}

namespace {
// Every odd attempt fails to connect, every even one finds the lock held; each
// attempt moves the manual clock 10 ms.
class AlternatingBackend {
 public:
  using Handle = dlock::NoHandle;
  explicit AlternatingBackend(dlock::ManualClock& clock) : clock_(clock) {}
  AlternatingBackend(const AlternatingBackend&) = delete;  // kept by reference, so `calls` is this one's
  [[nodiscard]] std::string_view kind() const noexcept { return "alternating"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:0"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest&) {
    clock_.advance(10ms);
    if (++calls % 2 == 1) throw dlock::ConnectionError("alternating: connection refused (test:0)");
    return dlock::Contended{};
  }
  dlock::ReleaseResult release(std::string_view, dlock::Lease<Handle>&) { return dlock::ReleaseResult::not_held; }
  std::optional<dlock::TimePoint> extend(std::string_view, dlock::Lease<Handle>&, std::chrono::milliseconds,
                                         dlock::TimePoint) {
    return std::nullopt;
  }
  int calls = 0;

 private:
  dlock::ManualClock& clock_;
};
}  // namespace

// An answer from the service (contention) ends the outage: failures that
// alternate with contention never add up to outage_timeout.
TEST(Transient, ContentionBetweenFailuresIsNotAnOutage) {
  dlock::ManualClock clock;
  AlternatingBackend backend(clock);
  Lock<AlternatingBackend> waiter(
      backend, "job",
      {.retry = {.initial_delay = 1ms, .max_delay = 1ms, .max_attempts = 20}, .outage_timeout = 40ms, .clock = &clock});
  EXPECT_FALSE(waiter.try_lock_for(1h));  // 200 ms of alternation: contention, not the outage's error
  EXPECT_EQ(backend.calls, 20);
}

TEST(Transient, OutageTimeoutIsValidated) {
  MemoryBackend mem;
  EXPECT_THROW(Lock<MemoryBackend>(mem, "job", {.outage_timeout = 0ms}), dlock::InvalidArgument);
  Lock<MemoryBackend> endless(mem, "job", {.outage_timeout = std::nullopt});
  EXPECT_FALSE(endless.options().outage_timeout.has_value());
}

TEST(Transient, TryLockThrowsAndTimedAcquireRethrowsAnOutage) {
  FaultyBackend backend;
  Lock<FaultyBackend> lock(backend, "job", {.retry = {.initial_delay = 1ms, .max_delay = 2ms}});
  backend.failing_acquires = 1;
  EXPECT_THROW((void)lock.try_lock(), dlock::ConnectionError);
  backend.failing_acquires = 1'000'000;
  EXPECT_THROW((void)lock.try_lock_for(30ms), dlock::ConnectionError);  // not "false": that would mean contention
  EXPECT_FALSE(lock.owns_lock());
  backend.failing_acquires = 0;
  EXPECT_TRUE(lock.try_lock());  // the in-process gate was let go on every path
}

TEST(Transient, FailedExtendKeepsTheLeaseAndReports) {
  FaultyBackend backend;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<FaultyBackend> lock(backend, "job", {.observer = observer});
  lock.lock();
  backend.extend_fails = true;
  EXPECT_THROW(lock.extend(), dlock::ConnectionError);
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_EQ(observer->count(EventType::extend_failed), 1u);
  backend.extend_fails = false;
  lock.extend();
  EXPECT_EQ(observer->count(EventType::extended), 1u);
}

TEST(Observer, EventsOfAnUncontendedCycle) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.observer = observer});
  lock.lock();
  lock.unlock();
  const auto events = observer->events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].type, EventType::attempt);
  EXPECT_EQ(events[1].type, EventType::acquired);
  EXPECT_EQ(events[1].attempts, 1u);
  EXPECT_TRUE(events[1].token.has_value());
  EXPECT_EQ(events[2].type, EventType::released);
  EXPECT_EQ(events[2].owner, events[1].owner);
}

TEST(MemoryBackend, SubscriptionReportsEachReleaseOnce) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  auto sub = mem.subscribe_release("job");
  EXPECT_FALSE(sub.wait_for(1ms));
  lock.lock();
  lock.unlock();
  EXPECT_TRUE(sub.wait_for(1ms));    // the release before the wait is not lost
  EXPECT_FALSE(sub.wait_for(20ms));  // and is not reported again
  EXPECT_TRUE(mem.subscribe_release("other").wait_for(0ms) == false);
}

TEST(WaitRecords, ABlockedAcquirePublishesWhatItWaitsForAndWhatItsThreadHolds) {
  dlock::test::WaitRecordingBackend backend;
  Lock<dlock::test::WaitRecordingBackend> other_holder(backend, "b");
  other_holder.lock();
  std::atomic<bool> done{false};
  std::string held_owner;
  std::thread waiter([&] {
    Lock<dlock::test::WaitRecordingBackend> a(backend, "a");
    Lock<dlock::test::WaitRecordingBackend> b(backend, "b", {.retry = {.initial_delay = 5ms, .max_delay = 10ms}});
    a.lock();
    held_owner = std::string(a.owner_id());
    b.lock();  // blocks until released below
    done = true;
  });
  std::vector<dlock::test::WaitRecordingBackend::Record> live;
  (void)dlock::test::eventually([&] {
    live = backend.live();
    return !live.empty();
  });
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].lock, "b");
  ASSERT_EQ(live[0].holds.size(), 1u);
  EXPECT_EQ(live[0].holds[0].first, "a");
  EXPECT_EQ(live[0].holds[0].second, held_owner);
  EXPECT_NE(live[0].agent.find(":"), std::string::npos);
  EXPECT_FALSE(done);
  other_holder.unlock();
  waiter.join();
  EXPECT_TRUE(backend.live().empty());  // cleared once acquired
  EXPECT_GE(backend.published.load(), 1);
}

// ---- issue 11: guards bind to their acquisition ----

TEST(GuardBinding, AGuardDescribesItsOwnAcquisitionAfterUnlockAndReacquire) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  auto first = lock.acquire();
  const std::string first_owner(first.owner_id());
  lock.unlock();  // allowed and idempotent; the guard's acquisition is over
  lock.lock();    // a new acquisition of the same Lock
  const auto second_token = lock.fencing_token();
  const std::string second_owner(lock.owner_id());
  ASSERT_NE(second_owner, first_owner);

  EXPECT_FALSE(first.owns_lock());
  EXPECT_THROW((void)first.fencing_token(), dlock::LockLostError);
  EXPECT_EQ(std::string(first.owner_id()), first_owner);
  EXPECT_EQ(first.valid_until(), dlock::TimePoint{});
  EXPECT_THROW(first.extend(), dlock::LockLostError);

  { auto gone = std::move(first); }  // destroying the old guard must not release the new acquisition
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_EQ(lock.fencing_token(), second_token);
  Lock<MemoryBackend> other(mem, "job");
  EXPECT_FALSE(other.try_lock());  // still held by the second acquisition: no second owner
  lock.unlock();
  EXPECT_TRUE(other.try_lock());
}

TEST(GuardBinding, ReleaseOfAnOldGuardIsNotHeldAndLeavesTheNewGuardAlone) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.observer = observer});
  auto first = lock.acquire();
  lock.unlock();
  auto second = lock.acquire();
  EXPECT_EQ(first.release(), dlock::ReleaseResult::not_held);
  EXPECT_FALSE(first);
  EXPECT_TRUE(second.owns_lock());
  EXPECT_EQ(std::string(second.owner_id()), std::string(lock.owner_id()));
  EXPECT_EQ(observer->count(EventType::released), 1u);  // only the unlock() above
  EXPECT_EQ(second.release(), dlock::ReleaseResult::released);
  EXPECT_FALSE(lock.owns_lock());
  {
    std::unique_lock ul(lock);  // the standard guards still work
    EXPECT_TRUE(lock.owns_lock());
  }
  {
    std::scoped_lock sl(lock);
    EXPECT_TRUE(lock.owns_lock());
  }
  EXPECT_FALSE(lock.owns_lock());
}

// ---- issue 16 item 5: re-entry fails at once ----

TEST(Reentry, EverySecondAcquireByTheHoldingThreadThrowsDeadlockErrorAtOnce) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.acquire_timeout = 300ms, .observer = observer});
  Lock<MemoryBackend> other(mem, "other");
  auto g = lock.acquire();
  const std::uint64_t token = g.fencing_token();
  const std::size_t attempts_before = observer->count(EventType::attempt);
  const auto start = std::chrono::steady_clock::now();
  auto expect_deadlock = [&](const char* form, auto&& call) {
    try {
      call();
      ADD_FAILURE() << form << ": no DeadlockError";
    } catch (const dlock::DeadlockError& e) {
      EXPECT_EQ(e.code(), dlock::errc::deadlock) << form;
      EXPECT_NE(std::string(e.what()).find("'job'"), std::string::npos) << form << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("not recursive"), std::string::npos) << form << ": " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << form << ": " << e.what();
    }
  };
  expect_deadlock("lock()", [&] { lock.lock(); });
  expect_deadlock("try_lock()", [&] { (void)lock.try_lock(); });
  expect_deadlock("try_lock_for()", [&] { (void)lock.try_lock_for(300ms); });
  expect_deadlock("try_lock_until(steady)",
                  [&] { (void)lock.try_lock_until(std::chrono::steady_clock::now() + 300ms); });
  expect_deadlock("try_lock_until(system)",
                  [&] { (void)lock.try_lock_until(std::chrono::system_clock::now() + 300ms); });
  expect_deadlock("acquire()", [&] { (void)lock.acquire(); });
  expect_deadlock("try_acquire()", [&] { (void)lock.try_acquire(); });
  expect_deadlock("try_acquire_for()", [&] { (void)lock.try_acquire_for(300ms); });
  expect_deadlock("try_acquire_until()",
                  [&] { (void)lock.try_acquire_until(std::chrono::steady_clock::now() + 300ms); });
  expect_deadlock("lock_all()", [&] { (void)dlock::lock_all(lock, other); });
  expect_deadlock("std::unique_lock", [&] { std::unique_lock ul(lock); });
  EXPECT_LT(std::chrono::steady_clock::now() - start, 300ms) << "a form waited for itself";
  EXPECT_EQ(observer->count(EventType::attempt), attempts_before) << "the backend was contacted";
  EXPECT_FALSE(other.owns_lock());  // lock_all left nothing behind
  // The held lock is untouched.
  EXPECT_TRUE(g.owns_lock());
  EXPECT_EQ(g.fencing_token(), token);
  static_assert(!std::is_move_constructible_v<Lock<MemoryBackend>>);
  static_assert(!std::is_move_assignable_v<Lock<MemoryBackend>>);
}

TEST(Reentry, AnotherThreadStillWaitsAndTheHolderMayAcquireAfterRelease) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  lock.lock();
  bool other_got = true;
  std::thread t([&] { other_got = lock.try_lock(); });  // another thread: contention, not re-entry
  t.join();
  EXPECT_FALSE(other_got);
  lock.unlock();
  EXPECT_TRUE(lock.try_lock());  // released: the same thread may acquire again
  // unlock() from another thread ends this thread's hold too.
  std::thread([&] { lock.unlock(); }).join();
  EXPECT_TRUE(lock.try_lock_for(1s));
  lock.unlock();
}

// ---- issue 11: owner_id() may be read while another thread acquires ----

TEST(ThreadSafety, OwnerIdCanBeReadWhileAnotherThreadAcquiresAndReleases) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  std::atomic<bool> done{false};
  std::thread cycler([&] {
    for (int i = 0; i < 3000; ++i) {
      lock.lock();
      lock.unlock();
    }
    done = true;
  });
  std::size_t reads = 0;
  bool well_formed = true;
  while (!done) {
    const std::string id(lock.owner_id());  // reads the characters (ThreadSanitizer sees a torn read here)
    well_formed = well_formed && (id.empty() || id.size() == 36u);
    ++reads;
  }
  cycler.join();
  EXPECT_TRUE(well_formed);
  EXPECT_GT(reads, 0u);
}

// ---- issue 11: "forever" durations saturate instead of overflowing ----

TEST(Forever, MemoryBackendWithAnEndlessTtlKeepsItsOwner) {
  MemoryBackend mem;
  const auto first = dlock::OwnerId::generate();
  const auto second = dlock::OwnerId::generate();
  const auto now = std::chrono::steady_clock::now();
  auto grant = mem.try_acquire(dlock::AcquireRequest{"job", first, std::chrono::milliseconds::max(), now});
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(grant));
  EXPECT_GT(std::get<dlock::Grant<dlock::NoHandle>>(grant).valid_until, now + 24h);
  auto contended = mem.try_acquire(dlock::AcquireRequest{"job", second, 1s, now});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(contended));  // no second owner
  EXPECT_GT(*std::get<dlock::Contended>(contended).holder_ttl, std::chrono::milliseconds(24h));
  dlock::Lease<dlock::NoHandle> lease{first, {}, now, {}, {}};
  const auto extended = mem.extend("job", lease, std::chrono::milliseconds::max(), now);
  ASSERT_TRUE(extended.has_value());
  EXPECT_GT(*extended, now + 24h);
  EXPECT_TRUE(std::holds_alternative<dlock::Contended>(
      mem.try_acquire(dlock::AcquireRequest{"job", second, 1s, std::chrono::steady_clock::now()})));
}

TEST(Forever, AnEndlessMaxHoldOrLongHeldIsNeverDue) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  const LockOptions options{.ttl = 9s,
                            .auto_extend = true,
                            .extend_interval = 3s,
                            .max_hold = std::chrono::milliseconds::max(),
                            .long_held = std::chrono::milliseconds::max(),
                            .observer = std::make_shared<RecordingObserver>(),
                            .clock = &clock};
  const auto now = clock.now();
  auto held = std::make_shared<dlock::detail::Held<MemoryBackend>>(
      mem, "job", options, clock, options.observer,
      dlock::Lease<dlock::NoHandle>{dlock::OwnerId::generate(), 1, now, now + 9s, {}});
  EXPECT_EQ(held->claim(now), dlock::detail::BeatAction::none);  // not max_hold at once
  EXPECT_EQ(held->wake_at(), now + 3s);                          // the first extension
  EXPECT_EQ(held->claim(now + 3s), dlock::detail::BeatAction::extend);
}

namespace {
// Holds `name` on `mem` until the returned waiter has been seen retrying; then releases.
template <class F>
bool waits_until_released(MemoryBackend& mem, F acquire_in_thread) {
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> holder(mem, "job");
  holder.lock();
  std::atomic<int> outcome{-1};  // -1 running, 0 false or threw, 1 acquired
  std::thread waiter([&] { outcome = acquire_in_thread(observer) ? 1 : 0; });
  const bool retried = dlock::test::eventually([&] { return observer->count(EventType::contended) >= 2; });
  const bool still_waiting = outcome.load() == -1;
  holder.unlock();
  waiter.join();
  return retried && still_waiting && outcome.load() == 1;
}
LockOptions fast_retry_with(std::shared_ptr<RecordingObserver> observer) {
  LockOptions o = fast_retry();
  o.observer = std::move(observer);
  return o;
}
}  // namespace

TEST(Forever, AcquireTimeoutMaxWaitsForTheLock) {
  MemoryBackend mem;
  EXPECT_TRUE(waits_until_released(mem, [&](std::shared_ptr<RecordingObserver> observer) {
    LockOptions o = fast_retry_with(observer);
    o.acquire_timeout = std::chrono::milliseconds::max();
    Lock<MemoryBackend> lock(mem, "job", o);
    try {
      lock.lock();
      return true;
    } catch (const dlock::Error&) {
      return false;
    }
  }));
}

TEST(Forever, TryLockForHoursMaxWaitsForTheLock) {
  MemoryBackend mem;
  EXPECT_TRUE(waits_until_released(mem, [&](std::shared_ptr<RecordingObserver> observer) {
    Lock<MemoryBackend> lock(mem, "job", fast_retry_with(observer));
    return lock.try_lock_for(std::chrono::hours::max());
  }));
}

TEST(Forever, TryLockUntilTheEndOfTimeWaitsForTheLock) {
  MemoryBackend mem;
  EXPECT_TRUE(waits_until_released(mem, [&](std::shared_ptr<RecordingObserver> observer) {
    Lock<MemoryBackend> lock(mem, "job", fast_retry_with(observer));
    return lock.try_lock_until(std::chrono::system_clock::time_point::max());
  }));
  EXPECT_TRUE(waits_until_released(mem, [&](std::shared_ptr<RecordingObserver> observer) {
    Lock<MemoryBackend> lock(mem, "job", fast_retry_with(observer));
    return lock.try_lock_until(std::chrono::steady_clock::time_point::max());
  }));
}

TEST(Forever, AnotherThreadWaitingAtTheGateWithAnEndlessTimeoutWaits) {
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job");
  lock.lock();
  std::atomic<int> outcome{-1};
  std::thread waiter([&] { outcome = lock.try_lock_for(std::chrono::hours::max()) ? 1 : 0; });
  // A failing waiter returns at once; this one must still wait (a check that
  // nothing happens: time has to pass).
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(outcome.load(), -1);
  lock.unlock();
  waiter.join();
  EXPECT_EQ(outcome.load(), 1);
  lock.unlock();
}

// ---- issue 11: an in-doubt attempt's grant is abandoned ----

namespace {
/// A MemoryBackend whose next `lose_replies` acquires run on the "server" and
/// then lose their reply (TimeoutError), and which can abandon such grants.
class InDoubtBackend {
 public:
  using Handle = dlock::NoHandle;
  std::atomic<int> lose_replies{0};
  std::atomic<int> abandoned{0};

  [[nodiscard]] std::string_view kind() const noexcept { return "in-doubt"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:3"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) {
    auto result = mem_.try_acquire(r);
    if (lose_replies.load() > 0) {
      --lose_replies;
      throw dlock::TimeoutError("in-doubt: no reply within 100ms after the request was sent (test:3)");
    }
    return result;
  }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<dlock::TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease,
                                         std::chrono::milliseconds ttl, dlock::TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }
  void abandon(std::string_view name, const dlock::OwnerId& owner) noexcept {
    ++abandoned;
    dlock::Lease<Handle> lease{owner, {}, {}, {}, {}};
    try {
      (void)mem_.release(name, lease);
    } catch (...) {
    }
  }

 private:
  MemoryBackend mem_;
};
static_assert(dlock::AbandonsInDoubt<InDoubtBackend>);
}  // namespace

TEST(InDoubt, ATryLockWhoseReplyWasLostAbandonsTheGrant) {
  InDoubtBackend backend;
  Lock<InDoubtBackend> lock(backend, "job");
  Lock<InDoubtBackend> other(backend, "job");
  backend.lose_replies = 1;  // granted on the server, reply lost
  EXPECT_THROW((void)lock.try_lock(), dlock::TimeoutError);
  EXPECT_EQ(backend.abandoned.load(), 1);
  EXPECT_TRUE(other.try_lock());  // not blocked for the TTL by an ownerless key
  EXPECT_FALSE(lock.try_lock());  // plain contention: nothing to abandon
  EXPECT_EQ(backend.abandoned.load(), 1);
}

TEST(InDoubt, ABlockingAcquireThatGivesUpAbandonsItsOwnerId) {
  InDoubtBackend backend;
  Lock<InDoubtBackend> lock(backend, "job", {.retry = {.initial_delay = 1ms, .max_delay = 2ms}});
  Lock<InDoubtBackend> other(backend, "job");
  backend.lose_replies = 1'000'000;  // every reply lost: the outage is rethrown at the deadline
  EXPECT_THROW((void)lock.try_lock_for(30ms), dlock::TimeoutError);
  backend.lose_replies = 0;
  EXPECT_GE(backend.abandoned.load(), 1);
  EXPECT_TRUE(other.try_lock());
  other.unlock();

  backend.lose_replies = 1;  // the first reply lost, then its own grant looks like contention
  EXPECT_FALSE(lock.try_lock_for(30ms));
  EXPECT_TRUE(other.try_lock());  // the in-doubt grant did not outlive the acquire
}

// ---- issue 11: releasing on another thread leaves nothing in the acquiring thread's list ----

TEST(WaitRecords, HandOffsBetweenThreadsLeaveNoHoldsBehind) {
  dlock::test::WaitRecordingBackend backend;
  Lock<dlock::test::WaitRecordingBackend> lock(backend, "handoff");
  // Enough hand-offs for releases to interleave with the next lock() on the
  // other thread many times; the hold list is checked on both threads at the end.
  constexpr int kHandOffs = 1'000;
  std::binary_semaphore acquired{0}, released{0};
  std::size_t left_on_a = 999, left_on_b = 999;
  std::thread a([&] {
    for (int i = 0; i < kHandOffs; ++i) {
      lock.lock();
      acquired.release();
      released.acquire();
    }
    left_on_a = dlock::detail::thread_hold_count();
  });
  std::thread b([&] {
    for (int i = 0; i < kHandOffs; ++i) {
      acquired.acquire();
      lock.unlock();  // released on another thread than the one that acquired it
      released.release();
    }
    left_on_b = dlock::detail::thread_hold_count();
  });
  a.join();
  b.join();
  EXPECT_EQ(left_on_a, 0u);
  EXPECT_EQ(left_on_b, 0u);
}
