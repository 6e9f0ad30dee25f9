// The asynchronous acquire on PostgreSQL waits in the server's queue
// (PostgresBackend::async_acquire_wait, AsyncWaitsOnServer): fair mode's
// asynchronous acquire keeps arrival order, mixed with blocking waiters; a
// stop request ends a server-side wait at once and leaves nothing queued or
// held on the server (pg_locks); an io_context destroyed mid-wait drops its
// sessions, and the server drops their waits.
#include <dlock/dlock.hpp>
#include <dlock/postgres.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "pg_test_support.hpp"
#include "support/async_checks.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::Lock;
using dlock::LockOptions;
using dlock::PostgresBackend;
using Clock = std::chrono::steady_clock;
using namespace dlock::test::pg;

namespace {

using PgLock = Lock<PostgresBackend>;

// An io_context run by a thread of its own, so that the test's thread can
// watch pg_locks while coroutines wait.
struct LoopThread {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::thread thread{[this] { io.run(); }};
  ~LoopThread() { join(); }
  void join() {
    work.reset();
    if (thread.joinable()) thread.join();
  }
};

// A lock named after the test, held by `holder`, its key, and a raw
// connection that watches pg_locks.
struct HeldLock {
  explicit HeldLock(dlock::PostgresOptions o = {}) : pg(options(std::move(o))) { EXPECT_TRUE(holder.try_lock()); }
  RawConn admin{conninfo()};
  PostgresBackend pg;
  const std::string name = test_name();
  const std::int64_t key = pg.advisory_key(name);
  PgLock holder{pg, name, {.ttl = 30s}};
};

// issue 16: fair mode's asynchronous acquire on PostgreSQL waits in the
// server's queue, which grants in arrival order: coroutines and blocking
// threads queued one after another are granted in exactly that order. (Before
// AsyncWaitsOnServer, async_acquire of a fair Lock threw InvalidArgument.)
TEST(PgAsyncWait, FairWaitersAreGrantedInArrivalOrderCoroutinesAndThreadsMixed) {
  HeldLock held({.pool_size = 16});
  RawConn& admin = held.admin;
  PostgresBackend& pg = held.pg;
  const std::string& name = held.name;
  const std::int64_t key = held.key;
  PgLock& holder = held.holder;
  constexpr int n = 8;
  const auto is_thread = [](int i) { return i == 2 || i == 5; };
  LockOptions fair{.ttl = 30s, .fair = true};
  fair.acquire_timeout = 20s;
  std::vector<std::unique_ptr<PgLock>> locks;
  for (int i = 0; i < n; ++i) locks.push_back(std::make_unique<PgLock>(pg, name, fair));
  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> failed{0};
  LoopThread loop;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    if (is_thread(i)) {
      threads.emplace_back([&, i] {
        if (!locks[i]->try_lock_for(20s)) return (void)++failed;
        {
          std::lock_guard lk(mu);
          order.push_back(i);
        }
        locks[i]->unlock();
      });
    } else {
      asio::co_spawn(
          loop.io,
          [&, i]() -> asio::awaitable<void> {
            try {
              auto g = co_await locks[i]->async_acquire(asio::use_awaitable);
              {
                std::lock_guard lk(mu);
                order.push_back(i);
              }
              co_await g.async_release(asio::use_awaitable);
            } catch (const std::exception& e) {
              std::printf("coroutine %d: %s\n", i, e.what());
              ++failed;
            }
          },
          asio::detached);
    }
    // Waiter i is queued in the server before waiter i + 1 starts.
    ASSERT_TRUE(eventually_holds([&] { return waiting_count(admin, key) == i + 1; })) << i;
  }
  holder.unlock();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(eventually_holds([&] {
    std::lock_guard lk(mu);
    return static_cast<int>(order.size()) + failed.load() == n;
  }));
  loop.join();
  std::vector<int> expected(n);
  for (int i = 0; i < n; ++i) expected[i] = i;
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(order, expected);
  EXPECT_EQ(advisory_rows(admin, key), 0);
}

// A stop request ends an asynchronous acquire waiting in the server's queue
// at once (well under a second: the session is closed, not left to its
// lock_timeout slice), the server drops the cancelled waits (pg_locks: no
// waiting row of theirs remains), and the remaining waiters still get the
// lock, in turn; nothing is left on the server at the end.
void cancel_half_of_the_waiters(dlock::PostgresOptions pg_options) {
  HeldLock held(std::move(pg_options));
  RawConn& admin = held.admin;
  PostgresBackend& pg = held.pg;
  const std::string& name = held.name;
  const std::int64_t key = held.key;
  PgLock& holder = held.holder;
  constexpr int n = 20;
  LockOptions o{.ttl = 30s};
  o.acquire_timeout = 20s;
  std::vector<std::unique_ptr<PgLock>> locks;
  for (int i = 0; i < n; ++i) locks.push_back(std::make_unique<PgLock>(pg, name, o));
  std::vector<std::stop_source> stops(n);
  std::vector<std::optional<Clock::time_point>> ended(n);
  std::vector<boost::system::error_code> results(n);
  std::atomic<int> done{0}, acquired{0}, cancelled{0};
  LoopThread loop;
  for (int i = 0; i < n; ++i) {
    locks[i]->async_acquire(stops[i].get_token(), asio::bind_executor(loop.io, [&, i](boost::system::error_code ec,
                                                                                      dlock::AsyncGuard<PgLock> g) {
                              results[i] = ec;
                              ended[i] = Clock::now();
                              if (!ec) {
                                ++acquired;  // `g` releases (asynchronously) as it goes: the next waiter's turn
                                EXPECT_TRUE(g.owns_lock());
                              } else if (dlock::to_std(ec) == dlock::errc::cancelled) {
                                ++cancelled;
                              }
                              ++done;
                            }));
  }
  ASSERT_TRUE(eventually_holds([&] { return waiting_count(admin, key) == n; })) << waiting_count(admin, key);
  // Cancel a random half, from this thread (not the loop's).
  std::mt19937 rng(11);
  std::vector<int> victims(n);
  for (int i = 0; i < n; ++i) victims[i] = i;
  std::shuffle(victims.begin(), victims.end(), rng);
  victims.resize(n / 2);
  std::vector<Clock::time_point> requested(n);
  for (const int v : victims) {
    requested[v] = Clock::now();
    stops[v].request_stop();
  }
  ASSERT_TRUE(eventually_holds([&] { return cancelled.load() == n / 2; }, 2s)) << cancelled.load();
  Clock::duration slowest{};
  for (const int v : victims) {
    EXPECT_EQ(dlock::to_std(results[v]), dlock::errc::cancelled) << v << ": " << results[v].message();
    slowest = std::max(slowest, *ended[v] - requested[v]);
  }
  // The server notices the closed connections (client_connection_check_interval) and drops their waits.
  const auto cancel_start = Clock::now();
  const bool dropped = eventually_holds([&] { return waiting_count(admin, key) == n / 2; }, 2s);
  const auto drop_took = since(cancel_start);
  std::printf("slowest cancellation %lld us; the server dropped the cancelled waits within %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(slowest).count()),
              static_cast<long long>(drop_took.count()));
  EXPECT_LT(slowest, 250ms);
  EXPECT_TRUE(dropped) << waiting_count(admin, key);
  holder.unlock();
  ASSERT_TRUE(eventually_holds([&] { return done.load() == n; }, 10s)) << done.load();
  EXPECT_EQ(acquired.load(), n / 2);
  for (int i = 0; i < n; ++i) EXPECT_FALSE(locks[i]->owns_lock()) << i;
  EXPECT_TRUE(eventually_holds([&] { return advisory_rows(admin, key) == 0; }, 2s)) << advisory_rows(admin, key);
  loop.join();
}

TEST(PgAsyncWait, CancelledServerWaitsLeaveNoRowInPgLocksAndTheOthersStillGetTheLock) {
  cancel_half_of_the_waiters({.pool_size = 32});
}

// The same with shared_sessions: each wait queues on a pooled connection of
// its own (then tries on the shared session); a stop request closes it.
TEST(PgAsyncWait, CancelledServerWaitsOnSharedSessionsLeaveNoRowInPgLocks) {
  cancel_half_of_the_waiters({.pool_size = 32, .shared_sessions = 2});
}

// The io_context is stopped and destroyed while acquires wait in the server's
// queue: nothing blocks, the sessions are dropped, and the server drops their
// waits; the lock is free once its holder lets go.
TEST(PgAsyncWait, AnIoContextDestroyedMidWaitDropsItsWaitsOnTheServer) {
  HeldLock held;
  RawConn& admin = held.admin;
  PostgresBackend& pg = held.pg;
  const std::string& name = held.name;
  const std::int64_t key = held.key;
  PgLock& holder = held.holder;
  constexpr int n = 4;
  std::vector<std::unique_ptr<PgLock>> locks;
  for (int i = 0; i < n; ++i) locks.push_back(std::make_unique<PgLock>(pg, name, LockOptions{.ttl = 30s}));
  {
    auto loop = std::make_unique<LoopThread>();
    for (auto& l : locks) l->async_acquire(asio::bind_executor(loop->io, [](boost::system::error_code, auto) {}));
    ASSERT_TRUE(eventually_holds([&] { return waiting_count(admin, key) == n; }));
    loop->io.stop();
    const auto start = Clock::now();
    loop.reset();  // joins the stopped loop, then destroys the io_context with the waits in it
    EXPECT_LT(since(start), 500ms);
  }
  EXPECT_TRUE(eventually_holds([&] { return waiting_count(admin, key) == 0; }, 2s)) << waiting_count(admin, key);
  holder.unlock();
  PgLock after(pg, name, {.ttl = 30s});
  EXPECT_TRUE(after.try_lock());
  after.unlock();
  EXPECT_EQ(advisory_rows(admin, key), 0);
}

}  // namespace

namespace {

// The read-write lock's asynchronous writer waits in the server's queue too
// (ExclusiveView forwards async_acquire_wait_exclusive): while it waits, a new
// reader is refused (writer preference, as behind a blocking writer), and it
// gets the lock once the reader lets go. (While it polled, new readers kept
// entering.)
TEST(PgAsyncWait, AnAsynchronousWriterWaitingInTheQueueHoldsBackNewReaders) {
  PostgresBackend pg(options());
  const std::string name = test_name();
  using Rw = dlock::RwLock<PostgresBackend>;
  Rw first(pg, name, {.ttl = 30s}), writer(pg, name, {.ttl = 30s}), late(pg, name, {.ttl = 30s});
  ASSERT_TRUE(first.try_lock_shared());
  std::atomic<bool> wrote{false};
  LoopThread loop;
  writer.async_lock(asio::bind_executor(loop.io, [&](boost::system::error_code ec, Rw::async_write_guard g) {
    EXPECT_FALSE(ec) << ec.message();
    wrote = !ec && g.owns_lock();
  }));
  const bool refused = eventually_holds(
      [&] {
        if (!late.try_lock_shared()) return true;
        late.unlock_shared();
        return false;
      },
      2s);
  EXPECT_TRUE(refused) << "new readers kept entering while the asynchronous writer waited";
  EXPECT_FALSE(wrote.load());
  first.unlock_shared();
  EXPECT_TRUE(eventually_holds([&] { return wrote.load(); }, 2s));
  loop.join();
}

// issue 13: a server of the test's own stopped (fast shutdown) while an
// asynchronous acquire waits in its queue: the wait's session is terminated
// (a ConnectionError), and later attempts are refused: errc::connection by the
// 1 s deadline, the loop's 1 ms timer ticking throughout. (A server that only
// stops answering, SIGSTOP, gives the wait's TimeoutError instead:
// PgAsync.AServerThatStopsAnsweringMidWaitGivesATimeoutByTheDeadline.)
TEST(PgAsyncWait, AServerStoppedMidWaitGivesAConnectionErrorByTheDeadline) {
  PostgresServer own;
  if (own.external()) GTEST_SKIP() << "DLOCK_TEST_PG is set: no server of the test's own to stop";
  PostgresBackend pg(options({.conninfo = own.conninfo(), .connect_timeout = 300ms, .statement_timeout = 300ms}));
  dlock::test::expect_stopped_server_gives_connection_error(pg, test_name(), [&] { own.stop(); });
}

}  // namespace
