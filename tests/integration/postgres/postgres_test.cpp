// PostgresBackend against a real PostgreSQL server (started once for this
// executable by support/postgres_server.hpp, or DLOCK_TEST_PG).
#include <dlock/postgres.hpp>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <stop_token>
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

bool raw_try(RawConn& c, std::int64_t key) {
  return c.exec("SELECT pg_try_advisory_lock($1::int8)", {std::to_string(key)}) == "t";
}
void raw_unlock(RawConn& c, std::int64_t key) {
  ASSERT_EQ(c.exec("SELECT pg_advisory_unlock($1::int8)", {std::to_string(key)}), "t");
}

// ---- basics ----

TEST(Postgres, TryLockExcludesAndReleaseFrees) {
  PostgresBackend pg(options());
  PgLock a(pg, test_name(), {.ttl = 10s});
  PgLock b(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(a.try_lock());
  EXPECT_TRUE(a.owns_lock());
  EXPECT_FALSE(b.try_lock());
  EXPECT_EQ(a.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(a.release(), dlock::ReleaseResult::not_held);  // idempotent
  EXPECT_TRUE(b.try_lock());
  b.unlock();
  const auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle);  // nothing pinned or leaked
  EXPECT_GE(stats.open, 1u);
}

TEST(Postgres, ValidUntilIsStartedPlusTtlAndExtendKeepsTheSession) {
  PostgresBackend pg(options());
  PgLock a(pg, test_name(), {.ttl = 5s});
  const auto before = std::chrono::steady_clock::now();
  ASSERT_TRUE(a.try_lock());
  EXPECT_GE(a.valid_until(), before + 5s);
  EXPECT_LE(a.valid_until(), std::chrono::steady_clock::now() + 5s);
  a.extend(8s);
  EXPECT_GE(a.valid_until(), std::chrono::steady_clock::now() + 7s);
  // The pinned session carries the server-side timeouts derived from the ttl.
  RawConn raw(conninfo());
  const auto key = pg.advisory_key(test_name());
  EXPECT_FALSE(raw_try(raw, key));
  a.unlock();
  EXPECT_TRUE(raw_try(raw, key));
  raw_unlock(raw, key);
}

TEST(Postgres, ReleaseResetsTheIdleTimeoutOfThePooledSession) {
  // ttl 1 s sets idle_session_timeout = 1s on the pinned session; release must
  // reset it, or the server would close the pooled connection while idle.
  PostgresBackend pg(options({.pool_size = 1}));
  PostgresBackend observer(options({.pool_size = 1}));
  PgLock a(pg, test_name(), {.ttl = 1s});
  const auto key = pg.advisory_key(test_name());
  const auto holder_pid = [&] {
    for (const auto& row : observer.monitor())
      if (row.key == key && row.granted) return row.pid;
    return 0;
  };
  ASSERT_TRUE(a.try_lock());
  const int pid1 = holder_pid();
  a.unlock();
  std::this_thread::sleep_for(1500ms);  // past the 1 s idle_session_timeout (a server timer: waiting is the point)
  ASSERT_TRUE(a.try_lock());
  const int pid2 = holder_pid();
  a.unlock();
  ASSERT_NE(pid1, 0);
  EXPECT_EQ(pid1, pid2);  // the same server session survived 1.5 s idle in the pool
}

TEST(Postgres, ApplicationNameIsSetOnLockConnections) {
  PostgresBackend pg(options({.application_name = "dlock-appname-test"}));
  PgLock a(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(a.try_lock());
  RawConn raw(conninfo());
  const auto key = pg.advisory_key(test_name());
  EXPECT_EQ(raw.exec("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                     "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
                     "AND ((l.classid::int8 << 32) | l.objid::int8) = $1::int8",
                     {std::to_string(key)}),
            "dlock-appname-test");
  a.unlock();
}

// ---- interop with code that calls the advisory functions itself ----

TEST(Postgres, InteropWithRawAdvisoryLockOnTheSameKey) {
  PostgresBackend pg(options());
  PgLock lock(pg, test_name(), {.ttl = 10s});
  const std::int64_t key = pg.advisory_key(test_name());
  EXPECT_EQ(key, dlock::detail::pg_hash_key(run_namespace(), test_name()));
  RawConn raw(conninfo());
  raw.exec("SELECT pg_advisory_lock($1::int8)", {std::to_string(key)});
  EXPECT_FALSE(lock.try_lock());  // the raw session holds it
  raw_unlock(raw, key);
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(raw_try(raw, key));  // dlock holds it
  lock.unlock();
  EXPECT_TRUE(raw_try(raw, key));
  raw_unlock(raw, key);
}

TEST(Postgres, ExplicitKeysInteropWithoutNamespaceOrHash) {
  PostgresBackend pg(options());
  const std::int64_t key = -4242424242LL - (::getpid() % 1000);  // negative: exercises the high half of the key
  auto lock = pg.lock_for_key(key, {.ttl = 10s});
  EXPECT_EQ(lock.name(), "pg_advisory:" + std::to_string(key));
  EXPECT_EQ(pg.advisory_key(lock.name()), key);
  RawConn raw(conninfo());
  ASSERT_TRUE(raw_try(raw, key));
  EXPECT_FALSE(lock.try_lock());
  raw_unlock(raw, key);
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(raw_try(raw, key));
  // monitor() reassembles the negative bigint from classid/objid.
  bool seen = false;
  for (const auto& row : pg.monitor()) seen |= row.key == key && row.granted;
  EXPECT_TRUE(seen);
  lock.unlock();
  EXPECT_TRUE(raw_try(raw, key));
  raw_unlock(raw, key);
}

TEST(Postgres, MalformedExplicitKeyNameIsInvalidArgument) {
  PostgresBackend pg(options());
  PgLock lock(pg, "pg_advisory:007", {.ttl = 10s});
  EXPECT_THROW((void)lock.try_lock(), dlock::InvalidArgument);
}

// ---- waiting on the server ----

TEST(Postgres, TryLockForHonoursItsDeadlineAndTheConnectionIsReused) {
  PostgresBackend pg(options());
  PgLock holder(pg, test_name(), {.ttl = 10s});
  PgLock waiter(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(waiter.try_lock_for(400ms));
  const auto waited = since(t0);
  EXPECT_GE(waited, 390ms);
  EXPECT_LT(waited, 1500ms);
  // The waiting connection went back to the pool: only the holder's is pinned.
  auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle + 1);
  holder.unlock();
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_TRUE(waiter.try_lock_for(2s));
  EXPECT_LT(since(t1), 500ms);
  waiter.unlock();
  stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle);
}

TEST(Postgres, BlockingLockIsHandedOverByTheServerQueueWithoutPolling) {
  PostgresBackend pg(options());
  PgLock holder(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  std::atomic<std::int64_t> acquired_at{0};
  std::thread t([&] {
    PgLock waiter(pg, test_name(), {.ttl = 10s, .acquire_timeout = 10s, .observer = obs});
    waiter.lock();
    acquired_at = std::chrono::steady_clock::now().time_since_epoch().count();
    waiter.unlock();
  });
  RawConn probe(conninfo());
  ASSERT_TRUE(dlock::test::eventually([&] { return has_waiter(probe, pg.advisory_key(test_name())); }, 5s));
  // Queued on the server. A hold much longer than a polling waiter's backoff (not synchronisation).
  std::this_thread::sleep_for(1s);
  const auto released = std::chrono::steady_clock::now();
  holder.unlock();
  t.join();
  const auto handoff =
      std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(acquired_at.load())) - released;
  EXPECT_LT(handoff, 200ms);
  // One attempt waited in the server's queue for the whole hold (the slice is 5 s).
  EXPECT_EQ(obs->count(dlock::EventType::attempt), 1u);
}

// A stop request ends an acquire queued in the server: the server-side wait
// is cut short by its 250 ms slice (lock_timeout), nothing is left queued or
// held on the server, and the waiting session goes back to the pool, reusable
// (or, had the wait failed, is dropped): no connection leaks.
TEST(Postgres, AStopRequestEndsAServerSideWaitAndTheSessionIsReusable) {
  PostgresBackend pg(options());
  PgLock holder(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  PgLock waiter(pg, test_name(), {.ttl = 10s, .observer = obs});
  std::stop_source stop;
  std::atomic<bool> cancelled{false};
  std::thread t([&] {
    try {
      (void)waiter.try_lock_for(30s, stop.get_token());
    } catch (const dlock::CancelledError&) {
      cancelled = true;
    }
  });
  RawConn probe(conninfo());
  const std::int64_t key = pg.advisory_key(test_name());
  ASSERT_TRUE(dlock::test::eventually([&] { return has_waiter(probe, key); }, 5s));
  const auto requested = std::chrono::steady_clock::now();
  stop.request_stop();
  t.join();
  EXPECT_TRUE(cancelled.load());
  EXPECT_LT(since(requested), 1s);
  EXPECT_FALSE(waiter.owns_lock());
  EXPECT_FALSE(has_waiter(probe, key)) << "the cancelled wait is still queued on the server";
  auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle + 1) << "only the holder's connection is pinned";
  EXPECT_GE(stats.idle, 1u);
  holder.unlock();
  PgLock third(pg, test_name(), {.ttl = 10s});
  EXPECT_TRUE(third.try_lock()) << "the cancelled acquire left the lock held";
  third.unlock();
  stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle);
}

// ---- transaction scope ----

TEST(Postgres, TransactionScopeLockHoldsUntilCommit) {
  PostgresBackend pg(options({.scope = PostgresOptions::Scope::transaction}));
  PgLock lock(pg, test_name(), {.ttl = 10s});
  PgLock other(pg, test_name(), {.ttl = 10s});
  const auto key = pg.advisory_key(test_name());
  RawConn raw(conninfo());
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(raw_try(raw, key));  // xact and session advisory locks on one key exclude each other
  EXPECT_FALSE(other.try_lock());
  EXPECT_FALSE(other.try_lock_for(300ms));
  lock.extend(10s);
  // The holder's connection is idle in a transaction.
  EXPECT_EQ(raw.exec("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND "
                     "application_name = 'dlock' AND datname = current_database()"),
            "1");
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  EXPECT_TRUE(raw_try(raw, key));
  raw_unlock(raw, key);
  const auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle);
}

TEST(Postgres, CallerTransactionLockIsReleasedByRollback) {
  RawConn mine(conninfo());
  RawConn other(conninfo());
  const std::int64_t key = dlock::detail::pg_hash_key(run_namespace(), test_name());
  EXPECT_THROW((void)dlock::pg_try_xact_lock(mine.get(), key), dlock::InvalidArgument);  // no BEGIN
  mine.exec("BEGIN");
  EXPECT_TRUE(dlock::pg_try_xact_lock(mine.get(), key));
  EXPECT_FALSE(raw_try(other, key));
  mine.exec("ROLLBACK");
  EXPECT_TRUE(raw_try(other, key));
  raw_unlock(other, key);

  mine.exec("BEGIN");
  EXPECT_TRUE(dlock::pg_xact_lock(mine.get(), key, 1s));
  mine.exec("COMMIT");
  EXPECT_TRUE(raw_try(other, key));  // COMMIT released it too
  raw_unlock(other, key);
}

TEST(Postgres, CallerTransactionWaitTimesOutAndTheTransactionStaysUsable) {
  RawConn mine(conninfo());
  RawConn holder(conninfo());
  const std::int64_t key = dlock::detail::pg_hash_key(run_namespace(), test_name());
  ASSERT_TRUE(raw_try(holder, key));
  mine.exec("BEGIN");
  mine.exec("SET LOCAL lock_timeout = '7s'");
  mine.exec("CREATE TEMP TABLE t_usable (x int) ON COMMIT DROP");
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(dlock::pg_xact_lock(mine.get(), key, 300ms));
  EXPECT_GE(since(t0), 290ms);
  EXPECT_LT(since(t0), 2s);
  EXPECT_EQ(mine.exec("SHOW lock_timeout"), "7s");  // restored
  mine.exec("INSERT INTO t_usable VALUES (1)");     // not aborted
  raw_unlock(holder, key);
  EXPECT_TRUE(dlock::pg_xact_lock(mine.get(), key, 1s));
  EXPECT_EQ(mine.exec("SHOW lock_timeout"), "7s");
  mine.exec("COMMIT");
}

TEST(Postgres, OppositeOrderInTransactionsGivesOneDeadlockError) {
  RawConn a(conninfo());
  RawConn b(conninfo());
  const std::int64_t k1 = dlock::detail::pg_hash_key(run_namespace(), test_name() + "-1");
  const std::int64_t k2 = dlock::detail::pg_hash_key(run_namespace(), test_name() + "-2");
  a.exec("BEGIN");
  b.exec("BEGIN");
  ASSERT_TRUE(dlock::pg_try_xact_lock(a.get(), k1));
  ASSERT_TRUE(dlock::pg_try_xact_lock(b.get(), k2));
  std::atomic<int> deadlocks{0}, acquired{0};
  auto take = [&](RawConn& c, std::int64_t key) {
    try {
      if (dlock::pg_xact_lock(c.get(), key, 10s)) ++acquired;
      c.exec("COMMIT");
    } catch (const dlock::DeadlockError& e) {
      EXPECT_EQ(e.code(), dlock::errc::deadlock);
      ++deadlocks;
      c.exec("ROLLBACK");  // frees what it held, so the other proceeds
    }
  };
  std::thread ta([&] { take(a, k2); });
  std::thread tb([&] { take(b, k1); });
  ta.join();
  tb.join();
  EXPECT_EQ(deadlocks.load(), 1);
  EXPECT_EQ(acquired.load(), 1);
}

// ---- losing the session ----

TEST(Postgres, TerminatedHolderIsToldTheLockIsLost) {
  PostgresBackend pg(options());
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  PgLock holder(pg, test_name(), {.ttl = 10s, .observer = obs});
  PgLock other(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  const auto key = pg.advisory_key(test_name());
  int pid = 0;
  for (const auto& row : pg.monitor())
    if (row.key == key && row.granted) pid = row.pid;
  ASSERT_NE(pid, 0);
  RawConn admin(conninfo());
  ASSERT_EQ(admin.exec("SELECT pg_terminate_backend($1::int, 5000)", {std::to_string(pid)}), "t");
  EXPECT_THROW(holder.extend(), dlock::LockLostError);
  EXPECT_FALSE(holder.owns_lock());
  EXPECT_EQ(obs->count(dlock::EventType::lost), 1u);
  EXPECT_TRUE(other.try_lock());
  other.unlock();
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::not_held);
}

TEST(Postgres, ReleaseAfterTerminationReportsNotHeld) {
  PostgresBackend pg(options());
  PgLock holder(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  RawConn admin(conninfo());
  ASSERT_EQ(admin.exec("SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1::int8",
                       {std::to_string(pg.advisory_key(test_name()))}),
            "t");
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::not_held);
  const auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open, stats.idle);  // the dead connection was closed, not pooled
}

// ---- monitoring ----

TEST(Postgres, MonitorShowsHolderAndWaiter) {
  PostgresBackend pg(options());
  PgLock holder(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  const auto key = pg.advisory_key(test_name());
  std::thread t([&] {
    PgLock waiter(pg, test_name(), {.ttl = 10s});
    EXPECT_TRUE(waiter.try_lock_for(10s));
    waiter.unlock();
  });
  std::vector<dlock::PgAdvisoryLockInfo> rows;
  (void)dlock::test::eventually(
      [&] {
        rows.clear();
        for (auto& r : pg.monitor())
          if (r.key == key) rows.push_back(r);
        return rows.size() == 2;
      },
      2s);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[0].granted);  // holders first
  EXPECT_FALSE(rows[1].granted);
  EXPECT_NE(rows[0].pid, rows[1].pid);
  for (const auto& r : rows) {
    EXPECT_EQ(r.application_name, "dlock");
    EXPECT_EQ(r.client_addr, "127.0.0.1");
  }
  EXPECT_FALSE(rows[0].wait_start.has_value());
  ASSERT_TRUE(rows[1].wait_start.has_value());
  EXPECT_LT(std::chrono::system_clock::now() - *rows[1].wait_start, 10s);
  EXPECT_EQ(rows[0].state, "idle");
  EXPECT_EQ(rows[1].state, "active");
  holder.unlock();
  t.join();
}

// ---- fencing ----

TEST(Postgres, WithoutTheSchemaThereIsNoFencingToken) {
  PostgresBackend pg(options({.fencing_sequence = "dlock_absent_" + std::to_string(::getpid()) + ".fencing"}));
  EXPECT_FALSE(pg.has_fencing());
  PgLock lock(pg, test_name(), {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  try {
    (void)lock.fencing_token();
    ADD_FAILURE() << "fencing_token() returned without a sequence";
  } catch (const dlock::Error& e) {
    EXPECT_EQ(e.code(), dlock::errc::no_fencing_token);
    EXPECT_NE(std::string(e.what()).find("install_schema()"), std::string::npos) << e.what();
  }
  lock.unlock();
}

TEST(Postgres, WithTheSchemaTokensStrictlyIncrease) {
  const std::string seq = "dlock_fence_" + std::to_string(::getpid()) + ".fencing";
  PostgresBackend a(options({.fencing_sequence = seq}));
  PostgresBackend b(options({.fencing_sequence = seq}));
  EXPECT_FALSE(a.has_fencing());  // cached as absent ...
  a.install_schema();             // ... until installed through this backend
  EXPECT_TRUE(a.has_fencing());
  EXPECT_TRUE(b.has_fencing());
  PgLock la(a, test_name(), {.ttl = 10s});
  PgLock lb(b, test_name(), {.ttl = 10s});
  std::uint64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    PgLock& l = i % 2 ? lb : la;
    ASSERT_TRUE(i % 3 ? l.try_lock() : l.try_lock_for(1s));  // both statements carry the token
    const std::uint64_t t = l.fencing_token();
    EXPECT_GT(t, last);
    last = t;
    l.unlock();
  }
  // A failed try does not consume a token.
  ASSERT_TRUE(la.try_lock());
  const auto held = la.fencing_token();
  EXPECT_FALSE(lb.try_lock());
  la.unlock();
  ASSERT_TRUE(lb.try_lock());
  EXPECT_EQ(lb.fencing_token(), held + 1);
  lb.unlock();
  RawConn raw(conninfo());
  raw.exec("DROP SCHEMA dlock_fence_" + std::to_string(::getpid()) + " CASCADE");
}

TEST(Postgres, ShippedSqlFileMatchesInstallSchema) {
  std::ifstream in(DLOCK_SOURCE_DIR "/sql/dlock_postgres.sql");
  ASSERT_TRUE(in) << "sql/dlock_postgres.sql missing";
  std::string line, statements;
  while (std::getline(in, line))
    if (!line.empty() && line.rfind("--", 0) != 0) statements += line + "\n";
  std::string expected;
  for (const auto& s : dlock::detail::pg_schema_sql("dlock.fencing")) expected += s + "\n";
  EXPECT_EQ(statements, expected);
}

// ---- failures and options ----

TEST(Postgres, ConnectionErrorNamesTheEndpointButNotThePassword) {
  const int port = dlock::test::pg::free_port();
  PostgresBackend pg(PostgresOptions{
      .conninfo = "host=127.0.0.1 port=" + std::to_string(port) + " dbname=appdb user=app password=s3cretpw",
      .connect_timeout = 2s});
  EXPECT_EQ(pg.endpoint(), "127.0.0.1:" + std::to_string(port) + "/appdb");
  PgLock lock(pg, test_name(), {.ttl = 10s});
  try {
    (void)lock.try_lock();
    ADD_FAILURE() << "no error";
  } catch (const dlock::ConnectionError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(port) + "/appdb"), std::string::npos) << what;
    EXPECT_EQ(what.find("s3cretpw"), std::string::npos) << what;
  }
}

// A server that never answers: pg_safety_test PgUnreachable.

TEST(Postgres, ExhaustedPoolIsATimeoutNotAHang) {
  PostgresBackend pg(options({.pool_size = 1, .connect_timeout = 300ms}));
  PgLock a(pg, test_name() + "-a", {.ttl = 10s});
  PgLock b(pg, test_name() + "-b", {.ttl = 10s});
  ASSERT_TRUE(a.try_lock());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)b.try_lock(), dlock::TimeoutError);
  EXPECT_LT(since(t0), 1500ms);
  a.unlock();
  EXPECT_TRUE(b.try_lock());
  b.unlock();
}

TEST(Postgres, OptionsAreValidatedNamingTheField) {
  const auto message = [](PostgresOptions o) -> std::string {
    try {
      PostgresBackend pg(std::move(o));
    } catch (const dlock::InvalidArgument& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({.pool_size = 0}).find("PostgresOptions.pool_size"), std::string::npos);
  EXPECT_NE(message({.connect_timeout = 0ms}).find("PostgresOptions.connect_timeout"), std::string::npos);
  EXPECT_NE(message({.statement_timeout = -1ms}).find("PostgresOptions.statement_timeout must be positive (got -1ms)"),
            std::string::npos);
  EXPECT_NE(message({.lock_namespace = std::string("a\0b", 3)}).find("PostgresOptions.lock_namespace"),
            std::string::npos);
  EXPECT_NE(message({.application_name = std::string(64, 'x')}).find("PostgresOptions.application_name"),
            std::string::npos);
  for (const char* bad : {"", "Dlock.fencing", "a.b.c", "1x", "a;drop", ".x", "x."})
    EXPECT_NE(message({.fencing_sequence = bad}).find("PostgresOptions.fencing_sequence"), std::string::npos) << bad;
  const std::string conn = message({.conninfo = "host=x password=\"hunter2 nonsense"});
  EXPECT_NE(conn.find("PostgresOptions.conninfo"), std::string::npos) << conn;
  EXPECT_EQ(conn.find("hunter2"), std::string::npos) << conn;
  EXPECT_EQ(message({.conninfo = "postgresql://u:pw@127.0.0.1:1/db?sslmode=disable"}), "");  // URIs are fine
  EXPECT_EQ(message({}), "");
}

// ---- many processes ----

}  // namespace
