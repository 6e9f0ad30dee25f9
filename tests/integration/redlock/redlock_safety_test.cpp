// RedlockBackend safety against five real redis-servers (issue 11, items 1,
// 10 and 16, per node):
//   - fencing tokens keep increasing after the nodes restart from stale snapshots;
//   - the nodes' counters stay equal in steady state, so a grant needs no
//     second (fence-raise) round;
//   - a node whose key already holds this owner id (an in-doubt earlier
//     attempt) counts as granted; abandon() deletes this owner's keys only;
//   - a release by an ACL user without channel permission succeeds.
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <variant>
#include <vector>

#include "redlock_test_support.hpp"

using namespace std::chrono_literals;
using dlock::AcquireRequest;
using dlock::OwnerId;
using dlock::RedlockBackend;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;
using RedlockLock = dlock::Lock<RedlockBackend>;
using Grant = dlock::Grant<dlock::NoHandle>;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

AcquireRequest request(std::string_view name, const OwnerId& owner, std::chrono::milliseconds ttl) {
  return AcquireRequest{name, owner, ttl, std::chrono::steady_clock::now()};
}

// Calls of EVALSHA/EVAL node i has answered since its statistics were reset.
long long script_calls(RedlockTest& t, std::size_t i) {
  const std::string info = t.cmd(i, {"INFO", "commandstats"}).str;
  long long n = 0;
  for (const char* name : {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="}) {
    const auto at = info.find(name);
    if (at != std::string::npos) n += std::stoll(info.substr(at + std::string(name).size()));
  }
  return n;
}

// Item 1 on every node: SAVE, two acquisitions, kill -9 of all five, restart
// from their RDB files. Every node comes back with the counter of the
// snapshot, below the tokens handed out after it.
TEST_F(RedlockTest, TokensKeepIncreasingAfterTheNodesRestartFromStaleSnapshots) {
  RedlockBackend rl(options());
  RedlockLock lock(rl, "stale", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  for (std::size_t i = 0; i < 5; ++i) ASSERT_EQ(cmd(i, {"SAVE"}).str, "OK");
  const std::uint64_t saved = std::stoull(get(0, fence("stale")));
  std::uint64_t highest = 0;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(lock.try_lock());
    highest = std::max(highest, lock.fencing_token());
    lock.unlock();
  }
  for (std::size_t i = 0; i < 5; ++i) server(i).kill();
  for (std::size_t i = 0; i < 5; ++i) server(i).restart();
  struct RemoveSnapshots {  // later restarts in this executable come back empty again
    RedlockTest& t;
    ~RemoveSnapshots() {
      for (std::size_t i = 0; i < 5; ++i) std::filesystem::remove(t.server(i).dir() + "/dump.rdb");
    }
  } remove{*this};
  for (std::size_t i = 0; i < 5; ++i)
    ASSERT_EQ(std::stoull(get(i, fence("stale"))), saved) << "node " << i << " did not restore the stale counter";
  ASSERT_LT(saved, highest);
  ASSERT_TRUE(lock.try_lock());
  EXPECT_GT(lock.fencing_token(), highest) << "a token went backwards after the restart";
  lock.unlock();
}

// The token rule keeps the nodes' counters equal in steady state: every node
// floors its counter at the attempt's one floor, not at its own clock, so an
// uncontended acquire and release cost one script call per node each, and
// never a fence-raise round.
TEST_F(RedlockTest, CountersStayEqualSoAGrantNeedsNoFenceRaiseRound) {
  RedlockBackend rl(options());
  RedlockLock lock(rl, "steady", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());  // connections and the first counters
  lock.unlock();
  for (std::size_t i = 0; i < 5; ++i) ASSERT_EQ(cmd(i, {"CONFIG", "RESETSTAT"}).str, "OK");
  std::uint64_t last = 0;
  for (int k = 0; k < 20; ++k) {
    ASSERT_TRUE(lock.try_lock());
    EXPECT_GT(lock.fencing_token(), last);
    last = lock.fencing_token();
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(std::stoull(get(i, fence("steady"))), last) << "node " << i;
    lock.unlock();
  }
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(script_calls(*this, i), 40) << "node " << i;
}

// A node's counter that lags the clock (restored from an old snapshot) is
// lifted by the next acquire; one far ahead is only incremented, and the
// others are raised to it.
TEST_F(RedlockTest, ALaggingCounterOnANodeIsLiftedAndOneAheadIsFollowed) {
  RedlockBackend rl(options());
  RedlockLock lock(rl, "lag", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  const std::uint64_t first = lock.fencing_token();
  lock.unlock();
  for (std::size_t i = 0; i < 5; ++i) ASSERT_EQ(cmd(i, {"SET", fence("lag"), "1000"}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  const std::uint64_t lifted = lock.fencing_token();
  EXPECT_GT(lifted, first);
  lock.unlock();
  const std::uint64_t ahead = lifted + 3'600'000'000ULL;  // an hour ahead of the clocks
  ASSERT_EQ(cmd(2, {"SET", fence("lag"), std::to_string(ahead)}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(lock.fencing_token(), ahead + 1);
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(std::stoull(get(i, fence("lag"))), ahead + 1) << "node " << i;
    // Kept at least until the node's clock has passed the raised value.
    EXPECT_GT(cmd(i, {"PTTL", fence("lag")}).integer, 3'500'000) << "node " << i;
  }
}

// Item 10, per node: an attempt whose reply was lost may have left this
// owner's key on the nodes. A retry with the same owner id is granted there
// (not "held"), with the token the lost reply carried.
TEST_F(RedlockTest, ANodeThatAlreadyHoldsThisOwnersKeyCountsAsGranted) {
  RedlockBackend rl(options());
  const OwnerId owner = OwnerId::generate();
  const auto first = rl.try_acquire(request("doubt", owner, 8s));
  ASSERT_TRUE(std::holds_alternative<Grant>(first));
  const auto token = std::get<Grant>(first).token;
  for (std::size_t i = 0; i < 5; ++i) ASSERT_EQ(cmd(i, {"PEXPIRE", key("doubt"), "3000"}).integer, 1);
  // The reply of `first` was "lost": the same owner retries.
  const auto retry = rl.try_acquire(request("doubt", owner, 8s));
  ASSERT_TRUE(std::holds_alternative<Grant>(retry)) << "the in-doubt owner was told its own lock is held";
  EXPECT_EQ(std::get<Grant>(retry).token, token);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_GT(cmd(i, {"PTTL", key("doubt")}).integer, 7000) << "node " << i;

  // Only some nodes kept it (a partial attempt); the others are free: granted everywhere.
  const OwnerId partial = OwnerId::generate();
  for (std::size_t i = 0; i < 3; ++i)
    ASSERT_EQ(cmd(i, {"SET", key("part"), std::string(partial.str()), "PX", "8000"}).str, "OK");
  const auto got = rl.try_acquire(request("part", partial, 8s));
  ASSERT_TRUE(std::holds_alternative<Grant>(got));
  EXPECT_EQ(holders("part", partial.str()), 5u);
  // Another owner still finds the lock held.
  EXPECT_TRUE(std::holds_alternative<dlock::Contended>(rl.try_acquire(request("part", OwnerId::generate(), 8s))));
}

// Item 10: abandon() deletes this owner's keys on every node, nobody else's,
// and never throws, also with a majority of the nodes down.
TEST_F(RedlockTest, AbandonDeletesOnlyTheOwnersKeysAndNeverThrows) {
  static_assert(dlock::AbandonsInDoubt<RedlockBackend>);
  RedlockBackend rl(options());
  const OwnerId owner = OwnerId::generate(), other = OwnerId::generate();
  ASSERT_TRUE(std::holds_alternative<Grant>(rl.try_acquire(request("ab", owner, 10s))));
  rl.abandon("ab", other);
  EXPECT_EQ(holders("ab", owner.str()), 5u);
  rl.abandon("ab", owner);
  EXPECT_EQ(keys_present("ab"), 0u);
  ASSERT_TRUE(std::holds_alternative<Grant>(rl.try_acquire(request("ab", other, 10s))));
  for (std::size_t i = 0; i < 3; ++i) server(i).kill();
  const auto t0 = std::chrono::steady_clock::now();
  rl.abandon("ab", other);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(holders("ab", other.str()), 0u);  // the two running nodes deleted theirs
}

// Item 16 on every node: an ACL user without channel permission.
TEST_F(RedlockTest, AReleaseWhosePublishIsRefusedStillReleases) {
  const std::string user = "dlock-test-" + std::string(OwnerId::generate().str()).substr(24);
  const std::string password = "s3cret-pass";
  const std::string keys = "~" + prefix_ + "*";
  for (std::size_t i = 0; i < 5; ++i)
    ASSERT_EQ(cmd(i, {"ACL", "SETUSER", user, "on", ">" + password, keys, "resetchannels", "+@all"}).str, "OK");
  struct DeleteUser {
    RedlockTest& t;
    const std::string& user;
    ~DeleteUser() {
      for (std::size_t i = 0; i < 5; ++i) {
        try {
          (void)t.cmd(i, {"ACL", "DELUSER", user});
        } catch (...) {
        }
      }
    }
  } cleanup{*this, user};
  dlock::RedlockOptions o = options();
  for (auto& n : o.nodes) {
    n.username = user;
    n.password = password;
  }
  RedlockBackend rl(o);
  RedlockLock lock(rl, "noperm", {.ttl = 10s, .observer = quiet()});
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(lock.try_lock());
    EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
    EXPECT_EQ(keys_present("noperm"), 0u);
  }
  const std::string why = rl.publish_refusal();
  EXPECT_NE(why.find("PUBLISH"), std::string::npos) << why;
  EXPECT_EQ(why.find(password), std::string::npos) << why;
}

}  // namespace
