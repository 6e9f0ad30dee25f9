// RedisBackend safety against real servers (issue 11, items 1, 10 and 16):
//   - fencing tokens keep increasing after a restart from a stale snapshot;
//   - a fencing counter is kept only briefly after its lock, and forgetting it
//     never makes tokens go backwards;
//   - an acquire whose reply timed out although its script ran (in doubt) is
//     granted to its own retry at once, and abandon() removes what it left;
//   - a release by an ACL user without channel permission succeeds.
// Tests that kill or pause a server start their own (skipped when
// DLOCK_TEST_REDIS points at an external server); the others use the shared one.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <variant>

#include "redis_test_support.hpp"
#include "unit/test_support.hpp"

using namespace std::chrono_literals;
using dlock::AcquireRequest;
using dlock::Lock;
using dlock::OwnerId;
using dlock::RedisBackend;
using dlock::RedisOptions;
using dlock::detail::RedisValue;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::server_time_us;
using Ms = std::chrono::milliseconds;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

std::shared_ptr<dlock::Observer> quiet() { return std::make_shared<dlock::test::QuietObserver>(); }

std::string get(dlock::detail::RedisClient& node, std::string_view key) {
  const RedisValue v = node.command({"GET", key});
  return v.type == RedisValue::Type::string ? v.str : std::string();
}

// Options for a server of the test's own, with a short command timeout where the test pauses it.
RedisOptions own(const RedisServer& server, Ms command_timeout = 1000ms) {
  RedisOptions o = server.options();
  o.key_prefix = "safety:";
  o.command_timeout = command_timeout;
  return o;
}

AcquireRequest request(std::string_view name, const OwnerId& owner, Ms ttl) {
  return AcquireRequest{name, owner, ttl, std::chrono::steady_clock::now()};
}

// Item 1. SAVE, two acquisitions, kill -9, restart from the RDB file: the
// server comes back with the counter of the snapshot, below the tokens handed
// out after it. The next token must still exceed all of them.
TEST(RedisSafety, TokensKeepIncreasingAfterARestartFromAStaleSnapshot) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend redis(own(server));
  const std::string fence = redis.node().keys("stale").fence;
  Lock<RedisBackend> lock(redis, "stale", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  ASSERT_EQ(redis.node().command({"SAVE"}).str, "OK");  // the snapshot the restart will load
  const std::uint64_t saved = std::stoull(get(redis.node(), fence));
  std::uint64_t highest = 0;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(lock.try_lock());
    highest = std::max(highest, lock.fencing_token());
    lock.unlock();
  }
  server.kill();  // SIGKILL: the two acquisitions after SAVE are not persisted
  server.restart();
  ASSERT_TRUE(std::filesystem::exists(server.dir() + "/dump.rdb"));
  ASSERT_EQ(std::stoull(get(redis.node(), fence)), saved) << "the restart did not restore the stale counter";
  ASSERT_LT(saved, highest);
  ASSERT_TRUE(lock.try_lock());
  EXPECT_GT(lock.fencing_token(), highest) << "a token went backwards after the restart";
  lock.unlock();
}

// Item 1, the token rule: every acquire takes max(counter, server TIME in µs)
// and increments it, so a counter that lags the clock (restored from an old
// snapshot, or written by anything else) is lifted to the clock first.
TEST_F(RedisTest, EveryAcquireLiftsALaggingCounterToTheServerClock) {
  const std::string fence = redis_keys_for("lag").fence;
  Lock<RedisBackend> lock(redis(), "lag", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  ASSERT_EQ(cmd({"SET", fence, "1000"}).str, "OK");  // far behind the clock, but present
  const std::uint64_t before = server_time_us(redis().node());
  ASSERT_TRUE(lock.try_lock());
  EXPECT_GT(lock.fencing_token(), before);
  EXPECT_LE(lock.fencing_token(), server_time_us(redis().node()) + 1);
  lock.unlock();
  // A counter ahead of the clock is only incremented.
  const std::uint64_t ahead = server_time_us(redis().node()) + 3'600'000'000ULL;  // an hour ahead
  ASSERT_EQ(cmd({"SET", fence, std::to_string(ahead)}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(lock.fencing_token(), ahead + 1);
  // ... and kept at least until the server clock passes it (here: an hour).
  EXPECT_GT(cmd({"PTTL", fence}).integer, Ms(59min).count());
}

// Item 1, bounded retention: the counter outlives its lock only by
// max(fence_ttl, 3 x ttl), and when it is gone the next token still exceeds
// every earlier one (the clock has passed them).
TEST_F(RedisTest, TheFencingCounterIsKeptOnlyBrieflyAfterItsLock) {
  const std::string fence = redis_keys_for("brief").fence;
  Lock<RedisBackend> lock(redis(), "brief", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  const std::uint64_t first = lock.fencing_token();
  lock.unlock();
  const long long pttl = cmd({"PTTL", fence}).integer;
  EXPECT_GT(pttl, Ms(30s - 1s).count());  // 3 x ttl (above the default floor)
  EXPECT_LE(pttl, Ms(30s + 1s).count());

  // The floor applies to short locks: fence_ttl 2 s, ttl 100 ms. This waits
  // for the real server to expire the counter: that is the point.
  RedisOptions o = options();
  o.fence_ttl = 2s;
  RedisBackend short_fence(o);
  Lock<RedisBackend> l2(short_fence, "brief", {.ttl = 100ms});
  ASSERT_TRUE(l2.try_lock());
  const std::uint64_t second = l2.fencing_token();
  EXPECT_GT(second, first);
  EXPECT_LE(cmd({"PTTL", fence}).integer, Ms(2s + 5ms).count());
  l2.unlock();
  ASSERT_TRUE(dlock::test::eventually(
      [&] {
        return cmd({"EXISTS", fence}).integer == 0;
      },
      10s))
      << "the counter was not forgotten";
  ASSERT_TRUE(l2.try_lock());
  EXPECT_GT(l2.fencing_token(), second);
}

// Item 10. The server is stopped (SIGSTOP) while an acquire is in flight: its
// reply times out, but the server runs the script when it resumes, granting
// the lock to an owner that never learned it. The retry with that owner id
// must be granted at once, not wait out the TTL.
TEST(RedisSafety, AnInDoubtAcquireIsGrantedToItsOwnRetryAtOnce) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend redis(own(server, 200ms));
  dlock::detail::RedisClient inspect(own(server));
  const std::string key = redis.node().keys("doubt").lock;
  const OwnerId owner = OwnerId::generate();
  ASSERT_EQ(redis.node().command({"PING"}).str, "PONG");  // a pooled connection with the scripts loaded

  server.pause();
  EXPECT_THROW((void)redis.try_acquire(request("doubt", owner, 8s)), dlock::TimeoutError);  // in doubt
  server.resume();
  // The script ran after all (waits for the resumed server, bounded).
  ASSERT_TRUE(dlock::test::eventually([&] { return get(inspect, key) == owner.str(); }, 5s));
  const std::uint64_t counter = std::stoull(get(inspect, redis.node().keys("doubt").fence));

  ASSERT_EQ(inspect.command({"PEXPIRE", key, "3000"}).integer, 1);  // as if time passed
  const auto result = redis.try_acquire(request("doubt", owner, 8s));
  const auto* grant = std::get_if<dlock::Grant<dlock::NoHandle>>(&result);
  ASSERT_NE(grant, nullptr) << "the retry of the in-doubt owner was told the lock is held";
  EXPECT_EQ(grant->token, counter);                         // the token the lost reply carried
  EXPECT_GT(inspect.command({"PTTL", key}).integer, 7000);  // the TTL is reset to the requested one

  // Another owner is still refused.
  const OwnerId other = OwnerId::generate();
  EXPECT_TRUE(std::holds_alternative<dlock::Contended>(redis.try_acquire(request("doubt", other, 8s))));
}

// Item 10, through Lock: the blocking acquire retries the in-doubt attempt
// with the same owner id and gets the lock without waiting out the TTL
// (before the fix: 4.5 s with a 4 s TTL).
TEST(RedisSafety, ABlockingAcquireWhoseFirstReplyTimedOutDoesNotWaitOutItsOwnTtl) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend redis(own(server, 200ms));
  ASSERT_EQ(redis.node().command({"PING"}).str, "PONG");
  auto obs = std::make_shared<dlock::test::RecordingObserver>();
  Lock<RedisBackend> lock(redis, "blocking", {.ttl = 4s, .acquire_timeout = 15s, .observer = obs});
  server.pause();
  std::thread resume([&] {
    // Once the first attempt's reply has timed out.
    (void)dlock::test::eventually([&] { return obs->count(dlock::EventType::attempt_failed) >= 1; }, 10s);
    server.resume();
  });
  const auto t0 = std::chrono::steady_clock::now();
  lock.lock();
  const auto took = std::chrono::steady_clock::now() - t0;
  resume.join();
  EXPECT_LT(took, 2500ms) << "the acquire waited out its own in-doubt grant";
  EXPECT_TRUE(lock.owns_lock());
  lock.unlock();
}

// Item 10: abandon() deletes what an in-doubt attempt may have left, only for
// that owner, and never throws (not even with the server gone).
TEST(RedisSafety, AbandonDeletesOnlyTheOwnersKeyAndNeverThrows) {
  DLOCK_REQUIRE_OWN_REDIS();
  static_assert(dlock::AbandonsInDoubt<RedisBackend>);
  RedisServer server;
  RedisBackend redis(own(server));
  const OwnerId owner = OwnerId::generate(), other = OwnerId::generate();
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(redis.try_acquire(request("ab", owner, 10s))));
  auto waiting = redis.subscribe_release("ab");
  redis.abandon("ab", other);  // not its key: nothing happens
  EXPECT_EQ(get(redis.node(), redis.node().keys("ab").lock), owner.str());
  redis.abandon("ab", owner);
  EXPECT_EQ(redis.node().command({"EXISTS", redis.node().keys("ab").lock}).integer, 0);
  EXPECT_TRUE(waiting.wait_for(2s)) << "waiters were not woken";
  EXPECT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(redis.try_acquire(request("ab", other, 10s))));

  server.pause();  // a server that does not answer: abandon returns after its short timeout
  auto t0 = std::chrono::steady_clock::now();
  redis.abandon("ab", other);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms);
  server.resume();
  server.kill();
  t0 = std::chrono::steady_clock::now();
  redis.abandon("ab", other);  // refused: returns at once
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms);
}

// Item 16. An ACL user without channel permission (Redis 7's default
// `acl-pubsub-default resetchannels`): the release script deletes the key,
// its PUBLISH is refused. The release is still a release, and the refusal is
// kept (and logged once) instead of failing every release.
TEST_F(RedisTest, AReleaseWhosePublishIsRefusedStillReleases) {
  const AclUser user(*this, {"~" + prefix_ + "*", "resetchannels", "+@all"});
  RedisOptions o = options();
  o.username = user.name;
  o.password = user.password;
  RedisBackend restricted(o);
  Lock<RedisBackend> lock(restricted, "noperm", {.ttl = 10s, .observer = quiet()});
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(lock.try_lock());
    EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
    EXPECT_EQ(cmd({"EXISTS", key("noperm")}).integer, 0) << "the lock is not free";
  }
  const std::string why = restricted.publish_refusal();
  EXPECT_NE(why.find("PUBLISH"), std::string::npos) << why;
  EXPECT_NE(why.find(restricted.endpoint()), std::string::npos) << why;
  EXPECT_EQ(why.find(user.password), std::string::npos) << why;
  // The user with channel permission publishes as before: no refusal.
  Lock<RedisBackend> normal(redis(), "perm", {.ttl = 10s});
  ASSERT_TRUE(normal.try_lock());
  EXPECT_EQ(normal.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(redis().publish_refusal(), "");
}

}  // namespace
