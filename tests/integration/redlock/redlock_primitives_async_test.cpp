// The asynchronous forms of RwLock<RedlockBackend> and
// Election<RedlockBackend> on five real redis-servers: the shared coroutine
// checks (tests/unit/primitive_async_checks.hpp, as on Redis): readers
// overlap and a writer never does, exactly one campaign wins, the writer's
// and the leader's views pass the mutex's async checks
// (support/async_checks.hpp), and a cancelled waiting reader leaves nothing.
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/election.hpp>
#include <dlock/redlock.hpp>
#include <dlock/rw_lock.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <type_traits>

#include "redlock_test_support.hpp"
#include "support/async_checks.hpp"
#include "unit/primitive_async_checks.hpp"

using namespace std::chrono_literals;
using dlock::RedlockBackend;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

class RedlockPrimitivesAsync : public RedlockTest {
 protected:
  static dlock::LockOptions quick() { return {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 10ms}}; }
  // The default node_timeout (50 ms) is tight on a loaded 2-core machine.
  [[nodiscard]] dlock::RedlockOptions roomy() const {
    auto o = options();
    o.node_timeout = 250ms;
    return o;
  }
  [[nodiscard]] dlock::detail::RedisPrimitiveKeys pk(std::string_view name) const {
    return dlock::detail::redis_primitive_keys(prefix_, name);
  }
};

TEST_F(RedlockPrimitivesAsync, ReadersOverlapAndAWriterOverlapsNothing) {
  RedlockBackend rl(roomy());
  dlock::test::expect_readers_overlap_writers_exclude(
      rl, "arw", 20, 3, 4, dlock::LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 10ms}});
}

TEST_F(RedlockPrimitivesAsync, ExactlyOneCampaignWins) {
  RedlockBackend rl(roomy());
  dlock::test::expect_one_campaign_wins(rl, "aleader", 5);
}

// The writer's and the leader's views pass the mutex's async checks: exact
// counters and increasing tokens over 20 coroutines, a release waking a
// waiter with a 30 s backoff, extend and release completing on the executor.
template <class Ops>
void exclusive_view_checks(RedlockBackend& rl, const std::string& name) {
  using View = dlock::detail::BackendView<RedlockBackend, Ops>;
  View view = [&] {
    if constexpr (std::is_same_v<Ops, dlock::detail::LeaderOps>) {
      return View(rl, Ops{.candidate = "candidate"});
    } else {
      return View(rl);
    }
  }();
  dlock::test::expect_coroutines_exclude_each_other(
      view, name, 20, 3, 2, dlock::LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
  dlock::test::expect_release_wakes_a_long_backoff_waiter(view, name + "-woken");
  dlock::test::expect_extend_and_release_complete(view, name + "-ext");
}

TEST_F(RedlockPrimitivesAsync, WriterAndLeaderPassTheMutexAsyncChecks) {
  RedlockBackend rl(roomy());
  exclusive_view_checks<dlock::detail::ExclusiveOps>(rl, "awriter");
  exclusive_view_checks<dlock::detail::LeaderOps>(rl, "aleader");
}

TEST_F(RedlockPrimitivesAsync, CancellingAWaitingReaderLeavesNoReaderOnTheNodes) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> writer(rl, "aheld", quick());
  writer.lock();
  dlock::RwLock<RedlockBackend> reader(rl, "aheld", quick());
  boost::asio::io_context io;
  std::stop_source stop;
  boost::system::error_code ec;
  bool completed = false;
  reader.async_lock_shared(stop.get_token(), boost::asio::bind_executor(io, [&](boost::system::error_code e, auto g) {
                             ec = e;
                             completed = true;
                             EXPECT_FALSE(g);
                           }));
  boost::asio::steady_timer cancel(io, 50ms);
  cancel.async_wait([&](const boost::system::error_code&) { stop.request_stop(); });
  io.run_for(2s);
  ASSERT_TRUE(completed);
  EXPECT_TRUE(dlock::to_std(ec) == dlock::errc::cancelled) << ec.message();
  writer.unlock();
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(cmd(i, {"ZCARD", pk("aheld").rw_readers}).integer, 0);
  EXPECT_TRUE(reader.try_lock());
  reader.unlock();
}

}  // namespace
