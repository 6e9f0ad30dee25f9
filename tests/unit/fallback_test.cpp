// Degradation policies against a lock service that is down: fail closed (the
// default), fall back to a secondary backend, or run without the lock; each
// degraded acquisition reported with the lock's name and the reason.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::EventType;
using dlock::FallbackBackend;
using dlock::Lock;
using dlock::MemoryBackend;
using dlock::UnlockedBackend;
using dlock::test::FaultyBackend;
using dlock::test::RecordingObserver;

static_assert(dlock::Backend<FallbackBackend<FaultyBackend, MemoryBackend>>);
static_assert(dlock::Backend<UnlockedBackend>);

TEST(Degradation, FailClosedIsTheDefault) {
  FaultyBackend down;
  down.failing_acquires = 1'000'000;
  Lock<FaultyBackend> lock(down, "payments:1", {.retry = {.initial_delay = 1ms, .max_delay = 1ms}});
  EXPECT_THROW((void)lock.try_lock(), dlock::ConnectionError);
  EXPECT_THROW((void)lock.try_lock_for(20ms), dlock::ConnectionError);
  EXPECT_FALSE(lock.owns_lock());
}

TEST(Degradation, FallbackToASecondaryBackendKeepsExclusionAndReports) {
  FaultyBackend primary;
  MemoryBackend local;
  FallbackBackend<FaultyBackend, MemoryBackend> degrade(primary, local);
  auto observer = std::make_shared<RecordingObserver>();
  auto both = std::make_shared<dlock::MetricsRegistry>(dlock::MetricsOptions{.next = observer});
  Lock<decltype(degrade)> a(degrade, "thumbnails:1", {.observer = both});
  Lock<decltype(degrade)> b(degrade, "thumbnails:1", {.observer = both});

  primary.failing_acquires = 1'000'000;  // the lock service is down
  ASSERT_TRUE(a.try_lock());
  EXPECT_FALSE(b.try_lock());  // still exclusive within this process
  EXPECT_GT(a.fencing_token(), 0u);
  a.extend();  // goes to the backend that granted it
  EXPECT_EQ(a.release(), dlock::ReleaseResult::released);
  EXPECT_TRUE(b.try_lock());
  b.unlock();

  ASSERT_EQ(observer->count(EventType::degraded), 2u);
  for (const auto& e : observer->events()) {
    if (e.type != EventType::degraded) continue;
    EXPECT_EQ(e.lock, "thumbnails:1");
    EXPECT_EQ(e.reason, "memory");
    EXPECT_NE(e.message.find("faulty test:0 unreachable"), std::string::npos) << e.message;
  }
  EXPECT_EQ(both->value(dlock::MetricsRegistry::ReasonCounter::degraded, "faulty", "thumbnails", "memory"), 2u);

  primary.failing_acquires = 0;  // back: new acquisitions use the primary again
  ASSERT_TRUE(a.try_lock());
  EXPECT_EQ(observer->count(EventType::degraded), 2u);
  Lock<FaultyBackend> direct(primary, "thumbnails:1");
  EXPECT_FALSE(direct.try_lock());  // held on the primary
}

TEST(Degradation, RunWithoutTheLockWhenDown) {
  FaultyBackend primary;
  UnlockedBackend none;
  FallbackBackend<FaultyBackend, UnlockedBackend> degrade(primary, none);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<decltype(degrade)> a(degrade, "cache:warm", {.observer = observer});
  Lock<decltype(degrade)> b(degrade, "cache:warm", {.observer = observer});
  primary.failing_acquires = 1'000'000;
  ASSERT_TRUE(a.try_lock());
  ASSERT_TRUE(b.try_lock());  // no exclusion at all: only for work that tolerates duplicates
  try {
    (void)a.fencing_token();
    FAIL() << "an unlocked grant has no token";
  } catch (const dlock::Error& e) {
    EXPECT_EQ(e.code(), dlock::errc::no_fencing_token);
  }
  EXPECT_EQ(observer->count(EventType::degraded), 2u);
  for (const auto& e : observer->events()) {
    if (e.type == EventType::degraded) {
      EXPECT_EQ(e.reason, "unlocked");
    }
  }
}

TEST(Degradation, ContentionOnThePrimaryIsNotAnOutage) {
  FaultyBackend primary;
  UnlockedBackend none;
  FallbackBackend<FaultyBackend, UnlockedBackend> degrade(primary, none);
  Lock<FaultyBackend> holder(primary, "job");
  Lock<decltype(degrade)> lock(degrade, "job");
  holder.lock();
  EXPECT_FALSE(lock.try_lock());  // held: wait, do not degrade
}
