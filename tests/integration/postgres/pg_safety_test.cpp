// PostgresBackend against a real server: the issue-11 regressions. A server-side
// statement_timeout must not cut the queue wait (18); a server that does not
// answer is "unreachable" (ConnectionError), so a FallbackBackend degrades (19);
// "forever" TTLs and timeouts are clamped to what libpq and PostgreSQL accept (5);
// a forked child never touches the parent's sessions (2); no message or endpoint
// quotes a password (13).
#include <dlock/dlock.hpp>
#include <dlock/postgres.hpp>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "postgres/pg_test_support.hpp"
#include "support/postgres_server.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::PostgresBackend;
using dlock::PostgresOptions;
using namespace dlock::test::pg;  // conninfo(), options(), test_name(), since(), RawConn ...
using PgLock = Lock<PostgresBackend>;

// How many sessions hold `key` granted in the test database (seen from another connection).
std::string holders_of(RawConn& raw, std::int64_t key) {
  return raw.exec(
      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
      "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
      {std::to_string(key)});
}

using dlock::test::BlackHole;

// ---- 18: a server-side statement_timeout does not turn the queue wait into polling ----

class ServerStatementTimeout : public ::testing::TestWithParam<PostgresOptions::Scope> {
 protected:
  // A database whose sessions default to statement_timeout = 200ms (ALTER DATABASE ... SET).
  static std::string short_timeout_conninfo() {
    static const std::string info = [] {
      const std::string db = "dlock_st_" + std::to_string(::getpid());
      RawConn admin(conninfo());
      admin.exec("CREATE DATABASE " + db);
      admin.exec("ALTER DATABASE " + db + " SET statement_timeout = '200ms'");
      return conninfo() + " dbname=" + db;  // the later dbname wins
    }();
    return info;
  }
};

TEST_P(ServerStatementTimeout, AWaitLongerThanItIsOneAttemptWithoutErrorsOrReconnects) {
  RawConn probe(short_timeout_conninfo());
  ASSERT_EQ(probe.exec("SHOW statement_timeout"), "200ms");  // the server's default for this database
  PostgresBackend pg(options({.conninfo = short_timeout_conninfo(), .scope = GetParam()}));
  PgLock holder(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  std::atomic<bool> acquired{false};
  std::thread waiter([&] {
    PgLock w(pg, test_name(), {.ttl = 10s, .observer = obs});
    acquired = w.try_lock_for(2s);
    if (acquired) w.unlock();
  });
  ASSERT_TRUE(dlock::test::eventually([&] { return has_waiter(probe, pg.advisory_key(test_name())); }, 5s));
  // Queued: now past the server's statement_timeout (a server timer: waiting it out is the point).
  std::this_thread::sleep_for(600ms);
  holder.unlock();
  waiter.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_EQ(obs->count(dlock::EventType::acquire_failed), 0u);
  for (const auto& e : obs->events())
    if (e.type == dlock::EventType::acquire_failed) ADD_FAILURE() << e.message;
  EXPECT_EQ(obs->count(dlock::EventType::attempt), 1u);
  EXPECT_EQ(pg.pool_stats().open, 2u);  // holder's and waiter's connections; no reconnect
}

INSTANTIATE_TEST_SUITE_P(Scopes, ServerStatementTimeout,
                         ::testing::Values(PostgresOptions::Scope::session, PostgresOptions::Scope::transaction),
                         [](const auto& p) {
                           return p.param == PostgresOptions::Scope::session ? "session" : "transaction";
                         });

// ---- 19: a primary that does not answer is unreachable, so the fallback degrades ----

TEST(PgUnreachable, ConnectTimeoutIsAConnectionError) {
  BlackHole hole;
  PostgresBackend pg(PostgresOptions{
      .conninfo = "host=127.0.0.1 port=" + std::to_string(hole.port()) + " dbname=x user=x", .connect_timeout = 300ms});
  PgLock lock(pg, test_name(), {.ttl = 10s});
  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)lock.try_lock();
    ADD_FAILURE() << "no error";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_EQ(e.code(), dlock::errc::connection);
    EXPECT_NE(std::string(e.what()).find("connect_timeout 300ms"), std::string::npos) << e.what();
  }
  EXPECT_LT(since(t0), 1500ms);
}

TEST(PgUnreachable, FallbackDegradesWithinTheConnectTimeout) {
  BlackHole hole;
  PostgresBackend primary(PostgresOptions{
      .conninfo = "host=127.0.0.1 port=" + std::to_string(hole.port()) + " dbname=x user=x", .connect_timeout = 300ms});
  dlock::MemoryBackend local;
  dlock::FallbackBackend<PostgresBackend, dlock::MemoryBackend> degrade(primary, local);
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<decltype(degrade)> a(degrade, test_name(), {.ttl = 10s, .observer = obs});
  Lock<decltype(degrade)> b(degrade, test_name(), {.ttl = 10s, .observer = obs});
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(a.try_lock());
  EXPECT_LT(since(t0), 1500ms);
  EXPECT_FALSE(b.try_lock());  // the fallback still excludes within this process
  EXPECT_EQ(obs->count(dlock::EventType::degraded), 1u);
  EXPECT_EQ(obs->count(dlock::EventType::acquire_failed), 0u);
  a.unlock();
}

// ---- 13: connection failures quote no part of a password ----

TEST(PgSecrets, ConnectFailuresAndEventsQuoteNoPartOfThePassword) {
  const std::string pw = "Zq9@x/K7?wLm";
  const int closed = dlock::test::pg::free_port();
  const std::string server = PostgresServer::shared().conninfo();
  const std::vector<std::string> conninfos = {
      "host=127.0.0.1 port=" + std::to_string(closed) + " dbname=appdb user=app password=" + pw,
      "postgresql://app:Zq9%40x%2FK7%3FwLm@127.0.0.1:" + std::to_string(closed) + "/appdb",
      server + " dbname=no_such_db_Zq9 password=" + pw,  // the server answers: FATAL database "..." does not exist
  };
  for (const auto& info : conninfos) {
    PostgresBackend pg(PostgresOptions{.conninfo = info, .connect_timeout = 2s});
    auto obs = std::make_shared<dlock::test::RecordingObserver>();
    PgLock lock(pg, test_name(), {.ttl = 10s, .observer = obs});
    std::string what;
    try {
      (void)lock.try_lock();
    } catch (const dlock::Error& e) {
      what = e.what();
    }
    EXPECT_FALSE(what.empty()) << info;
    EXPECT_NE(what.find(std::string(pg.endpoint())), std::string::npos) << what;
    for (const std::string_view part : {"Zq9@", "x/K7", "K7?w", "?wLm", "Zq9%40"})
      EXPECT_EQ(what.find(part), std::string::npos) << what;
    for (const auto& e : obs->events())
      for (const std::string_view part : {"Zq9@", "x/K7", "K7?w", "?wLm"})
        EXPECT_EQ(e.message.find(part), std::string::npos) << e.message;
  }
}

// ---- 5: "forever" durations are clamped, never overflowed or rejected by the server ----

TEST(PgForever, AYearLongTtlIsHeldExtendedAndReleased) {
  const auto year = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::hours(24 * 365));
  for (const auto scope : {PostgresOptions::Scope::session, PostgresOptions::Scope::transaction}) {
    PostgresBackend b(options({.scope = scope}));
    PgLock lock(b, test_name(), {.ttl = year});
    ASSERT_TRUE(lock.try_lock());
    EXPECT_TRUE(lock.owns_lock());
    EXPECT_GE(lock.valid_until(), std::chrono::steady_clock::now() + year - 1min);
    lock.extend(year);
    EXPECT_TRUE(lock.owns_lock());
    RawConn raw(conninfo());
    EXPECT_EQ(holders_of(raw, b.advisory_key(test_name())), "1");
    EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
    EXPECT_TRUE(lock.try_lock_for(1s));  // the waiting statement takes the same ttl
    lock.unlock();
  }
}

TEST(PgForever, MaximalTtlAndWaitSaturateInTheBackend) {
  PostgresBackend pg(options());
  const auto forever = std::chrono::milliseconds::max();
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  const auto now = std::chrono::steady_clock::now();
  const std::string name = test_name();
  const dlock::AcquireRequest request{name, owner, forever, now};
  auto result = pg.try_acquire(request);
  auto* grant = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&result);
  ASSERT_NE(grant, nullptr);
  EXPECT_EQ(grant->valid_until, dlock::TimePoint::max());  // saturated, not wrapped into the past
  dlock::Lease<dlock::PgLockHandle> lease{owner, grant->token, now, grant->valid_until, std::move(grant->handle)};
  EXPECT_EQ(pg.extend(name, lease, forever, now), dlock::TimePoint::max());
  EXPECT_EQ(pg.release(name, lease), dlock::ReleaseResult::released);
  auto waited = pg.acquire_wait(request, forever);  // lock_timeout clamped; free, so granted at once
  auto* g2 = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&waited);
  ASSERT_NE(g2, nullptr);
  dlock::Lease<dlock::PgLockHandle> lease2{owner, g2->token, now, g2->valid_until, std::move(g2->handle)};
  EXPECT_EQ(pg.release(name, lease2), dlock::ReleaseResult::released);
}

TEST(PgForever, HugeClientTimeoutsStillConnect) {
  // connect_timeout/statement_timeout feed the client's TCP keepalives and
  // tcp_user_timeout, and every deadline: all clamped.
  for (const auto t : {std::chrono::milliseconds(std::chrono::hours(24 * 365)), std::chrono::milliseconds::max()}) {
    PostgresBackend pg(options({.connect_timeout = t, .statement_timeout = t}));
    PgLock lock(pg, test_name(), {.ttl = 10s});
    ASSERT_TRUE(lock.try_lock()) << t.count();
    lock.unlock();
    ASSERT_TRUE(lock.try_lock_for(1s)) << t.count();
    lock.unlock();
  }
}

// ---- 2: a forked child never uses or closes the parent's sessions ----

// With shared_sessions, the child's acquire meets the inherited shared session
// (one slot: every key maps to it) and must replace it without a word.
void child_using_the_backend_leaves_the_parents_lock_held(std::size_t shared_sessions) {
  PostgresBackend pg(options({.pool_size = 4, .shared_sessions = shared_sessions}));
  const std::string name = test_name();
  auto holder = std::make_unique<PgLock>(pg, name, dlock::LockOptions{.ttl = 30s});
  ASSERT_TRUE(holder->try_lock());
  {
    PgLock warm(pg, name + "-warm", {.ttl = 10s});  // leaves an idle pooled connection behind
    ASSERT_TRUE(warm.try_lock());
    warm.unlock();
  }
  if (shared_sessions > 0) (void)pg.monitor();  // the locks used the shared session: leave an idle one too
  ASSERT_EQ(pg.pool_stats().idle, 1u);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int rc = 0;
    try {
      auto quiet = std::make_shared<dlock::test::RecordingObserver>();
      PgLock other(pg, name + "-child", {.ttl = 10s, .observer = quiet});
      if (!other.try_lock()) rc = 2;
      other.unlock();
      // The child drops what it inherited, as a child that returns from main would.
      holder.reset();
    } catch (...) {
      rc = 3;
    }
    ::_exit(rc);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  RawConn raw(conninfo());
  EXPECT_EQ(holders_of(raw, pg.advisory_key(name)), "1");  // still held by the parent's session
  EXPECT_NO_THROW(holder->extend());
  EXPECT_TRUE(holder->owns_lock());
  EXPECT_NO_THROW((void)pg.monitor());  // the parent's idle pooled connection still works
  EXPECT_EQ(holder->release(), dlock::ReleaseResult::released);
  EXPECT_EQ(holders_of(raw, pg.advisory_key(name)), "0");
}

TEST(PgFork, ChildUsingTheBackendLeavesTheParentsLockHeld) { child_using_the_backend_leaves_the_parents_lock_held(0); }

TEST(PgFork, ChildUsingASharedSessionBackendLeavesTheParentsLockHeld) {
  child_using_the_backend_leaves_the_parents_lock_held(1);
}

}  // namespace
