// The administration API (dlock/redis_admin.hpp) on real redis-servers: list,
// inspect and force-release of a held lock (a waiting Lock wakes through the
// release's pub/sub, not its backoff), a Redlock set over three nodes, every
// primitive's keys (written with the scripts of redis_primitive_scripts.hpp),
// bounds, wrong types and connection errors.
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/redis_admin.hpp>
#include <dlock/redlock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "release_waiter.hpp"
#include "support/redis_server.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::RedisAdmin;
using dlock::RedisLockInfo;
using dlock::RedisLockKind;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;

[[maybe_unused]] auto* const redis_env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

const RedisLockInfo* find(const std::vector<RedisLockInfo>& locks, std::string_view name, RedisLockKind kind) {
  for (const auto& l : locks)
    if (l.name == name && l.kind == kind) return &l;
  return nullptr;
}

class RedisAdminTest : public RedisTest {
 protected:
  // EVAL of a library script with its keys and arguments; the reply.
  dlock::detail::RedisValue eval(std::string_view script, const std::vector<std::string>& keys,
                                 const std::vector<std::string>& args) {
    const std::string n = std::to_string(keys.size());
    std::vector<std::string_view> argv{"EVAL", script, n};
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = redis().node().command(argv);
    EXPECT_FALSE(r.is_error()) << r.str;
    return r;
  }
  [[nodiscard]] dlock::detail::RedisPrimitiveKeys pkeys(std::string_view name) const {
    return dlock::detail::redis_primitive_keys(prefix_, name);
  }
};

TEST_F(RedisAdminTest, ListInspectAndForceReleaseWakeAWaiterThroughPubSub) {
  dlock::Lock<dlock::RedisBackend> holder(redis(), "job", {.ttl = 60s, .observer = quiet()});
  holder.lock();
  const std::string owner(holder.owner_id());
  RedisAdmin admin(redis());  // shares the backend's pool
  EXPECT_EQ(admin.endpoint(), redis().endpoint());

  const auto list = admin.list();
  ASSERT_EQ(list.locks.size(), 1u);
  EXPECT_FALSE(list.truncated);
  const RedisLockInfo& l = list.locks[0];
  EXPECT_EQ(l.name, "job");
  EXPECT_EQ(l.kind, RedisLockKind::mutex);
  EXPECT_EQ(l.key, key("job"));
  EXPECT_EQ(l.owner, owner);
  EXPECT_GT(l.ttl_ms, 50'000);
  EXPECT_EQ(l.token, std::to_string(holder.fencing_token()));

  // A waiter whose backoff (5 s) is far longer than the wake-up expected after the release.
  std::optional<std::chrono::steady_clock::time_point> acquired_at;
  std::thread waiter([&] { acquired_at = dlock::test::acquire_after_release(redis(), "job", quiet()); });
  // Its wait record is written after its subscription is confirmed.
  ASSERT_TRUE(dlock::test::eventually([&] { return !admin.wait_records().records.empty(); }, 10s));
  EXPECT_EQ(admin.wait_records().records.at(0).lock, "job");

  // Owner-checked: another owner's release deletes nothing.
  EXPECT_FALSE(admin.force_release("job", "someone-else").has_value());
  ASSERT_EQ(admin.inspect("job").size(), 1u);

  const auto released_at = std::chrono::steady_clock::now();
  const auto removed = admin.force_release("job");
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->owner, owner);
  EXPECT_GT(removed->ttl_ms, 50'000);
  waiter.join();
  ASSERT_TRUE(acquired_at.has_value()) << "the waiter never got the lock";
  const auto woke_after = *acquired_at - released_at;
  EXPECT_LT(woke_after, 2s) << "the waiter was not woken by the release's publish (its backoff is 5 s)";

  EXPECT_TRUE(admin.inspect("job").empty());
  EXPECT_FALSE(admin.force_release("job").has_value());
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::not_held);
}

TEST_F(RedisAdminTest, EveryPrimitiveShowsItsKindAndHolders) {
  const auto fence_ttl = std::string("60000");
  // A mutex.
  (void)cmd({"SET", key("plain"), "mutex-owner", "PX", "30000"});
  // A read-write lock: two readers, and a writer that waits for them.
  const auto rw = pkeys("rw");
  for (const std::string r : {"reader-1", "reader-2"})
    EXPECT_EQ(eval(dlock::detail::redis_rw_read_acquire_script,
                   {rw.rw_writer, rw.rw_readers, rw.rw_waiting, rw.fence, rw.rw_tokens}, {r, "30000", fence_ttl})
                  .elements.at(0)
                  .integer,
              1);
  EXPECT_EQ(eval(dlock::detail::redis_rw_write_acquire_script, {rw.rw_writer, rw.rw_readers, rw.rw_waiting, rw.fence},
                 {"writer-1", "30000", fence_ttl, "20000"})
                .elements.at(0)
                .integer,
            0);
  // A semaphore: an operator's count of 3, two permits held.
  const auto sem = pkeys("sem");
  (void)cmd({"SET", sem.sem_count, "3"});
  for (const std::string p : {"permit-1", "permit-2"})
    EXPECT_EQ(eval(dlock::detail::redis_sem_acquire_script, {sem.sem_permits, sem.sem_count, sem.fence, sem.sem_tokens},
                   {p, "30000", fence_ttl, "1"})
                  .elements.at(0)
                  .integer,
              1);
  // Fair mode: a holder and two queued waiters, in arrival order.
  const auto fair = pkeys("fair");
  const std::string fair_lock = key("fair");
  for (const std::string w : {"fair-holder", "fair-w1", "fair-w2"})
    (void)eval(dlock::detail::redis_fair_acquire_script, {fair_lock, fair.fence, fair.fair_queue, fair.fair_deadlines},
               {w, "30000", fence_ttl, "20000"});
  // An election.
  const auto lead = pkeys("lead");
  const auto term = eval(dlock::detail::redis_leader_acquire_script, {lead.leader, lead.fence, lead.leader_info},
                         {"leader-owner", "30000", fence_ttl, "node-a"})
                        .elements.at(1)
                        .str;
  // A semaphore and a mutex under one name.
  (void)cmd({"SET", key("sem"), "sem-mutex-owner", "PX", "30000"});

  RedisAdmin admin(options());
  const auto list = admin.list();
  ASSERT_EQ(list.locks.size(), 6u);

  const auto* m = find(list.locks, "plain", RedisLockKind::mutex);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->owner, "mutex-owner");
  EXPECT_FALSE(m->token.has_value());

  const auto* r = find(list.locks, "rw", RedisLockKind::rw);
  ASSERT_NE(r, nullptr);
  EXPECT_FALSE(r->owner.has_value());
  EXPECT_EQ(r->key, rw.rw_writer);
  ASSERT_EQ(r->readers.size(), 2u);
  EXPECT_EQ(r->readers[0].owner, "reader-1");
  EXPECT_GT(r->readers[0].ttl_ms, 20'000);
  ASSERT_TRUE(r->waiting_writer.has_value());
  EXPECT_EQ(r->waiting_writer->owner, "writer-1");
  EXPECT_TRUE(r->held());

  const auto* s = find(list.locks, "sem", RedisLockKind::semaphore);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->permit_count, "3");
  ASSERT_EQ(s->permits.size(), 2u);
  EXPECT_EQ(s->permits[1].owner, "permit-2");
  EXPECT_TRUE(s->token.has_value());
  ASSERT_NE(find(list.locks, "sem", RedisLockKind::mutex), nullptr);

  const auto* f = find(list.locks, "fair", RedisLockKind::fair_queue);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->owner, "fair-holder");
  ASSERT_EQ(f->queue.size(), 2u);
  EXPECT_EQ(f->queue[0].owner, "fair-w1");
  EXPECT_EQ(f->queue[1].owner, "fair-w2");
  EXPECT_GT(f->queue[0].ttl_ms, 10'000);
  EXPECT_EQ(find(list.locks, "fair", RedisLockKind::mutex), nullptr);

  const auto* e = find(list.locks, "lead", RedisLockKind::election);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->owner, "leader-owner");
  EXPECT_EQ(e->candidate, "node-a");
  EXPECT_EQ(e->term, term);
  EXPECT_EQ(e->token, term);

  // inspect: every kind under one name, and the same reads as list.
  const auto both = admin.inspect("sem");
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0].kind, RedisLockKind::mutex);
  EXPECT_EQ(both[1].kind, RedisLockKind::semaphore);
  ASSERT_EQ(both[1].permits.size(), 2u);
  EXPECT_EQ(both[1].permits[0].owner, "permit-1");
  const auto fi = admin.inspect("fair");
  ASSERT_EQ(fi.size(), 1u);
  EXPECT_EQ(fi[0].queue.size(), 2u);

  // Force release of the fair lock's holder: the library's release deletes P{N}; the queue stays.
  const auto removed = admin.force_release("fair");
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->owner, "fair-holder");
  const auto after = admin.inspect("fair");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_FALSE(after[0].owner.has_value());
  EXPECT_EQ(after[0].queue.size(), 2u);
}

TEST_F(RedisAdminTest, PermitCountSetByAnOperatorBindsEveryClient) {
  const auto sem = pkeys("pool");
  const auto acquire = [&](const std::string& owner) {  // each caller's own count: 1
    return eval(dlock::detail::redis_sem_acquire_script, {sem.sem_permits, sem.sem_count, sem.fence, sem.sem_tokens},
                {owner, "30000", "60000", "1"})
        .elements.at(0)
        .integer;
  };
  RedisAdmin admin(options());
  EXPECT_EQ(acquire("p1"), 1);
  EXPECT_EQ(acquire("p2"), 0);
  EXPECT_FALSE(admin.set_permit_count("pool", 2).has_value());
  EXPECT_EQ(acquire("p2"), 1);
  EXPECT_EQ(acquire("p3"), 0);
  const auto info = admin.inspect("pool");
  ASSERT_EQ(info.size(), 1u);
  EXPECT_EQ(info[0].permit_count, "2");
  EXPECT_EQ(info[0].permits.size(), 2u);
  EXPECT_EQ(admin.set_permit_count("pool", std::nullopt), "2");
  EXPECT_EQ(cmd({"EXISTS", sem.sem_count}).integer, 0);
  EXPECT_EQ(acquire("p3"), 0);  // 2 held, the caller's count is 1 again
}

TEST_F(RedisAdminTest, MatchLimitAndWrongTypes) {
  for (const std::string n : {"a1", "a2", "a3", "b1", "b2"}) (void)cmd({"SET", key(n), "o-" + n, "PX", "30000"});
  (void)cmd({"HSET", key("h"), "f", "v"});
  (void)cmd({"SET", redis_keys_for("gone").fence, "12"});  // a counter alone is no lock
  RedisAdmin admin(options());

  auto list = admin.list({.match = "a*"});
  ASSERT_EQ(list.locks.size(), 3u);
  EXPECT_EQ(list.locks[2].name, "a3");
  list = admin.list({.limit = 2});
  EXPECT_TRUE(list.truncated);
  EXPECT_EQ(list.locks.size(), 2u);
  list = admin.list({.limit = 0});
  EXPECT_FALSE(list.truncated);
  ASSERT_EQ(list.locks.size(), 6u);
  const auto* h = find(list.locks, "h", RedisLockKind::mutex);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->wrong_type, "hash");
  EXPECT_FALSE(h->owner.has_value());
  EXPECT_THROW((void)admin.force_release("h"), dlock::ServerError);
  EXPECT_TRUE(admin.inspect("gone").empty());
  const auto m = admin.inspect_mutexes({"gone", "b2"});
  ASSERT_EQ(m.size(), 2u);
  EXPECT_FALSE(m[0].owner.has_value());
  EXPECT_EQ(m[0].token, "12");
  EXPECT_EQ(m[1].owner, "o-b2");
}

TEST(RedisAdminConnection, RefusedNamesTheEndpointNeverThePassword) {
  const int port = dlock::test::free_loopback_port();
  RedisAdmin admin(dlock::RedisOptions{.port = port,
                                       .password = "hunter2-Secret",
                                       .connect_timeout = 500ms,
                                       .command_timeout = 500ms,
                                       .eviction_check = dlock::EvictionCheck::off});
  try {
    (void)admin.list();
    FAIL() << "no error";
  } catch (const dlock::ConnectionError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(std::to_string(port)), std::string::npos) << m;
    EXPECT_EQ(m.find("hunter2"), std::string::npos) << m;
  }
  EXPECT_THROW(RedisAdmin(dlock::RedisOptions{.port = 0}), dlock::InvalidArgument);
}

TEST(RedlockAdminTest, ThreeNodes) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer n0, n1, n2;
  dlock::RedlockBackend rl(dlock::RedlockOptions{.nodes = {n0.options(), n1.options(), n2.options()}});
  dlock::Lock<dlock::RedlockBackend> lock(rl, "res", {.ttl = 30s, .observer = RedisTest::quiet()});
  lock.lock();
  const std::string owner(lock.owner_id());
  dlock::RedlockAdmin admin(rl);
  EXPECT_EQ(admin.node_count(), 3u);
  EXPECT_EQ(admin.quorum(), 2u);

  const auto lists = admin.list();
  ASSERT_EQ(lists.size(), 3u);
  for (const auto& n : lists) {
    ASSERT_TRUE(n.value.has_value()) << n.endpoint << ": " << n.error;
    ASSERT_EQ(n.value->locks.size(), 1u);
    EXPECT_EQ(n.value->locks[0].owner, owner);
    EXPECT_EQ(n.value->locks[0].token, std::to_string(lock.fencing_token()));
  }

  n2.stop();  // a node down: its error, the others' answers
  const auto removed = admin.force_release("res");
  ASSERT_EQ(removed.size(), 3u);
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(removed[i].value.has_value()) << removed[i].error;
    ASSERT_TRUE(removed[i].value->has_value());
    EXPECT_EQ((*removed[i].value)->owner, owner);
  }
  EXPECT_FALSE(removed[2].value.has_value());
  EXPECT_NE(removed[2].error.find(std::to_string(n2.port())), std::string::npos) << removed[2].error;
  const auto states = admin.inspect_mutexes({"res"});
  EXPECT_FALSE(states[0].value->at(0).owner.has_value());
  EXPECT_FALSE(states[1].value->at(0).owner.has_value());
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::not_held);
}

}  // namespace
