// PostgresBackend's AsyncBackend operations (libpq in non-blocking mode on
// Asio) on a real server: coroutines on one io_context thread contend without
// blocking it, cancellation leaves no advisory lock held on the server, and a
// server that stops answering gives a TimeoutError at statement_timeout while
// the loop keeps running.
#include <dlock/dlock.hpp>
#include <dlock/postgres.hpp>

#include "support/async_checks.hpp"

#include <gtest/gtest.h>
#include <signal.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stop_token>
#include <string>
#include <vector>

#include "pg_test_support.hpp"
#include "unit/async_support.hpp"
#include "unit/loop_ticker.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using dlock::Lock;
using dlock::LockOptions;
using dlock::PostgresBackend;
using Clock = std::chrono::steady_clock;
using namespace dlock::test::pg;

using dlock::test::Ticker;

namespace {

// Advisory locks (held or awaited) on `key` in the server.
long advisory_locks(RawConn& raw, std::int64_t key) {
  return std::stol(
      raw.exec("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
               "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
               {std::to_string(key)}));
}

// async_extend by 20 s, then async_release of `lease`, each run to its
// completion on `io`: the blocking calls' results, through the executor.
void extend_then_release(PostgresBackend& pg, asio::io_context& io, const std::string& name,
                         dlock::Lease<dlock::PgLockHandle>& lease) {
  const auto started = Clock::now();
  std::optional<dlock::TimePoint> until;
  pg.async_extend(name, lease, 20s, started, io.get_executor(), [&](std::exception_ptr e, auto v) {
    EXPECT_FALSE(e);
    until = v;
  });
  io.run();
  io.restart();
  ASSERT_TRUE(until);
  EXPECT_EQ(*until, started + 20s);
  dlock::ReleaseResult released = dlock::ReleaseResult::not_held;
  pg.async_release(name, lease, io.get_executor(), [&](std::exception_ptr e, dlock::ReleaseResult r) {
    EXPECT_FALSE(e);
    released = r;
  });
  io.run();
  io.restart();
  EXPECT_EQ(released, dlock::ReleaseResult::released);
}

// 200 coroutines on one io_context thread, 4 names, holding across a
// suspension: the counters are exact, tokens increase, the loop is never blocked.
void two_hundred_coroutines(dlock::PostgresOptions::Scope scope, std::size_t shared_sessions = 0) {
  PostgresBackend pg(options({.pool_size = 24, .scope = scope, .shared_sessions = shared_sessions}));
  // Tokens. Installed through another backend, so that this one's first tries
  // ask whether the sequence exists on the loop (asynchronously, 200 at once).
  PostgresBackend(options()).install_schema();
  asio::io_context io;
  constexpr int coroutines = 200, cycles = 2, names = 4;
  std::vector<std::unique_ptr<Lock<PostgresBackend>>> locks;
  const std::string base = test_name();
  for (int i = 0; i < coroutines; ++i) {
    LockOptions o{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}};
    o.acquire_timeout = 60s;
    locks.push_back(std::make_unique<Lock<PostgresBackend>>(pg, base + std::to_string(i % names), o));
  }
  std::printf("postgres, %s scope, %zu shared sessions: ",
              scope == dlock::PostgresOptions::Scope::session ? "session" : "transaction", shared_sessions);
  const auto seen = dlock::test::contend(io, locks, names, cycles, /*guard_releases=*/false, 90s);
  ASSERT_EQ(seen.finished, coroutines);
  EXPECT_EQ(seen.failed, 0);
  EXPECT_TRUE(seen.tokens_increase);
  EXPECT_EQ(seen.total, coroutines * cycles);
  EXPECT_LT(seen.worst_lag, dlock::test::async_lag_bound) << "the loop's thread was blocked";
  RawConn raw(conninfo());
  for (int n = 0; n < names; ++n) EXPECT_EQ(advisory_locks(raw, pg.advisory_key(base + std::to_string(n))), 0);
}

}  // namespace

TEST(PgAsync, TwoHundredCoroutinesOnOneThreadContendForFourLocks) {
  two_hundred_coroutines(dlock::PostgresOptions::Scope::session);
}

TEST(PgAsync, TwoHundredCoroutinesInTransactionScope) {
  two_hundred_coroutines(dlock::PostgresOptions::Scope::transaction);
}

TEST(PgAsync, TwoHundredCoroutinesOnTwoSharedSessions) {
  two_hundred_coroutines(dlock::PostgresOptions::Scope::session, 2);
}

TEST(PgAsync, CancellationAtRandomPointsLeavesNoLockOnTheServer) {
  PostgresBackend pg(options({.pool_size = 24}));
  (void)pg.has_fencing();  // the first tries' look-up done: the cancellations (within 100 ms) meet grants too
  const std::string base = test_name();
  // A cancelled wait in the server's queue ends with its closed session, which
  // the server notices within client_connection_check_interval (100 ms): a
  // dead waiter granted meanwhile holds the lock until its session ends, so
  // "nothing left" is checked within 1 s.
  const auto start = Clock::now();
  dlock::test::expect_cancellation_leaves_nothing(pg, base, 60, 7, 1s);
  RawConn raw(conninfo());  // and none of the server's advisory locks is left, granted or waiting
  EXPECT_TRUE(eventually_holds(
      [&] {
        return advisory_locks(raw, pg.advisory_key(base + "0")) == 0 &&
               advisory_locks(raw, pg.advisory_key(base + "1")) == 0;
      },
      1s));
  std::printf("no advisory lock of either name left %lld ms after the start\n",
              static_cast<long long>(since(start).count()));
}

// The session's server process stopped (SIGSTOP): the release gets no answer;
// at statement_timeout the connection is dropped and the completion reports a
// TimeoutError (outcome unknown), while the loop's 1 ms timer keeps ticking.
TEST(PgAsync, AServerThatStopsAnsweringGivesATimeoutAtTheDeadlineNotAHang) {
  PostgresBackend pg(options({.statement_timeout = 300ms}));
  const std::string name = test_name();
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  auto result = pg.try_acquire({name, owner, 10s, Clock::now()});
  auto* grant = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&result);
  ASSERT_NE(grant, nullptr);
  dlock::Lease<dlock::PgLockHandle> lease{owner, {}, {}, {}, std::move(grant->handle)};
  const int pid = lease.handle.server_pid();
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  asio::io_context io;
  Ticker ticker(io);
  ticker.arm(Clock::now() + 1ms);
  std::exception_ptr error;
  bool completed = false;
  const auto start = Clock::now();
  pg.async_release(name, lease, io.get_executor(), [&](std::exception_ptr e, dlock::ReleaseResult) {
    error = e;
    completed = true;
    ticker.stop = true;
  });
  EXPECT_FALSE(completed);  // never inside the initiating call
  io.run_for(5s);
  const auto took = since(start);
  ::kill(pid, SIGCONT);
  std::printf("release completed after %lld ms; 1 ms timer: %d ticks, worst lag %lld us\n",
              static_cast<long long>(took.count()), ticker.ticks, ticker.worst_us());
  ASSERT_TRUE(completed);
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const dlock::TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  EXPECT_GE(took, 290ms);
  EXPECT_LT(took, 2s);
  EXPECT_GT(ticker.ticks, 100);
  EXPECT_LT(ticker.worst, 100ms);
  // The connection was dropped: once the process runs again, the server ends the session and frees the lock.
  RawConn raw(conninfo());
  const auto until = Clock::now() + 5s;
  while (advisory_locks(raw, pg.advisory_key(name)) != 0 && Clock::now() < until) {
    raw.exec("SELECT pg_sleep(0.01)");  // waiting for the server to notice the closed socket is the point
  }
  EXPECT_EQ(advisory_locks(raw, pg.advisory_key(name)), 0);
}

// Transaction scope: the try (BEGIN and pg_try_advisory_xact_lock pipelined
// in one round trip) and the ROLLBACK after contention run on the loop
// without blocking it. The pooled connection's server process is stopped
// (SIGSTOP): the initiating call still returns at once, the loop keeps
// ticking, and the completion reports the TimeoutError at statement_timeout.
// (Before, this mode ran the blocking try inside the initiating call.)
TEST(PgAsync, TransactionScopeTryDoesNotBlockTheLoop) {
  PostgresBackend pg(options({.scope = dlock::PostgresOptions::Scope::transaction, .statement_timeout = 300ms}));
  const std::string name = test_name();
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  asio::io_context io;
  using Result = dlock::AcquireResult<dlock::PgLockHandle>;
  const auto try_async = [&](const std::string& n, std::exception_ptr& error, std::optional<Result>& result) {
    pg.async_try_acquire({n, owner, 10s, Clock::now()}, io.get_executor(), [&](std::exception_ptr e, Result r) {
      error = e;
      result = std::move(r);
    });
  };
  // Granted, then contended (rolled back; the connection goes back to the pool).
  std::exception_ptr error;
  std::optional<Result> first, second;
  try_async(name, error, first);
  io.run();
  io.restart();
  ASSERT_FALSE(error);
  auto* grant = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&*first);
  ASSERT_NE(grant, nullptr);
  dlock::Lease<dlock::PgLockHandle> lease{owner, {}, {}, {}, std::move(grant->handle)};
  try_async(name, error, second);
  io.run();
  io.restart();
  ASSERT_FALSE(error);
  EXPECT_TRUE(std::holds_alternative<dlock::Contended>(*second));
  EXPECT_EQ(pg.pool_stats().idle, 1u);  // the contended try's connection, out of its transaction
  EXPECT_EQ(pg.release(name, lease), dlock::ReleaseResult::released);
  ASSERT_EQ(pg.pool_stats().idle, 2u);
  // Stop the server processes of both idle connections: the next try takes one of them.
  RawConn raw(conninfo());
  std::stringstream idle_pids(raw.exec(
      "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = 'dlock' AND state = 'idle'"));
  std::vector<int> stopped;
  for (int pid; idle_pids >> pid;) stopped.push_back(pid);
  ASSERT_EQ(stopped.size(), 2u);
  for (int pid : stopped) ::kill(pid, SIGSTOP);
  Ticker ticker(io);
  ticker.arm(Clock::now() + 1ms);
  std::optional<Result> third;
  error = nullptr;
  const auto start = Clock::now();
  pg.async_try_acquire({name + "x", owner, 10s, Clock::now()}, io.get_executor(), [&](std::exception_ptr e, Result r) {
    error = e;
    third = std::move(r);
    ticker.stop = true;
  });
  const auto initiated = since(start);
  io.run_for(3s);
  const auto took = since(start);
  for (int pid : stopped) ::kill(pid, SIGCONT);
  std::printf(
      "initiating call returned after %lld ms, completed after %lld ms; 1 ms timer: %d ticks, worst lag %lld us\n",
      static_cast<long long>(initiated.count()), static_cast<long long>(took.count()), ticker.ticks, ticker.worst_us());
  EXPECT_LT(initiated, 100ms) << "the initiating call blocked for the round trip";
  ASSERT_TRUE(third);
  ASSERT_TRUE(error);
  EXPECT_THROW(std::rethrow_exception(error), dlock::TimeoutError);
  EXPECT_GE(took, 290ms);
  EXPECT_GT(ticker.ticks, 100);
  EXPECT_LT(ticker.worst, 100ms);
}

// shared_sessions: try, release and extend of leases on one shared session
// run on the loop without blocking it. They take the session's turn in order
// (the others poll for it on a timer, as a full pool is waited for). With the
// session's server process stopped, the initiating calls return at once and
// the loop keeps ticking; the release in flight times out at
// statement_timeout (TimeoutError: outcome unknown), which ends the shared
// session, so the extend waiting for its turn then finds every lease on it
// lost, and the try waiting for it gets a new shared session (a connection
// opened without blocking) and the lock. (Before, each initiating call ran
// the blocking operation.)
TEST(PgAsync, SharedSessionTryReleaseAndExtendDoNotBlockTheLoop) {
  PostgresBackend pg(options({.shared_sessions = 1, .statement_timeout = 300ms}));
  const std::string name = test_name();
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  std::vector<dlock::Lease<dlock::PgLockHandle>> leases;
  for (int i = 0; i < 3; ++i) {
    auto r = pg.try_acquire({name + std::to_string(i), owner, 10s, Clock::now()});
    auto* g = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&r);
    ASSERT_NE(g, nullptr);
    leases.push_back({owner, {}, {}, {}, std::move(g->handle)});
  }
  asio::io_context io;
  extend_then_release(pg, io, name + "0", leases[0]);  // while the server answers
  // The session's server process stopped.
  const int pid = leases[1].handle.server_pid();
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  Ticker ticker(io);
  ticker.arm(Clock::now() + 1ms);
  std::exception_ptr release_error, extend_error;
  int completed = 0;
  // The names stay valid until the completions run (AsyncBackend's rule).
  const std::string name1 = name + "1", name2 = name + "2", name3 = name + "3";
  const auto start = Clock::now();
  pg.async_release(name1, leases[1], io.get_executor(), [&](std::exception_ptr e, dlock::ReleaseResult) {
    release_error = e;
    ++completed;
  });
  pg.async_extend(name2, leases[2], 20s, Clock::now(), io.get_executor(), [&](std::exception_ptr e, auto) {
    extend_error = e;
    ticker.stop = ++completed == 3;
  });
  std::exception_ptr try_error;
  std::optional<dlock::AcquireResult<dlock::PgLockHandle>> tried;
  pg.async_try_acquire({name3, owner, 10s, Clock::now()}, io.get_executor(),
                       [&](std::exception_ptr e, dlock::AcquireResult<dlock::PgLockHandle> r) {
                         try_error = e;
                         tried = std::move(r);
                         ticker.stop = ++completed == 3;
                       });
  const auto initiated = since(start);
  io.run_for(3s);
  const auto took = since(start);
  ::kill(pid, SIGCONT);
  std::printf(
      "initiating calls returned after %lld ms, completed after %lld ms; 1 ms timer: %d ticks, worst lag %lld us\n",
      static_cast<long long>(initiated.count()), static_cast<long long>(took.count()), ticker.ticks, ticker.worst_us());
  EXPECT_LT(initiated, 100ms) << "an initiating call blocked for the round trip";
  ASSERT_EQ(completed, 3);
  ASSERT_TRUE(release_error);
  EXPECT_THROW(std::rethrow_exception(release_error), dlock::TimeoutError);
  ASSERT_TRUE(extend_error);
  EXPECT_THROW(std::rethrow_exception(extend_error), dlock::LockLostError);
  EXPECT_FALSE(try_error);
  ASSERT_TRUE(tried);
  auto* fresh = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&*tried);
  ASSERT_NE(fresh, nullptr);
  EXPECT_NE(fresh->handle.server_pid(), pid);  // a new shared session
  dlock::Lease<dlock::PgLockHandle> third{owner, {}, {}, {}, std::move(fresh->handle)};
  EXPECT_EQ(pg.release(name + "3", third), dlock::ReleaseResult::released);
  EXPECT_GE(took, 290ms);
  EXPECT_LT(took, 2s);
  EXPECT_GT(ticker.ticks, 100);
  EXPECT_LT(ticker.worst, 100ms);
}

// Extend and release of a pinned lease complete through the executor with the blocking calls' results.
TEST(PgAsync, ExtendAndReleaseInBothScopes) {
  for (auto scope : {dlock::PostgresOptions::Scope::session, dlock::PostgresOptions::Scope::transaction}) {
    PostgresBackend pg(options({.scope = scope}));
    const std::string name = test_name() + (scope == dlock::PostgresOptions::Scope::session ? "s" : "t");
    const dlock::OwnerId owner = dlock::OwnerId::generate();
    asio::io_context io;
    dlock::Lease<dlock::PgLockHandle> lease{owner, {}, {}, {}, {}};
    bool granted = false;
    pg.async_try_acquire({name, owner, 10s, Clock::now()}, io.get_executor(),
                         [&](std::exception_ptr e, dlock::AcquireResult<dlock::PgLockHandle> r) {
                           ASSERT_FALSE(e);
                           auto* g = std::get_if<dlock::Grant<dlock::PgLockHandle>>(&r);
                           ASSERT_NE(g, nullptr);
                           lease.handle = std::move(g->handle);
                           granted = true;
                         });
    io.run();
    io.restart();
    ASSERT_TRUE(granted);
    extend_then_release(pg, io, name, lease);
    RawConn raw(conninfo());
    EXPECT_EQ(advisory_locks(raw, pg.advisory_key(name)), 0);
  }
}

namespace {

// The server's processes: the postmaster (the parent of `backend`) and all its children, now.
std::vector<int> server_pids(int backend) {
  const auto ppid_of = [](const std::string& pid) {
    std::ifstream stat("/proc/" + pid + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');  // the command may contain spaces
    if (close == std::string::npos) return -1;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    int ppid = -1;
    rest >> state >> ppid;
    return ppid;
  };
  const int postmaster = ppid_of(std::to_string(backend));
  std::vector<int> pids{postmaster};
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename();
    if (pid.find_first_not_of("0123456789") == std::string::npos && ppid_of(pid) == postmaster)
      pids.push_back(std::stoi(pid));
  }
  return pids;
}

}  // namespace

// The whole server stops answering (SIGSTOP on the postmaster and every
// process it forked, the waiter's sessions included) while an async_acquire
// waits in the server's queue for a held lock (AsyncWaitsOnServer): the wait
// in flight gets no answer within its wait (to the deadline) plus
// statement_timeout, so the acquire completes with that round trip's
// TimeoutError (outcome unknown; its connection closed, which frees whatever
// it took once the server runs again) shortly after its deadline, not a hang,
// and the loop keeps running. (While the asynchronous acquire polled, the next
// attempts' connects got no answer and it ended with errc::connection; a
// server that is stopped for real gives errc::connection with the wait too:
// PgAsyncWait.AServerStoppedMidWaitGivesAConnectionErrorByTheDeadline.)
TEST(PgAsync, AServerThatStopsAnsweringMidWaitGivesATimeoutByTheDeadline) {
  PostgresBackend pg(options({.connect_timeout = 300ms, .statement_timeout = 300ms}));
  const std::string name = test_name();
  Lock<PostgresBackend> holder(pg, name, LockOptions{.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  {  // a warm pool: idle connections from before the outage
    std::vector<std::unique_ptr<Lock<PostgresBackend>>> others;
    for (int i = 0; i < 4; ++i) {
      others.push_back(std::make_unique<Lock<PostgresBackend>>(pg, name + std::to_string(i)));
      ASSERT_TRUE(others.back()->try_lock());
    }
    for (auto& l : others) l->unlock();
  }
  ASSERT_EQ(pg.pool_stats().idle, 4u);
  RawConn raw(conninfo());
  const int backend = std::stoi(raw.exec("SELECT pg_backend_pid()"));
  asio::io_context io;
  Ticker ticker(io);
  ticker.arm(Clock::now() + 1ms);
  LockOptions wo{.ttl = 10s, .retry = {.initial_delay = 5ms, .max_delay = 20ms}};
  wo.acquire_timeout = 1s;
  Lock<PostgresBackend> waiter(pg, name, wo);
  boost::system::error_code result;
  bool completed = false;
  const auto start = Clock::now();
  waiter.async_acquire(asio::bind_executor(io, [&](boost::system::error_code ec, auto) {
    result = ec;
    completed = true;
    ticker.stop = true;
  }));
  std::vector<int> stopped;
  asio::steady_timer stopper(io, 200ms);
  stopper.async_wait([&](const boost::system::error_code&) {
    stopped = server_pids(backend);
    for (int pid : stopped) ::kill(pid, SIGSTOP);
  });
  io.run_for(5s);
  const auto took = since(start);
  for (int pid : stopped) ::kill(pid, SIGCONT);
  std::printf("stopped %zu server processes; completed %d after %lld ms: %s; 1 ms timer: %d ticks, worst lag %lld us\n",
              stopped.size(), completed, static_cast<long long>(took.count()), result.message().c_str(), ticker.ticks,
              ticker.worst_us());
  ASSERT_TRUE(completed);
  ASSERT_GT(stopped.size(), 3u);  // the postmaster, its helpers and the sessions
  EXPECT_EQ(dlock::to_std(result), dlock::errc::timeout) << result.message();
  EXPECT_GE(took, 1s);
  EXPECT_LT(took, 2s);
  EXPECT_LT(ticker.worst, 100ms);
  holder.unlock();
}
