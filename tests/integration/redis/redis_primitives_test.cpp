// RwLock, Semaphore and Election on RedisBackend (a real redis-server): what
// the mutex conformance suite does not cover (readers overlapping, writer
// preference, several permits, the permit count changed live, who leads).
// Threads stand for processes: each has a backend of its own.
#include <dlock/dlock.hpp>
#include <dlock/election.hpp>
#include <dlock/redis.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <shared_mutex>
#include <string>
#include <thread>
#include <stdexcept>
#include <variant>
#include <vector>

#include "redis_test_support.hpp"

using namespace std::chrono_literals;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisPrimitives : public dlock::test::RedisTest {
 protected:
  static dlock::LockOptions quick() { return {.ttl = 5s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}}; }
};

TEST_F(RedisPrimitives, ReadersOverlapWritersExcludeAndAWaitingWriterStopsNewReaders) {
  dlock::RedisBackend a(options()), b(options()), c(options());
  dlock::RwLock<dlock::RedisBackend> ra(a, "doc", quick()), rb(b, "doc", quick()), w(c, "doc", quick());
  ASSERT_TRUE(ra.try_lock_shared());
  ASSERT_TRUE(rb.try_lock_shared());   // two readers at once
  EXPECT_FALSE(w.try_lock_for(30ms));  // the writer waits, and leaves its mark
  rb.unlock_shared();
  EXPECT_FALSE(rb.try_lock_shared());  // writer preference: no new reader while it waits
  ra.unlock_shared();
  ASSERT_TRUE(w.try_lock());
  const auto write_token = w.writer().fencing_token();
  EXPECT_FALSE(ra.try_lock_shared());  // no reader beside the writer
  w.unlock();
  {
    std::shared_lock read(ra);
    EXPECT_GE(ra.reader().fencing_token(), write_token);
  }
  ASSERT_TRUE(w.try_lock());
  EXPECT_GT(w.writer().fencing_token(), write_token);
  w.unlock();
}

TEST_F(RedisPrimitives, EightHoldersOnThreePermitsNeverExceedThree) {
  std::atomic<int> holding{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      dlock::RedisBackend redis(options());
      dlock::Semaphore<dlock::RedisBackend> sem(redis, "pool", 3, quick());
      for (int i = 0; i < 15; ++i) {
        sem.acquire();
        const int now = holding.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(1ms);  // the work inside the permit
        holding.fetch_sub(1);
        sem.release();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(most.load(), 3);
  EXPECT_GE(most.load(), 2);  // they did overlap
}

TEST_F(RedisPrimitives, PermitCountChangedLive) {
  dlock::RedisBackend redis(options());
  dlock::Semaphore<dlock::RedisBackend> sem(redis, "pool", 1, quick());
  EXPECT_EQ(sem.permits(), 1u);
  ASSERT_TRUE(sem.try_acquire());
  EXPECT_FALSE(sem.try_acquire());
  sem.set_permits(2);  // an operator raises it
  EXPECT_EQ(sem.permits(), 2u);
  EXPECT_TRUE(sem.try_acquire());
  sem.set_permits(std::nullopt);  // back to the caller's count
  EXPECT_EQ(sem.permits(), 1u);
  sem.release(2);
}

TEST_F(RedisPrimitives, OneLeaderAndObserversSeeItsTerm) {
  dlock::RedisBackend a(options()), b(options());
  dlock::Election<dlock::RedisBackend> ea(a, "svc", "node-a", quick()), eb(b, "svc", "node-b", quick());
  ASSERT_TRUE(ea.try_campaign());
  EXPECT_FALSE(eb.try_campaign());
  const auto seen = eb.leader();
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->candidate, "node-a");
  const auto first = ea.term();
  EXPECT_EQ(seen->term, first);
  (void)ea.resign();
  EXPECT_FALSE(eb.leader());
  ASSERT_TRUE(eb.try_campaign_for(1s));
  EXPECT_GT(eb.term(), first);
  EXPECT_EQ(ea.leader()->candidate, "node-b");
}

// An in-doubt retry (the reply to a grant was lost; the same owner id asks
// again) gets back the token of its own lease, not the counter's current value,
// which another holder of the same name may carry.
TEST_F(RedisPrimitives, InDoubtRetryOfAPermitOrAReaderGetsItsOwnToken) {
  auto token = [](const dlock::AcquireResult<dlock::NoHandle>& r) -> std::uint64_t {
    const auto* g = std::get_if<dlock::Grant<dlock::NoHandle>>(&r);
    if (g == nullptr || !g->token) throw std::runtime_error("not granted");
    return *g->token;
  };
  const auto a = dlock::OwnerId::generate(), b = dlock::OwnerId::generate();
  const auto req = [&](const dlock::OwnerId& o, std::string_view name) {
    return dlock::AcquireRequest{.name = name, .owner = o, .ttl = 10s, .started = std::chrono::steady_clock::now()};
  };
  const std::uint64_t pa = token(redis().try_acquire_permit(req(a, "tok-sem"), 3));
  const std::uint64_t pb = token(redis().try_acquire_permit(req(b, "tok-sem"), 3));
  ASSERT_GT(pb, pa);
  EXPECT_EQ(token(redis().try_acquire_permit(req(a, "tok-sem"), 3)), pa) << "a's retry got b's token";
  EXPECT_EQ(token(redis().try_acquire_permit(req(b, "tok-sem"), 3)), pb);

  const std::uint64_t ra = token(redis().try_acquire_shared(req(a, "tok-rw")));
  std::this_thread::sleep_for(2ms);  // a later server time: a later reader's token is higher
  const std::uint64_t rb = token(redis().try_acquire_shared(req(b, "tok-rw")));
  ASSERT_GT(rb, ra);
  EXPECT_EQ(token(redis().try_acquire_shared(req(a, "tok-rw"))), ra) << "a's retry got a later reader's token";
  // Released and taken again: a new lease, a new token.
  dlock::Lease<dlock::NoHandle> lease{
      a, pa, std::chrono::steady_clock::now(), std::chrono::steady_clock::now() + 10s, {}};
  EXPECT_EQ(redis().release_permit("tok-sem", lease), dlock::ReleaseResult::released);
  EXPECT_GT(token(redis().try_acquire_permit(req(a, "tok-sem"), 3)), pb);
}

}  // namespace
