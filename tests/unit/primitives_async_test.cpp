// The primitives' asynchronous and cancellable forms (RwLock, Semaphore,
// Election; docs/async.md "Primitives") on MemoryPrimitives: the shared
// coroutine checks (primitive_async_checks.hpp, also run on real servers),
// the acquire state machine's decisions with a manual clock, a grant that
// races a cancellation, and the compile-time refusal of a backend without
// asynchronous primitive operations.
#include <dlock/dlock.hpp>
#include <dlock/election.hpp>
#include <dlock/memory_primitives.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>

#include "primitive_async_checks.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::Election;
using dlock::LockOptions;
using dlock::MemoryPrimitives;
using dlock::RwLock;
using dlock::Semaphore;

// Every view of MemoryPrimitives is an AsyncBackend, so each primitive's Lock has the async forms.
static_assert(dlock::AsyncSharedLockBackend<MemoryPrimitives>);
static_assert(dlock::AsyncSemaphoreBackend<MemoryPrimitives>);
static_assert(dlock::AsyncElectionBackend<MemoryPrimitives>);
static_assert(dlock::AsyncBackend<dlock::detail::SharedView<MemoryPrimitives>>);
static_assert(dlock::AsyncBackend<dlock::detail::ExclusiveView<MemoryPrimitives>>);
static_assert(dlock::AsyncBackend<dlock::detail::PermitView<MemoryPrimitives>>);
static_assert(dlock::AsyncBackend<dlock::detail::LeaderView<MemoryPrimitives>>);
static_assert(dlock::AsyncNotifiesRelease<dlock::detail::PermitView<MemoryPrimitives>>);

namespace {

// A backend with the blocking read-write operations only (declared, never
// called): its primitives have no asynchronous forms, at compile time.
struct BlockingRw {
  using Handle = dlock::NoHandle;
  std::string_view kind() const;
  std::string_view endpoint() const;
  dlock::AcquireResult<Handle> try_acquire_shared(const dlock::AcquireRequest&);
  dlock::ReleaseResult release_shared(std::string_view, dlock::Lease<Handle>&);
  std::optional<dlock::TimePoint> extend_shared(std::string_view, dlock::Lease<Handle>&, std::chrono::milliseconds,
                                                dlock::TimePoint);
  dlock::AcquireResult<Handle> try_acquire_exclusive(const dlock::AcquireRequest&);
  dlock::ReleaseResult release_exclusive(std::string_view, dlock::Lease<Handle>&);
  std::optional<dlock::TimePoint> extend_exclusive(std::string_view, dlock::Lease<Handle>&, std::chrono::milliseconds,
                                                   dlock::TimePoint);
};
static_assert(dlock::SharedLockBackend<BlockingRw>);
static_assert(!dlock::AsyncSharedLockBackend<BlockingRw>);
static_assert(!dlock::AsyncBackend<dlock::detail::SharedView<BlockingRw>>);
template <class R>
concept HasAsyncLockShared = requires(R& rw) {
  rw.async_lock_shared(asio::use_awaitable);
};
static_assert(HasAsyncLockShared<RwLock<MemoryPrimitives>>);
static_assert(!HasAsyncLockShared<RwLock<BlockingRw>>, "a backend without async operations must not pretend");

const LockOptions fast{.ttl = 10s, .retry = {.initial_delay = 200us, .max_delay = 2ms}};

// Stops `stop` at the first attempt of an acquire: the attempt is then sent
// with the stop already requested, so its grant races the cancellation.
class StopAtFirstAttempt : public dlock::Observer {
 public:
  explicit StopAtFirstAttempt(std::stop_source s) : stop_(std::move(s)) {}
  void on_event(const dlock::Event& e) noexcept override {
    if (e.type == dlock::EventType::attempt) stop_.request_stop();
  }

 private:
  std::stop_source stop_;
};

}  // namespace

TEST(PrimitivesAsync, TwoHundredCoroutinesOnThreePermitsNeverExceedThree) {
  MemoryPrimitives prims;
  dlock::test::expect_semaphore_bounds_holders(
      prims, "sem", 200, 3, 3, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
}

TEST(PrimitivesAsync, ReadersOverlapAndAWriterOverlapsNothing) {
  MemoryPrimitives prims;
  dlock::test::expect_readers_overlap_writers_exclude(prims, "rw", 30, 3, 5, fast);
}

TEST(PrimitivesAsync, CancellationAtRandomPointsLeavesNothingHeld) {
  MemoryPrimitives prims;
  dlock::test::expect_primitive_cancellation_leaves_nothing(prims, "cancel", 80, 7);
}

TEST(PrimitivesAsync, ExactlyOneCampaignWins) {
  MemoryPrimitives prims;
  dlock::test::expect_one_campaign_wins(prims, "leader", 5);
}

TEST(PrimitivesAsync, AGrantThatRacesTheCancellationIsReleased) {
  MemoryPrimitives prims;
  asio::io_context io;
  for (int kind = 0; kind < 4; ++kind) {
    std::stop_source stop;
    LockOptions o = fast;
    o.observer = std::make_shared<StopAtFirstAttempt>(stop);
    Semaphore<MemoryPrimitives> sem(prims, "race", 1, o);
    RwLock<MemoryPrimitives> rw(prims, "race", o);
    Election<MemoryPrimitives> election(prims, "race", "me", o);
    boost::system::error_code ec;
    bool completed = false;
    auto done = [&](boost::system::error_code e, auto&&...) {
      ec = e;
      completed = true;
    };
    switch (kind) {
      case 0:
        sem.async_acquire(stop.get_token(), asio::bind_executor(io, done));
        break;
      case 1:
        rw.async_lock_shared(stop.get_token(), asio::bind_executor(io, done));
        break;
      case 2:
        rw.async_lock(stop.get_token(), asio::bind_executor(io, done));
        break;
      default:
        election.async_campaign(stop.get_token(), asio::bind_executor(io, done));
        break;
    }
    io.restart();
    io.run_for(1s);
    ASSERT_TRUE(completed) << kind;
    EXPECT_TRUE(dlock::to_std(ec) == dlock::errc::cancelled) << kind << ": " << ec.message();
    EXPECT_EQ(prims.permits_held("race"), 0u);
    EXPECT_FALSE(election.is_leader());
    dlock::test::expect_nothing_held(prims, "race", 1);
  }
}

TEST(PrimitivesAsync, ATimedTryEndsByTheManualClockWithAnEmptyGuardAndNoError) {
  dlock::ManualClock clock;
  MemoryPrimitives prims(clock);
  LockOptions o{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 1ms}, .clock = &clock};
  Semaphore<MemoryPrimitives> holder(prims, "timed", 1, o), waiter(prims, "timed", 1, o);
  ASSERT_TRUE(holder.try_acquire());
  asio::io_context io;
  bool completed = false;
  boost::system::error_code ec;
  Semaphore<MemoryPrimitives>::AsyncPermit got;
  waiter.async_try_acquire_for(5s, asio::bind_executor(io, [&](boost::system::error_code e, auto p) {
                                 ec = e;
                                 got = std::move(p);
                                 completed = true;
                               }));
  io.run_for(50ms);  // real time passes; the manual clock does not
  EXPECT_FALSE(completed) << "the deadline is on the Lock's clock";
  clock.advance(5s);
  io.run_for(200ms);
  ASSERT_TRUE(completed);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_FALSE(got);
  EXPECT_EQ(prims.permits_held("timed"), 1u);  // the holder's only
}

TEST(PrimitivesAsync, AWriterGetsInWhenAReadersLeaseExpiresOnTheManualClock) {
  dlock::ManualClock clock;
  MemoryPrimitives prims(clock);
  LockOptions o{.ttl = 2s, .retry = {.initial_delay = 1ms, .max_delay = 1ms}, .clock = &clock};
  RwLock<MemoryPrimitives> reader(prims, "expiry", o), writer(prims, "expiry", o);
  ASSERT_TRUE(reader.try_lock_shared());  // never released: it expires
  asio::io_context io;
  RwLock<MemoryPrimitives>::async_write_guard got;
  bool completed = false;
  writer.async_lock(asio::bind_executor(io, [&](boost::system::error_code ec, auto g) {
    EXPECT_FALSE(ec) << ec.message();
    got = std::move(g);
    completed = true;
  }));
  io.run_for(50ms);
  EXPECT_FALSE(completed);
  // A new reader is refused meanwhile: the waiting writer has the preference.
  RwLock<MemoryPrimitives> late(prims, "expiry", o);
  EXPECT_FALSE(late.try_lock_shared());
  clock.advance(2s);
  io.run_for(200ms);
  ASSERT_TRUE(completed);
  ASSERT_TRUE(got);
  EXPECT_GT(got.fencing_token(), 0u);
}

TEST(PrimitivesAsync, FutureFormWithTheLoopOnAnotherThread) {
  MemoryPrimitives prims;
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });
  using Permit = Semaphore<MemoryPrimitives>::AsyncPermit;
  Semaphore<MemoryPrimitives> sem(prims, "future", 2, fast);
  // Boost 1.74's use_future has no executor of its own: co_spawn gives it the loop's.
  auto take = [&](std::chrono::milliseconds timeout) {
    return asio::co_spawn(
               io,
               [&sem, timeout]() -> asio::awaitable<Permit> {
                 co_return co_await sem.async_try_acquire_for(timeout, asio::use_awaitable);
               },
               asio::use_future)
        .get();
  };
  Permit p1 = take(10ms), p2 = take(10ms), p3 = take(10ms);
  EXPECT_TRUE(p1);
  EXPECT_TRUE(p2);
  EXPECT_FALSE(p3) << "a third permit of two";
  EXPECT_GT(p2.fencing_token(), p1.fencing_token());
  EXPECT_EQ(asio::co_spawn(io, p1.async_release(asio::use_awaitable), asio::use_future).get(),
            dlock::ReleaseResult::released);
  Election<MemoryPrimitives> election(prims, "future", "me", fast);
  asio::co_spawn(io, election.async_campaign(asio::use_awaitable), asio::use_future).get();
  EXPECT_TRUE(election.is_leader());
  EXPECT_EQ(election.leader()->candidate, "me");
  EXPECT_EQ(asio::co_spawn(io, election.async_resign(asio::use_awaitable), asio::use_future).get(),
            dlock::ReleaseResult::released);
  EXPECT_FALSE(election.leader());
  asio::post(io, [&] { p2 = {}; });  // its destructor starts the release on the loop
  work.reset();
  loop.join();
  EXPECT_EQ(prims.permits_held("future"), 0u);
}

TEST(PrimitivesAsync, AcquireTimeoutArrivesAsAnErrorCode) {
  MemoryPrimitives prims;
  asio::io_context io;
  LockOptions o = fast;
  o.acquire_timeout = 20ms;
  Election<MemoryPrimitives> a(prims, "timeout", "a", o), b(prims, "timeout", "b", o);
  ASSERT_TRUE(a.try_campaign());
  boost::system::error_code ec;
  b.async_campaign(asio::bind_executor(io, [&](boost::system::error_code e) { ec = e; }));
  io.run_for(1s);
  EXPECT_TRUE(dlock::to_std(ec) == dlock::errc::timeout) << ec.message();
  EXPECT_FALSE(b.is_leader());
}

TEST(PrimitivesAsync, BlockingFormsTakeAStopToken) {
  MemoryPrimitives prims;
  RwLock<MemoryPrimitives> writer(prims, "stop", fast), reader(prims, "stop", fast);
  writer.lock();
  std::stop_source stop;
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);  // lets the reader start waiting (its cancellation is the point)
    stop.request_stop();
  });
  EXPECT_THROW(reader.lock_shared(stop.get_token()), dlock::CancelledError);
  t.join();
  std::stop_source stopped;
  stopped.request_stop();
  Semaphore<MemoryPrimitives> sem(prims, "stop", 1, fast);
  EXPECT_THROW(sem.acquire(stopped.get_token()), dlock::CancelledError);
  EXPECT_THROW((void)sem.try_acquire_for(1s, stopped.get_token()), dlock::CancelledError);
  Election<MemoryPrimitives> e(prims, "stop", "me", fast);
  EXPECT_THROW(e.campaign(stopped.get_token()), dlock::CancelledError);
  EXPECT_THROW((void)reader.try_lock_shared_for(1s, stopped.get_token()), dlock::CancelledError);
  writer.unlock();
  dlock::test::expect_nothing_held(prims, "stop", 1);
}
