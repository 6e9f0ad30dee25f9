// The primitives' asynchronous forms on RedisBackend (issues 13 and 16): the
// shared coroutine checks (tests/unit/primitive_async_checks.hpp, also run on
// MemoryPrimitives) on a real server: 200 coroutines on one io_context over a
// semaphore of 3 permits never exceed 3 holders, readers overlap and a writer
// never does, cancellation at random points leaves nothing held on the
// server, exactly one campaign wins; each primitive's exclusive view passes
// the mutex's async checks (support/async_checks.hpp); and the primitives
// refuse fair mode (the mutex's is in redis_fair_async_test).
#include <dlock/dlock.hpp>
#include <dlock/election.hpp>
#include <dlock/redis.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <dlock/detail/redis_primitive_scripts.hpp>

#include <chrono>
#include <stop_token>
#include <string>
#include <type_traits>

#include "redis/redis_test_support.hpp"
#include "support/async_checks.hpp"
#include "support/redis_server.hpp"
#include "unit/primitive_async_checks.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::LockOptions;
using dlock::RedisBackend;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisPrimitivesAsync : public dlock::test::RedisTest {};

TEST_F(RedisPrimitivesAsync, TwoHundredCoroutinesOnThreePermitsNeverExceedThree) {
  dlock::test::expect_semaphore_bounds_holders(
      redis(), "sem", 200, 3, 3, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
}

TEST_F(RedisPrimitivesAsync, ReadersOverlapAndAWriterOverlapsNothing) {
  dlock::test::expect_readers_overlap_writers_exclude(
      redis(), "rw", 30, 3, 5, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 10ms}});
}

TEST_F(RedisPrimitivesAsync, CancellationAtRandomPointsLeavesNothingHeldOnTheServer) {
  dlock::test::expect_primitive_cancellation_leaves_nothing(redis(), "cancel", 80, 11);
}

TEST_F(RedisPrimitivesAsync, ExactlyOneCampaignWins) { dlock::test::expect_one_campaign_wins(redis(), "leader", 5); }

// Each exclusive view (a writer, a one-permit semaphore, a leadership) with
// the mutex's async checks: exact counters and increasing tokens over 50
// coroutines, and a release's PUBLISH waking a waiter with a 30 s backoff.
template <class Ops>
dlock::detail::BackendView<RedisBackend, Ops> view_of(RedisBackend& redis) {
  using View = dlock::detail::BackendView<RedisBackend, Ops>;
  if constexpr (std::is_same_v<Ops, dlock::detail::PermitOps>) {
    return View(redis, Ops{.permits = 1});
  } else if constexpr (std::is_same_v<Ops, dlock::detail::LeaderOps>) {
    return View(redis, Ops{.candidate = "candidate"});
  } else {
    return View(redis);
  }
}

template <class Ops>
void exclusive_view_checks(RedisBackend& redis, const std::string& name) {
  auto view = view_of<Ops>(redis);
  dlock::test::expect_coroutines_exclude_each_other(
      view, name, 50, 4, 2, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
  dlock::test::expect_release_wakes_a_long_backoff_waiter(view, name + "-woken");
  dlock::test::expect_extend_and_release_complete(view, name + "-ext");
}

TEST_F(RedisPrimitivesAsync, EachExclusiveViewPassesTheMutexAsyncChecks) {
  exclusive_view_checks<dlock::detail::ExclusiveOps>(redis(), "writer");
  exclusive_view_checks<dlock::detail::PermitOps>(redis(), "permit");
  exclusive_view_checks<dlock::detail::LeaderOps>(redis(), "leader");
}

TEST_F(RedisPrimitivesAsync, CancellingAWaitingReaderLeavesNoReaderOnTheServer) {
  dlock::RwLock<RedisBackend> writer(redis(), "held", LockOptions{.ttl = 10s});
  writer.lock();
  dlock::RwLock<RedisBackend> reader(redis(), "held",
                                     LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 5ms}});
  asio::io_context io;
  std::stop_source stop;
  boost::system::error_code ec;
  bool completed = false;
  reader.async_lock_shared(stop.get_token(), asio::bind_executor(io, [&](boost::system::error_code e, auto g) {
                             ec = e;
                             completed = true;
                             EXPECT_FALSE(g);
                           }));
  asio::steady_timer cancel(io, 50ms);
  cancel.async_wait([&](const boost::system::error_code&) { stop.request_stop(); });
  io.run_for(2s);
  ASSERT_TRUE(completed);
  EXPECT_TRUE(dlock::to_std(ec) == dlock::errc::cancelled) << ec.message();
  writer.unlock();
  const auto k = dlock::detail::redis_primitive_keys(options().key_prefix, "held");
  EXPECT_EQ(redis().node().command({"ZCARD", k.rw_readers}).integer, 0);
  dlock::test::expect_nothing_held(redis(), "held", 1);
}

TEST_F(RedisPrimitivesAsync, ThePrimitivesRefuseFairModeWhenBuilt) {
  // The mutex's fair mode has an asynchronous acquire (redis_fair_async_test).
  // The primitives on Redis have no fair mode at all: refused when built.
  EXPECT_THROW(dlock::Semaphore<RedisBackend>(redis(), "fair", 2, LockOptions{.fair = true}), dlock::InvalidArgument);
}

}  // namespace
