// Degradation policies against a lock service that is down: fail closed (the
// default), fall back to a secondary backend, or run without the lock; each
// degraded acquisition reported with the lock's name and the reason.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

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

namespace {

// A primary whose acquires throw the error it is given.
class ThrowingBackend {
 public:
  using Handle = dlock::NoHandle;
  std::function<void()> fail;
  [[nodiscard]] std::string_view kind() const noexcept { return "throwing"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:2"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest&) {
    fail();
    return dlock::Contended{};
  }
  dlock::ReleaseResult release(std::string_view, dlock::Lease<Handle>&) { return dlock::ReleaseResult::not_held; }
  std::optional<dlock::TimePoint> extend(std::string_view, dlock::Lease<Handle>&, std::chrono::milliseconds,
                                         dlock::TimePoint) {
    return std::nullopt;
  }
};

// Whether a FallbackBackend over a primary that throws `fail` degrades (true)
// or passes the error on (false).
bool degrades(std::function<void()> fail) {
  ThrowingBackend primary;
  primary.fail = std::move(fail);
  MemoryBackend local;
  FallbackBackend<ThrowingBackend, MemoryBackend> degrade(primary, local);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<decltype(degrade)> lock(degrade, "classify", {.observer = observer});
  try {
    const bool got = lock.try_lock();
    EXPECT_TRUE(got);
    EXPECT_EQ(observer->count(EventType::degraded), 1u);
    return true;
  } catch (const dlock::Error&) {
    EXPECT_EQ(observer->count(EventType::degraded), 0u);
    return false;
  }
}

}  // namespace

TEST(Degradation, OnlyCouldNotReachTheServiceDegrades) {
  // Could not reach the service (refused, or no answer within the connect
  // timeout: every backend throws ConnectionError, errc::connection, for both).
  EXPECT_TRUE(degrades([] { throw dlock::ConnectionError("cannot connect: no answer within connect_timeout 5s"); }));
  EXPECT_TRUE(degrades([] { throw dlock::ConnectionError("cannot connect: connection refused"); }));
  EXPECT_TRUE(degrades([] { throw dlock::Error(dlock::errc::connection, "unreachable, as a plain Error"); }));
  // A request the primary had received timed out: the service was reached, and
  // the outcome is unknown (it may have granted the lock). Not an outage.
  EXPECT_FALSE(degrades([] { throw dlock::TimeoutError("no answer within statement_timeout 5s"); }));
  // Not outages: fix the configuration or the server.
  EXPECT_FALSE(degrades([] { throw dlock::ServerError("authentication failed", dlock::errc::auth); }));
  EXPECT_FALSE(degrades([] { throw dlock::ServerError("read-only replica"); }));
  EXPECT_FALSE(degrades([] { throw dlock::InvalidArgument("bad name"); }));
}

// The primary's optional capabilities carry over, so a healthy primary serves
// waiters as it would alone: a release wakes them instead of their backoff.
static_assert(dlock::NotifiesRelease<FallbackBackend<MemoryBackend, UnlockedBackend>>);
static_assert(!dlock::NotifiesRelease<FallbackBackend<FaultyBackend, UnlockedBackend>>);

TEST(Degradation, AReleaseOnTheHealthyPrimaryWakesAWaiter) {
  MemoryBackend primary;
  UnlockedBackend none;
  FallbackBackend<MemoryBackend, UnlockedBackend> degrade(primary, none);
  Lock<decltype(degrade)> holder(degrade, "job");
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<decltype(degrade)> waiter(degrade, "job", {.retry = {.initial_delay = 30s, .max_delay = 30s}, .observer = obs});
  holder.lock();
  std::thread release([&] {
    // Once the waiter has subscribed, found the lock held again and started its 30 s wait.
    (void)dlock::test::eventually([&] { return obs->count(dlock::EventType::contended) >= 2; }, 10s);
    holder.unlock();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(waiter.try_lock_for(20s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);  // woken, not after its 30 s backoff
  release.join();
}

// ---- AsyncBackend carries over when both sides have it ----

namespace {
// A MemoryBackend whose asynchronous attempts fail as an unreachable server would.
struct UnreachableAsync : MemoryBackend {
  void async_try_acquire(const dlock::AcquireRequest&, const boost::asio::any_io_executor& ex,
                         dlock::AcquireCompletion<Handle> done) {
    boost::asio::post(ex, [done = std::move(done)] {
      done(std::make_exception_ptr(dlock::ConnectionError("connect to 127.0.0.1:1 refused")), {});
    });
  }
};
}  // namespace

static_assert(dlock::AsyncBackend<FallbackBackend<MemoryBackend, MemoryBackend>>);
static_assert(!dlock::AsyncBackend<FallbackBackend<MemoryBackend, UnlockedBackend>>);

TEST(Degradation, AsyncAcquiresGoThroughTheFallback) {
  boost::asio::io_context io;
  MemoryBackend primary, local;
  UnreachableAsync down;
  FallbackBackend<MemoryBackend, MemoryBackend> healthy(primary, local);
  FallbackBackend<UnreachableAsync, MemoryBackend> degrade(down, local);
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<decltype(healthy)> a(healthy, "job", {.observer = obs});
  Lock<decltype(degrade)> b(degrade, "job", {.observer = obs});
  std::vector<std::string> steps;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        auto g = co_await a.async_acquire(boost::asio::use_awaitable);
        steps.push_back(g.fencing_token() ? "primary" : "no token");
        Lock<MemoryBackend> on_primary(primary, "job");
        if (!on_primary.try_lock()) steps.push_back("held on the primary");
        co_await g.async_extend(10s, boost::asio::use_awaitable);
        const auto released = co_await g.async_release(boost::asio::use_awaitable);
        if (released == dlock::ReleaseResult::released) steps.push_back("released");
        auto d = co_await b.async_acquire(boost::asio::use_awaitable);  // degraded: taken from `local`
        Lock<MemoryBackend> on_local(local, "job");
        if (!on_local.try_lock()) steps.push_back("held on the fallback");
        co_await d.async_extend(10s, boost::asio::use_awaitable);
        if (co_await d.async_release(boost::asio::use_awaitable) == dlock::ReleaseResult::released)
          steps.push_back("released");
        if (on_local.try_lock()) on_local.unlock();
      },
      boost::asio::detached);
  io.run();
  EXPECT_EQ(steps, (std::vector<std::string>{"primary", "held on the primary", "released", "held on the fallback",
                                             "released"}));
  EXPECT_EQ(obs->count(dlock::EventType::degraded), 1u);
}
