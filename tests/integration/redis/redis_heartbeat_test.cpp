// Auto-extend and lost-lock signalling against a real redis-server: a long
// hold stays exclusive, an operator's DEL is noticed within one extension
// interval, a paused server costs the holder its lock no later than its
// validity ends, batched extensions, and destruction orders.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <span>
#include <chrono>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "redis/redis_test_support.hpp"
#include "unit/test_support.hpp"
#include "support/counting_backend.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::LockOptions;
using dlock::LostEvent;
using dlock::LostReason;
using dlock::RedisBackend;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;
using SteadyClock = std::chrono::steady_clock;
using dlock::test::eventually;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

// Counts events of one type, thread-safely.
struct Counting : dlock::Observer {
  std::atomic<int> lost{0}, extended{0};
  void on_event(const dlock::Event& e) noexcept override {
    if (e.type == dlock::EventType::lost) ++lost;
    if (e.type == dlock::EventType::extended) ++extended;
  }
};

}  // namespace

using RedisHeartbeat = RedisTest;

TEST_F(RedisHeartbeat, HoldOfFiveTtlsStaysExclusive) {
  auto counting = std::make_shared<Counting>();
  Lock<RedisBackend> holder(redis(), "job", {.ttl = 500ms, .auto_extend = true, .observer = counting});
  RedisBackend other_client(options());  // another connection pool, as another process would have
  Lock<RedisBackend> other(other_client, "job");
  auto g = holder.acquire();
  const auto end = SteadyClock::now() + 2500ms;  // 5 x ttl
  int tries = 0;
  while (SteadyClock::now() < end) {
    EXPECT_FALSE(other.try_lock());
    ++tries;
    std::this_thread::sleep_for(25ms);
  }
  EXPECT_GT(tries, 20);
  EXPECT_TRUE(g.owns_lock());
  EXPECT_FALSE(g.stop_token().stop_requested());
  EXPECT_GE(counting->extended.load(), 10);  // every ~167 ms for 2.5 s: ~15
  EXPECT_EQ(counting->lost.load(), 0);
  g.unlock();
  EXPECT_TRUE(other.try_lock());
}

TEST_F(RedisHeartbeat, AdminDelIsSignalledWithinOneExtensionInterval) {
  auto counting = std::make_shared<Counting>();
  Lock<RedisBackend> lock(redis(), "job",
                          {.ttl = 3s, .auto_extend = true, .extend_interval = 300ms, .observer = counting});
  auto g = lock.acquire();
  std::atomic<int> calls{0};
  std::atomic<int> reason{-1};
  g.on_lost([&](const LostEvent& e) {
    reason = static_cast<int>(e.reason);
    ++calls;
  });
  const auto token = g.stop_token();

  cmd({"DEL", key("job")});  // an operator deletes the key behind the holder's back
  const auto deleted_at = SteadyClock::now();
  ASSERT_TRUE(eventually([&] { return token.stop_requested(); }, 3s));
  EXPECT_LT(SteadyClock::now() - deleted_at, 300ms + 500ms);  // one interval, plus scheduling on a busy machine
  ASSERT_TRUE(eventually([&] { return calls.load() == 1; }, 1s));
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(reason.load(), static_cast<int>(LostReason::taken));
  EXPECT_EQ(counting->lost.load(), 1);
  EXPECT_FALSE(g.owns_lock());
  EXPECT_THROW((void)g.fencing_token(), dlock::LockLostError);
}

TEST_F(RedisHeartbeat, PausedServerCostsTheLockNoLaterThanItsValidity) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  dlock::RedisOptions o = server.options();
  o.command_timeout = 2s;  // longer than the TTL: a hung extension must not delay the signal
  RedisBackend redis(o);
  Lock<RedisBackend> lock(redis, "job", {.ttl = 900ms, .auto_extend = true, .observer = quiet()});
  auto g = lock.acquire();
  std::mutex mu;
  std::optional<SteadyClock::time_point> stopped_at;
  std::stop_callback on_stop(g.stop_token(), [&] {
    std::lock_guard lk(mu);
    stopped_at = SteadyClock::now();
  });
  std::this_thread::sleep_for(100ms);
  server.pause();  // SIGSTOP: no answers, no errors
  const auto paused_at = SteadyClock::now();
  const auto valid_until = g.valid_until();  // not extended any more from here on
  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard lk(mu);
        return stopped_at.has_value();
      },
      5s));
  server.resume();
  std::lock_guard lk(mu);
  // Told at the end of its validity (steady clock), not when Redis came back.
  EXPECT_LE(*stopped_at, valid_until + 300ms);
  EXPECT_LT(*stopped_at - paused_at, 900ms + 300ms);
  EXPECT_FALSE(g.owns_lock());
}

using CountingRedis = dlock::test::CountingBackend<RedisBackend>;
static_assert(dlock::BatchesExtend<RedisBackend>);
static_assert(dlock::BatchesExtend<CountingRedis>);

TEST_F(RedisHeartbeat, ManyLocksAreExtendedInPipelinedBatches) {
  constexpr int n = 300;
  CountingRedis counting_redis(redis());
  auto counting = std::make_shared<Counting>();
  std::vector<std::unique_ptr<Lock<CountingRedis>>> locks;
  for (int i = 0; i < n; ++i) {
    locks.push_back(
        std::make_unique<Lock<CountingRedis>>(counting_redis, "batch:" + std::to_string(i),
                                              LockOptions{.ttl = 900ms, .auto_extend = true, .observer = counting}));
    locks.back()->lock();
  }
  std::this_thread::sleep_for(1800ms);  // two ttls: each lock extended ~6 times
  for (auto& l : locks) EXPECT_TRUE(l->owns_lock());
  const auto& c = counting_redis.counts();
  EXPECT_GE(counting->extended.load(), n * 4);
  EXPECT_EQ(counting->lost.load(), 0);
  EXPECT_EQ(c.single.load(), 0);
  EXPECT_GE(c.items.load(), long{n} * 4);
  EXPECT_LE(c.batches.load(), c.items.load() / 20) << "round trips should be far fewer than extensions";
  std::printf("%ld extensions of %d locks in %ld pipelined round trips\n", c.items.load(), n, c.batches.load());
  for (auto& l : locks) l->unlock();
}

TEST_F(RedisHeartbeat, BackendObjectDestroyedBeforeTheGuard) {
  auto backend = std::make_unique<RedisBackend>(options());
  Lock<RedisBackend> lock(*backend, "job", {.ttl = 300ms, .auto_extend = true});
  auto g = lock.acquire();
  backend.reset();                     // the application's handle goes first
  std::this_thread::sleep_for(400ms);  // extensions continue through the lock's copy
  EXPECT_TRUE(g.owns_lock());
  g.unlock();
  Lock<RedisBackend> other(redis(), "job");
  EXPECT_TRUE(other.try_lock());
}

TEST_F(RedisHeartbeat, GuardDestroyedWhileItsExtensionWaitsOnAPausedServer) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  dlock::RedisOptions o = server.options();
  o.command_timeout = 300ms;
  o.connect_timeout = 300ms;
  RedisBackend redis(o);
  {
    Lock<RedisBackend> lock(redis, "job", {.ttl = 600ms, .auto_extend = true, .observer = quiet()});
    auto g = lock.acquire();
    server.pause();
    std::this_thread::sleep_for(250ms);  // an extension is now stuck on the paused server
  }  // guard and lock go while the heartbeat's worker waits: release times out, nothing dangles
  server.resume();
  Lock<RedisBackend> other(redis, "job");
  EXPECT_TRUE(other.try_lock_for(3s));  // freed by TTL at the latest
}

TEST_F(RedisHeartbeat, AStalledServerDoesNotCostLocksOnAnotherServer) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer stalled({"--enable-debug-command", "local"});
  RedisServer healthy;
  dlock::RedisOptions so = stalled.options();
  so.command_timeout = 5s;  // the stalled server's extensions wait out the whole stall
  RedisBackend stalled_redis(so);
  RedisBackend healthy_redis(healthy.options());
  RedisBackend admin(so);
  auto counting = std::make_shared<Counting>();
  Lock<RedisBackend> a(stalled_redis, "a", {.ttl = 600ms, .auto_extend = true, .observer = quiet()});
  Lock<RedisBackend> b(healthy_redis, "b", {.ttl = 600ms, .auto_extend = true, .observer = counting});
  a.lock();
  b.lock();
  const auto b_token = b.stop_token();
  const int before = counting->extended.load();
  // DEBUG SLEEP blocks the whole server for 2 s, more than three of b's TTLs;
  // waiting for it to end is the point of the test.
  std::thread sleeper([&] { (void)admin.node().command({"DEBUG", "SLEEP", "2"}); });
  sleeper.join();
  EXPECT_FALSE(b_token.stop_requested());
  EXPECT_TRUE(b.owns_lock());
  EXPECT_EQ(counting->lost.load(), 0);
  EXPECT_GE(counting->extended.load() - before, 6);  // every 200 ms for 2 s: ~10
  b.unlock();
  a.unlock();
}
