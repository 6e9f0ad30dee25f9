// RwLock<RedlockBackend> and Election<RedlockBackend> against five real
// redis-servers: readers overlap and a writer never overlaps anything, a
// writer gets in behind a stream of readers, a reader or writer granted on a
// minority is undone on every node it reached, tokens order writes and reads
// even when the node with the largest counter goes away, 2 of 5 nodes killed
// still works and 3 of 5 refuses; one leader at a time across 3 candidate
// processes with increasing terms, and a paused leader losing to a higher term.
// (The writer and the leader also run the mutex conformance suite:
// tests/conformance/redlock_primitives_conformance_test.cpp; the asynchronous
// forms: redlock_primitives_async_test.cpp.)
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/election.hpp>
#include <dlock/redlock.hpp>
#include <dlock/rw_lock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stop_token>
#include <thread>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <variant>

#include "redlock_test_support.hpp"
#include "support/primitive_scenarios.hpp"

using namespace std::chrono_literals;
using dlock::RedlockBackend;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;
using Clock = std::chrono::steady_clock;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

class RedlockPrimitives : public RedlockTest {
 protected:
  static dlock::LockOptions quick(std::chrono::milliseconds ttl = 10s) {
    return {.ttl = ttl, .retry = {.initial_delay = 1ms, .max_delay = 50ms}};
  }
  // The default node_timeout (50 ms) is tight on a loaded 2-core machine.
  [[nodiscard]] dlock::RedlockOptions roomy() const {
    auto o = options();
    o.node_timeout = 250ms;
    return o;
  }
  // A backend per process, made in the child after fork().
  [[nodiscard]] auto make() const {
    return [o = roomy()] { return RedlockBackend(o); };
  }
  [[nodiscard]] dlock::detail::RedisPrimitiveKeys pk(std::string_view name) const {
    return dlock::detail::redis_primitive_keys(prefix_, name);
  }
  // How many nodes have `owner` among the readers of `name`.
  std::size_t reader_nodes(std::string_view name, std::string_view owner) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < cluster().size(); ++i)
      if (server(i).running() &&
          cmd(i, {"ZSCORE", pk(name).rw_readers, owner}).type == dlock::detail::RedisValue::Type::string)
        ++n;
    return n;
  }
  std::size_t writer_nodes(std::string_view name, std::string_view owner) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < cluster().size(); ++i)
      if (server(i).running() && get(i, pk(name).rw_writer) == owner) ++n;
    return n;
  }
  // A foreign live reader on node i (its lease ends in 30 s, by the server's clock).
  void foreign_reader(std::size_t i, std::string_view name) {
    const auto t = cmd(i, {"TIME"});
    const long long now_ms = std::stoll(t.elements.at(0).str) * 1000 + std::stoll(t.elements.at(1).str) / 1000;
    ASSERT_EQ(cmd(i, {"ZADD", pk(name).rw_readers, std::to_string(now_ms + 30000), "someone-else"}).integer, 1);
  }
};

// A reader refused by a majority (a writer holds 3 of 5 nodes) is undone on
// the 2 nodes that granted it before try_lock_shared returns; a writer refused
// by a majority (live readers on 3 of 5) likewise; the others' state is untouched.
TEST_F(RedlockPrimitives, AGrantOnAMinorityIsUndoneOnEveryNodeItReached) {
  for (std::size_t i = 0; i < 3; ++i)
    ASSERT_EQ(cmd(i, {"SET", pk("minority").rw_writer, "someone-else", "PX", "10000"}).str, "OK");
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> rw(rl, "minority", quick());
  const auto owner = dlock::OwnerId::generate();
  const auto r = rl.try_acquire_shared({"minority", owner, 10s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(r));
  EXPECT_EQ(reader_nodes("minority", owner.str()), 0u) << "a refused reader was left on the nodes that granted it";
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(get(i, pk("minority").rw_writer), "someone-else");

  for (std::size_t i = 0; i < 3; ++i) foreign_reader(i, "readers");
  const auto w = rl.try_acquire_exclusive({"readers", owner, 10s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(w));
  EXPECT_EQ(writer_nodes("readers", owner.str()), 0u) << "a refused writer was left on the nodes that granted it";
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(cmd(i, {"ZCARD", pk("readers").rw_readers}).integer, 1);
}

// A reader is granted on every node; a writer is refused while it reads and
// gets in once it leaves; std::shared_lock and std::unique_lock work.
TEST_F(RedlockPrimitives, ReaderAndWriterOnEveryNode) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> a(rl, "rw", quick());
  dlock::RwLock<RedlockBackend> b(rl, "rw", quick());
  {
    std::shared_lock ra(a);
    std::shared_lock rb(b);  // readers overlap
    EXPECT_FALSE(b.try_lock());
    EXPECT_EQ(cmd(0, {"ZCARD", pk("rw").rw_readers}).integer, 2);
  }
  {
    std::unique_lock w(b);
    EXPECT_FALSE(a.try_lock_shared());
    EXPECT_FALSE(a.try_lock());
    std::size_t held = 0;
    for (std::size_t i = 0; i < 5; ++i) held += cmd(i, {"EXISTS", pk("rw").rw_writer}).integer == 1 ? 1 : 0;
    EXPECT_EQ(held, 5u);
  }
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(cmd(i, {"EXISTS", pk("rw").rw_writer}).integer, 0);
    EXPECT_EQ(cmd(i, {"ZCARD", pk("rw").rw_readers}).integer, 0);
  }
}

// What a reader's token means (primitives_backend.hpp), across nodes: the
// node with the largest counter serves a reader and then goes away; a later
// writer's token is still above the reader's (the reader's grant raised the
// other granting nodes' counters to its token), and a later reader's token is
// at least that writer's.
TEST_F(RedlockPrimitives, TokensOrderReadsAndWritesWhenTheLargestCounterGoesAway) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> rw(rl, "tokens", quick());
  ASSERT_TRUE(rw.try_lock());  // creates the counters on every node
  const std::uint64_t first = rw.writer().fencing_token();
  rw.unlock();
  // Node 0's counter far ahead of the others (a node that granted more).
  ASSERT_EQ(cmd(0, {"SET", fence("tokens"), std::to_string(first + 1'000'000'000)}).str, "OK");
  ASSERT_TRUE(rw.try_lock_shared());
  const std::uint64_t read = rw.reader().fencing_token();
  EXPECT_GE(read, first + 1'000'000'000);
  rw.unlock_shared();
  server(0).kill();
  ASSERT_TRUE(rw.try_lock());
  const std::uint64_t write = rw.writer().fencing_token();
  EXPECT_GT(write, read) << "a write after a read got a token not above the reader's";
  rw.unlock();
  ASSERT_TRUE(rw.try_lock_shared());
  EXPECT_GE(rw.reader().fencing_token(), write);
  rw.unlock_shared();
}

// 2 of 5 nodes killed: readers and writers still get in; 3 of 5: both are
// refused (ConnectionError) and nothing is left on the live nodes.
TEST_F(RedlockPrimitives, TwoOfFiveNodesDownWorksThreeRefuses) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> rw(rl, "down", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(rw.try_lock_shared());  // connections open to every node
  rw.unlock_shared();
  server(1).kill();
  server(3).kill();
  ASSERT_TRUE(rw.try_lock_shared());
  EXPECT_EQ(reader_nodes("down", rw.reader().owner_id()), 3u);
  rw.unlock_shared();
  ASSERT_TRUE(rw.try_lock());
  rw.unlock();
  server(4).kill();
  EXPECT_THROW((void)rw.try_lock_shared(), dlock::ConnectionError);
  EXPECT_THROW((void)rw.try_lock(), dlock::ConnectionError);
  for (std::size_t i : {0, 2}) {
    EXPECT_EQ(cmd(i, {"ZCARD", pk("down").rw_readers}).integer, 0);
    EXPECT_EQ(cmd(i, {"EXISTS", pk("down").rw_writer}).integer, 0);
  }
}

// Readers overlap; a writer never overlaps a reader or another writer (4
// processes, a shared-memory counter).
TEST_F(RedlockPrimitives, RwLockWriterNeverOverlapsAnything) {
  dlock::test::rw_writers_exclude(make(), "rw-procs", quick(), 4, 15, 2);
}

// A writer behind a continuous stream of overlapping readers (3 processes, each
// always reading) gets in within 500 ms: its waiting mark stops new readers on
// the nodes where it waits.
TEST_F(RedlockPrimitives, RwLockWriterGetsInBehindAStreamOfReaders) {
  dlock::test::rw_writer_behind_reader_stream(make(), "rw-stream", quick());
}

// 3 candidate processes: exactly one leader at any time by the fenced
// resource's account; terms increase; leader() names the leader.
TEST_F(RedlockPrimitives, ElectionOneLeaderAtATime) {
  dlock::test::election_one_leader_at_a_time(make(), "election", quick(), 4);
}

// A leader paused (SIGSTOP) past its 1 s TTL (waiting for the TTL is the
// point): another candidate takes over with a higher term, and the paused one,
// once resumed, sees its stop token requested.
TEST_F(RedlockPrimitives, ElectionPausedLeaderLosesToHigherTerm) {
  auto next = quick();
  next.acquire_timeout = 10s;
  dlock::test::election_paused_leader_loses(make(), "paused", quick(1s), next);
}

// Who leads survives 2 of 5 nodes down; with 3 down it is unknown (ConnectionError).
TEST_F(RedlockPrimitives, LeaderNeedsAQuorumToBeKnown) {
  RedlockBackend rl(roomy());
  dlock::Election<RedlockBackend> e(rl, "who", "me", {.ttl = 10s, .observer = quiet()});
  EXPECT_EQ(e.leader(), std::nullopt);
  e.campaign();
  ASSERT_TRUE(e.leader().has_value());
  EXPECT_EQ(e.leader()->candidate, "me");
  EXPECT_EQ(e.leader()->term, e.term());
  server(0).kill();
  server(2).kill();
  EXPECT_EQ(e.leader()->candidate, "me");
  server(4).kill();
  EXPECT_THROW((void)e.leader(), dlock::ConnectionError);
}

// leader() names the leader with 4 of 5 nodes up, and the term it reports is
// the leader's own term (its fencing token) even when the node that gave the
// largest counter value is down: the fence raise of a leader's grant also
// writes the token into the leader info of the nodes it raises.
TEST_F(RedlockPrimitives, LeaderTermIsTheLeadersTokenWhenTheLargestNodeIsDown) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> rw(rl, "who2", quick());
  ASSERT_TRUE(rw.try_lock());  // creates the counters on every node
  const std::uint64_t first = rw.writer().fencing_token();
  rw.unlock();
  ASSERT_EQ(cmd(0, {"SET", fence("who2"), std::to_string(first + 1'000'000'000)}).str, "OK");
  dlock::Election<RedlockBackend> e(rl, "who2", "me", {.ttl = 10s, .observer = quiet()});
  e.campaign();
  ASSERT_TRUE(e.leader().has_value());
  EXPECT_EQ(e.leader()->term, e.term());
  server(0).kill();
  const auto seen = e.leader();
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->candidate, "me");
  EXPECT_EQ(seen->term, e.term()) << "leader() reports a term below the leader's fencing token";
}

// A reader waiting behind a writer is cancelled promptly by its stop_token
// (CancelledError) and leaves nothing on the nodes.
TEST_F(RedlockPrimitives, AWaitingReaderIsCancelledByItsStopToken) {
  RedlockBackend rl(roomy());
  dlock::RwLock<RedlockBackend> writer(rl, "cancel", quick());
  dlock::RwLock<RedlockBackend> reader(rl, "cancel", quick());
  std::unique_lock w(writer);
  std::stop_source stop;
  std::atomic<bool> cancelled{false};
  std::thread t([&] {
    try {
      reader.lock_shared(stop.get_token());
    } catch (const dlock::CancelledError&) {
      cancelled = true;
    }
  });
  std::this_thread::sleep_for(50ms);  // let it wait (nothing to synchronise on: it is blocked by design)
  const auto t0 = Clock::now();
  stop.request_stop();
  t.join();
  EXPECT_TRUE(cancelled);
  EXPECT_LT(Clock::now() - t0, 500ms);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(cmd(i, {"ZCARD", pk("cancel").rw_readers}).integer, 0);
}

}  // namespace
