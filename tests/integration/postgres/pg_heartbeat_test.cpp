// Auto-extend and lost-lock signalling against a real PostgreSQL server: a
// long hold stays exclusive, and terminating the holder's pinned session
// (pg_terminate_backend) is signalled to the holder by the heartbeat.
#include <dlock/dlock.hpp>
#include <dlock/postgres.hpp>

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "support/postgres_server.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::LostEvent;
using dlock::LostReason;
using dlock::PostgresBackend;
using dlock::PostgresOptions;
using dlock::test::pg::PostgresServer;
using dlock::test::pg::RawConn;
using SteadyClock = std::chrono::steady_clock;
using dlock::test::eventually;

PostgresOptions options() {
  PostgresOptions o;
  o.conninfo = PostgresServer::shared().conninfo();
  o.lock_namespace = "dlock-hb-test-" + std::to_string(::getpid());
  return o;
}
std::string test_name() { return ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

}  // namespace

TEST(PostgresHeartbeat, HoldOfFiveTtlsStaysExclusive) {
  PostgresBackend pg(options());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<PostgresBackend> holder(pg, test_name(), {.ttl = 400ms, .auto_extend = true, .observer = obs});
  PostgresBackend other_client(options());
  Lock<PostgresBackend> other(other_client, test_name());
  auto g = holder.acquire();
  const auto end = SteadyClock::now() + 2s;  // 5 x ttl
  while (SteadyClock::now() < end) {
    EXPECT_FALSE(other.try_lock());
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(g.owns_lock());
  EXPECT_FALSE(g.stop_token().stop_requested());
  EXPECT_GE(obs->count(dlock::EventType::extended), 10u);
  EXPECT_EQ(obs->count(dlock::EventType::lost), 0u);
  g.unlock();
  EXPECT_TRUE(other.try_lock());
}

TEST(PostgresHeartbeat, TerminatedSessionIsSignalledAsLost) {
  PostgresBackend pg(options());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<PostgresBackend> holder(pg, test_name(),
                               {.ttl = 3s, .auto_extend = true, .extend_interval = 300ms, .observer = obs});
  auto g = holder.acquire();
  std::atomic<int> calls{0};
  std::atomic<int> reason{-1};
  g.on_lost([&](const LostEvent& e) {
    reason = static_cast<int>(e.reason);
    ++calls;
  });
  const auto token = g.stop_token();

  RawConn admin(PostgresServer::shared().conninfo());
  ASSERT_EQ(admin.exec("SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND granted AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1::int8",
                       {std::to_string(pg.advisory_key(test_name()))}),
            "t");
  const auto terminated_at = SteadyClock::now();
  ASSERT_TRUE(eventually([&] { return token.stop_requested(); }, 3s));
  EXPECT_LT(SteadyClock::now() - terminated_at, 300ms + 700ms);  // the next extension notices
  ASSERT_TRUE(eventually([&] { return calls.load() == 1; }, 1s));
  EXPECT_EQ(reason.load(), static_cast<int>(LostReason::connection));
  EXPECT_FALSE(g.owns_lock());
  EXPECT_EQ(obs->count(dlock::EventType::lost), 1u);

  Lock<PostgresBackend> other(pg, test_name());
  EXPECT_TRUE(other.try_lock());  // the server freed it with the session
}
