// PostgresOptions::shared_sessions against a real PostgreSQL server: many held
// locks over few connections, exclusion between Locks of one process on one
// shared session, loss of a shared session; and the server's arrival order for
// waiters (acquire_wait) with pinned sessions.
#include <dlock/postgres.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "postgres/pg_test_support.hpp"
#include "support/postgres_server.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::PostgresBackend;
using dlock::PostgresOptions;
using namespace dlock::test::pg;  // conninfo(), options(), test_name(), since(), RawConn
using PgLock = Lock<PostgresBackend>;

// An application_name of this process and test, to count its connections.
std::string app_name() { return "dlock-shared-" + std::to_string(::getpid()); }

PostgresOptions shared_options(std::size_t sessions, std::size_t pool) {
  PostgresOptions o = options();
  o.application_name = app_name();
  o.pool_size = pool;
  o.shared_sessions = sessions;
  return o;
}

int count(RawConn& c, const std::string& sql, const std::vector<std::string>& params = {}) {
  return std::stoi(c.exec(sql, params));
}

// Advisory locks granted to this test's connections.
int granted(RawConn& admin) {
  return count(admin,
               "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
               "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
               {app_name()});
}

int connections(RawConn& admin) {
  return count(admin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", {app_name()});
}

// The server process holding `key`, 0 if none.
int holder_pid(RawConn& admin, std::int64_t key) {
  const std::string pid = admin.exec(
      "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
      "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
      {std::to_string(key)});
  return pid.empty() ? 0 : std::stoi(pid);
}

int waiters(RawConn& admin, std::int64_t key) {
  return count(admin,
               "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
               "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
               {std::to_string(key)});
}

// Polls `cond` (a server-side or cross-thread condition) until it holds or `limit` passes.
template <class F>
bool eventually(F cond, std::chrono::milliseconds limit = 5s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST(PostgresShared, OptionsAreValidated) {
  PostgresOptions o = options();
  o.shared_sessions = 16;  // == pool_size
  EXPECT_THROW(PostgresBackend{o}, dlock::InvalidArgument);
  o.shared_sessions = 2;
  o.scope = PostgresOptions::Scope::transaction;
  EXPECT_THROW(PostgresBackend{o}, dlock::InvalidArgument);
}

TEST(PostgresShared, TenThousandLocksOverAtMostFourConnections) {
  RawConn admin(conninfo());
  PostgresBackend pg(shared_options(3, 4));
  pg.install_schema();  // fencing tokens: one per lock, all different
  constexpr int n = 10'000;
  std::deque<PgLock> locks;
  for (int i = 0; i < n; ++i)
    locks.emplace_back(pg, test_name() + ":" + std::to_string(i), dlock::LockOptions{.ttl = 60s});
  // Four threads, so that the three sessions work at once.
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = t; i < n; i += 4) taken += locks[static_cast<std::size_t>(i)].try_lock() ? 1 : 0;
    });
  for (auto& th : threads) th.join();
  ASSERT_EQ(taken.load(), n);
  EXPECT_EQ(granted(admin), n);
  EXPECT_LE(connections(admin), 4);
  EXPECT_GE(connections(admin), 1);
  EXPECT_LE(pg.pool_stats().open, 4u);
  std::set<std::uint64_t> tokens;
  for (auto& l : locks) tokens.insert(l.fencing_token());
  EXPECT_EQ(tokens.size(), static_cast<std::size_t>(n));
  std::atomic<int> released{0};
  threads.clear();
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = t; i < n; i += 4)
        released += locks[static_cast<std::size_t>(i)].release() == dlock::ReleaseResult::released ? 1 : 0;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(released.load(), n);
  EXPECT_EQ(granted(admin), 0);
  EXPECT_LE(connections(admin), 4);
}

TEST(PostgresShared, TwoLocksOnOneSharedSessionExcludeEachOther) {
  RawConn admin(conninfo());
  PostgresBackend pg(shared_options(1, 2));  // one shared session: both Locks use it
  pg.install_schema();
  PgLock a(pg, test_name(), {.ttl = 30s});
  PgLock b(pg, test_name(), {.ttl = 30s});
  ASSERT_TRUE(a.try_lock());
  const std::uint64_t first = a.fencing_token();
  // PostgreSQL would grant the same session the lock again (advisory locks are
  // re-entrant per session): dlock answers contention itself.
  EXPECT_FALSE(b.try_lock());
  EXPECT_FALSE(b.try_lock_for(100ms));  // waits on another connection, queued behind a's session
  const std::int64_t key = pg.advisory_key(test_name());
  // A waiter is woken by the release on the shared session.
  auto waiter = std::async(std::launch::async, [&] { return b.try_lock_for(10s); });
  ASSERT_TRUE(eventually([&] { return waiters(admin, key) == 1; }));
  const auto released = std::chrono::steady_clock::now();
  EXPECT_EQ(a.release(), dlock::ReleaseResult::released);
  ASSERT_TRUE(waiter.get());
  EXPECT_LT(since(released), 2s);
  EXPECT_FALSE(a.try_lock());
  EXPECT_GT(b.fencing_token(), first);
  EXPECT_EQ(b.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(holder_pid(admin, key), 0);  // released on the server, not only in the process
  EXPECT_TRUE(a.try_lock());
  a.unlock();
}

TEST(PostgresShared, ADestroyedUnreleasedHandleIsUnlockedOnItsSession) {
  RawConn admin(conninfo());
  PostgresBackend pg(shared_options(1, 2));
  const std::string name = test_name();
  {
    const dlock::OwnerId owner = dlock::OwnerId::generate();
    auto r = pg.try_acquire({name, owner, 30s, std::chrono::steady_clock::now()});
    ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::PgLockHandle>>(r));
  }  // the grant's handle is dropped without release
  PgLock l(pg, name, {.ttl = 30s});
  EXPECT_TRUE(l.try_lock());  // the next acquire on that session unlocked it first
  EXPECT_EQ(l.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(holder_pid(admin, pg.advisory_key(name)), 0);
}

TEST(PostgresShared, TerminatingASharedSessionLosesAndSignalsEveryLeaseOnIt) {
  RawConn admin(conninfo());
  PostgresBackend pg(shared_options(2, 3));
  constexpr int n = 40;
  std::deque<PgLock> locks;
  std::vector<std::stop_token> stops;
  std::vector<int> pids;
  std::atomic<int> lost_events{0};
  // Real short TTL: the heartbeat's extensions are what must notice the loss.
  for (int i = 0; i < n; ++i) {
    locks.emplace_back(pg, test_name() + ":" + std::to_string(i),
                       dlock::LockOptions{.ttl = 900ms, .auto_extend = true});
    ASSERT_TRUE(locks.back().try_lock());
    stops.push_back(locks.back().stop_token());
    locks.back().on_lost([&](const dlock::LostEvent&) { ++lost_events; });
    pids.push_back(holder_pid(admin, pg.advisory_key(locks.back().name())));
  }
  const int victim = pids.front();
  const int on_victim = static_cast<int>(std::count(pids.begin(), pids.end(), victim));
  ASSERT_GT(on_victim, 0);
  ASSERT_LT(on_victim, n) << "all locks on one session: the keys did not spread over both";
  ASSERT_EQ(admin.exec("SELECT pg_terminate_backend($1::int, 5000)", {std::to_string(victim)}), "t");
  ASSERT_TRUE(eventually([&] { return lost_events.load() == on_victim; }, 5s)) << lost_events.load();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(stops[i].stop_requested(), pids[i] == victim) << i;
    EXPECT_EQ(locks[i].owns_lock(), pids[i] != victim) << i;
  }
  // The other session's leases go on being extended and released normally.
  for (int i = 0; i < n; ++i) {
    if (pids[i] != victim) {
      EXPECT_NO_THROW(locks[i].extend()) << i;
    }
  }
  // A lost lock can be taken again, on a new session.
  const int lost = static_cast<int>(std::find(pids.begin(), pids.end(), victim) - pids.begin());
  EXPECT_EQ(locks[lost].release(), dlock::ReleaseResult::not_held);
  EXPECT_TRUE(locks[lost].try_lock());
  for (auto& l : locks) l.unlock();
  EXPECT_EQ(granted(admin), 0);
}

// issue 16: PostgreSQL queues waiters itself; with pinned sessions (the
// default) acquire_wait grants them in arrival order. A fair Lock
// (LockOptions::fair) is accepted on PostgreSQL for that reason.
TEST(PostgresWaitOrder, WaitersAreGrantedInArrivalOrder) {
  RawConn admin(conninfo());
  PostgresBackend pg(options());
  const std::string name = test_name();
  const std::int64_t key = pg.advisory_key(name);
  PgLock holder(pg, name, {.ttl = 30s});
  ASSERT_TRUE(holder.try_lock());
  constexpr int n = 6;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      PgLock l(pg, name, {.ttl = 30s, .fair = true});
      if (!l.try_lock_for(20s)) return;
      {
        std::lock_guard lk(mu);
        order.push_back(i);
      }
      l.unlock();
    });
    // Waiter i is queued in the server before waiter i + 1 starts.
    ASSERT_TRUE(eventually([&] { return waiters(admin, key) == i + 1; })) << i;
  }
  holder.unlock();
  for (auto& t : threads) t.join();
  std::vector<int> expected(n);
  for (int i = 0; i < n; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);
}

}  // namespace
