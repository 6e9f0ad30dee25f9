// The primitives' asynchronous forms on PostgresBackend (issues 13 and 16):
// the shared coroutine checks (tests/unit/primitive_async_checks.hpp) on a
// real server, in both scopes: readers overlap and a writer never does, many
// coroutines on 3 permits never exceed 3 holders while a 1 ms timer on the
// same thread keeps ticking, one campaign wins with a term that increases on
// the next leader and a stop_token ends the others' waits, cancellation at
// random points (permits, readers, writers, campaigns) leaves no lease held on
// the server (pg_locks, through monitor(), has none of the primitives' keys),
// and the writer's, the permit's and the leader's views pass the mutex's async checks.
#include <dlock/dlock.hpp>
#include <dlock/election.hpp>
#include <dlock/postgres.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <string>

#include "pg_test_support.hpp"
#include "support/async_checks.hpp"
#include "unit/primitive_async_checks.hpp"

using namespace std::chrono_literals;
using dlock::LockOptions;
using dlock::PostgresBackend;
using namespace dlock::test::pg;

template <class S>
concept HasAsyncAcquire = requires(S& s) {
  s.async_acquire(boost::asio::use_awaitable);
};
template <class E>
concept HasAsyncCampaign = requires(E& e) {
  e.async_campaign(boost::asio::use_awaitable);
};
static_assert(HasAsyncAcquire<dlock::Semaphore<PostgresBackend>>);
static_assert(HasAsyncCampaign<dlock::Election<PostgresBackend>>);
static_assert(dlock::AsyncBackend<dlock::detail::SharedView<PostgresBackend>>);
static_assert(dlock::AsyncBackend<dlock::detail::PermitView<PostgresBackend>>);
static_assert(dlock::AsyncBackend<dlock::detail::LeaderView<PostgresBackend>>);

namespace {

const LockOptions fast{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 10ms}};

// No advisory lock of a primitive held or awaited on the server (pg_locks):
// every test here ends with its leases released, and the server is this executable's.
void expect_no_primitive_lock_on_the_server(PostgresBackend& pg) {
  int left = 0;
  for (const auto& row : pg.monitor()) left += row.primitive ? 1 : 0;
  EXPECT_EQ(left, 0) << "a primitive's advisory lock was left in pg_locks";
}

TEST(PgPrimitivesAsync, FortyCoroutinesOnThreePermitsNeverExceedThree) {
  PostgresBackend pg(options({.pool_size = 48}));
  dlock::test::expect_semaphore_bounds_holders(pg, test_name(), 40, 3, 3, fast);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, FortyCoroutinesOnThreePermitsInTransactionScope) {
  PostgresBackend pg(options({.pool_size = 48, .scope = dlock::PostgresOptions::Scope::transaction}));
  pg.install_schema();  // the operators' table exists: its count is read in the try (none set here)
  dlock::test::expect_semaphore_bounds_holders(pg, test_name(), 40, 3, 3, fast);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, TheOperatorsCountBindsTheAsynchronousAcquire) {
  PostgresBackend pg(options({.pool_size = 48}));
  pg.install_schema();
  pg.set_permits(test_name(), 2);  // the callers say 5: the operators' 2 is in force
  dlock::test::expect_semaphore_bounds_holders(pg, test_name(), 20, 3, 2, fast, 5);
  pg.set_permits(test_name(), std::nullopt);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, ExactlyOneCampaignWinsAndTheNextTermIsHigher) {
  PostgresBackend pg(options({.pool_size = 16}));
  pg.install_schema();  // terms are the fencing sequence's values
  dlock::test::expect_one_campaign_wins(pg, test_name(), 5);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, ExactlyOneCampaignWinsInTransactionScope) {
  PostgresBackend pg(options({.pool_size = 16, .scope = dlock::PostgresOptions::Scope::transaction}));
  pg.install_schema();
  dlock::test::expect_one_campaign_wins(pg, test_name(), 5);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, ReadersOverlapAndAWriterOverlapsNothing) {
  PostgresBackend pg(options({.pool_size = 32}));
  dlock::test::expect_readers_overlap_writers_exclude(pg, test_name(), 12, 2, 4, fast);
}

TEST(PgPrimitivesAsync, ReadersOverlapAndAWriterOverlapsNothingInTransactionScope) {
  PostgresBackend pg(options({.pool_size = 32, .scope = dlock::PostgresOptions::Scope::transaction}));
  dlock::test::expect_readers_overlap_writers_exclude(pg, test_name(), 12, 2, 4, fast);
}

TEST(PgPrimitivesAsync, CancellationAtRandomPointsLeavesNothingHeldOnTheServer) {
  PostgresBackend pg(options({.pool_size = 48}));
  (void)pg.has_fencing();  // the first tries' look-up done: the cancellations meet grants too
  // Within 500 ms: each task's first attempt opens a connection of its own (a lease pins one).
  dlock::test::expect_primitive_cancellation_leaves_nothing(pg, test_name(), 40, 5, 500ms);
  expect_no_primitive_lock_on_the_server(pg);
}

TEST(PgPrimitivesAsync, TheWritersViewPassesTheMutexAsyncChecks) {
  PostgresBackend pg(options({.pool_size = 24}));
  pg.install_schema();  // the fencing sequence: the checks compare tokens
  dlock::detail::ExclusiveView<PostgresBackend> writer(pg);
  dlock::test::expect_coroutines_exclude_each_other(
      writer, test_name(), 40, 2, 2, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
  dlock::test::expect_extend_and_release_complete(writer, test_name() + "-ext");
}

// Fair mode on PostgreSQL is the server's queue, which the asynchronous
// acquire joins too (AsyncWaitsOnServer): it is accepted and acquires; the
// order itself is pg_async_wait_test's.
TEST(PgPrimitivesAsync, FairModeHasAnAsynchronousAcquireOnPostgres) {
  PostgresBackend pg(options());
  dlock::Lock<PostgresBackend> fair(pg, test_name(), LockOptions{.ttl = 10s, .fair = true});
  boost::asio::io_context io;
  boost::system::error_code result = dlock::make_async_error_code(dlock::errc::timeout);
  bool held = false;
  fair.async_acquire(boost::asio::bind_executor(io, [&](boost::system::error_code ec, auto g) {
    result = ec;
    held = g.owns_lock();
  }));
  io.run_for(5s);
  EXPECT_FALSE(result) << result.message();
  EXPECT_TRUE(held);
}

TEST(PgPrimitivesAsync, ThePermitsAndTheLeadersViewsPassTheMutexAsyncChecks) {
  PostgresBackend pg(options({.pool_size = 24}));
  pg.install_schema();
  dlock::detail::PermitView<PostgresBackend> permit(pg, dlock::detail::PermitOps{1});
  dlock::detail::LeaderView<PostgresBackend> leader(pg, dlock::detail::LeaderOps{"candidate"});
  const LockOptions o{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}};
  dlock::test::expect_coroutines_exclude_each_other(permit, test_name() + "-permit", 24, 2, 2, o);
  dlock::test::expect_extend_and_release_complete(permit, test_name() + "-permit-ext");
  dlock::test::expect_coroutines_exclude_each_other(leader, test_name() + "-leader", 24, 2, 2, o);
  dlock::test::expect_extend_and_release_complete(leader, test_name() + "-leader-ext");
  expect_no_primitive_lock_on_the_server(pg);
}

}  // namespace
