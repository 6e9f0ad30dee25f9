// Auto-extend against a real redis-server: batched extensions, destruction
// orders, and a stalled server that costs no locks on another server. Long
// holds, an operator's DEL and a silent server during a hold: the conformance
// suite (tests/conformance), on every backend.
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
  // Every lock extended four times: more than one TTL of real server time.
  EXPECT_TRUE(eventually([&] { return counting->extended.load() >= n * 4; }, 20s));
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
  auto counting = std::make_shared<Counting>();
  Lock<RedisBackend> lock(*backend, "job", {.ttl = 300ms, .auto_extend = true, .observer = counting});
  auto g = lock.acquire();
  const auto first = g.valid_until();
  backend.reset();  // the application's handle goes first
  // Extensions continue through the lock's copy.
  EXPECT_TRUE(eventually([&] { return counting->extended.load() >= 2; }, 5s));
  EXPECT_GT(g.valid_until(), first);
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
  CountingRedis counting(redis);
  {
    Lock<CountingRedis> lock(counting, "job", {.ttl = 600ms, .auto_extend = true, .observer = quiet()});
    auto g = lock.acquire();
    server.pause();
    // An extension is now stuck on the paused server.
    EXPECT_TRUE(eventually([&] { return counting.counts().single + counting.counts().batches >= 1; }, 5s));
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
