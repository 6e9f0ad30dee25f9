// RedisBackend against a real redis-server: the protocol (keys, scripts,
// tokens, expiry, owner checks), interop with plain SET NX PX clients, AUTH,
// pub/sub wake-up, and exclusion between threads of one process.
#include <dlock/detail/redis_subscriber.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "redis_test_support.hpp"
#include "support/fault_proxy.hpp"
#include "unit/test_support.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::LockOptions;
using dlock::RedisBackend;
using dlock::RedisOptions;
using dlock::detail::RedisValue;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;
using Ms = std::chrono::milliseconds;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

dlock::Lease<dlock::NoHandle> lease_for(const dlock::OwnerId& owner) {
  const auto now = std::chrono::steady_clock::now();
  return {owner, std::nullopt, now, now, {}};
}

// The server's clock (TIME) in microseconds.
std::uint64_t server_time_us(RedisTest& t) { return dlock::test::server_time_us(t.redis().node()); }

// ---- protocol ----

TEST_F(RedisTest, AcquireStoresOwnerWithTtlAndReleaseDeletes) {
  Lock<RedisBackend> lock(redis(), "orders:42", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"GET", key("orders:42")}).str, lock.owner_id());
  const long long pttl = cmd({"PTTL", key("orders:42")}).integer;
  EXPECT_GT(pttl, 9000);
  EXPECT_LE(pttl, 10000);
  EXPECT_EQ(cmd({"TYPE", key("orders:42")}).str, "string");
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(cmd({"EXISTS", key("orders:42")}).integer, 0);
}

TEST_F(RedisTest, KeysShareTheHashTag) {
  Lock<RedisBackend> lock(redis(), "a:b", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"EXISTS", prefix_ + "{a:b}"}).integer, 1);
  EXPECT_EQ(cmd({"EXISTS", prefix_ + "{a:b}:fence"}).integer, 1);
  EXPECT_EQ(cmd({"CLUSTER", "KEYSLOT", prefix_ + "{a:b}"}).integer,
            cmd({"CLUSTER", "KEYSLOT", prefix_ + "{a:b}:fence"}).integer);
}

TEST_F(RedisTest, ContentionReportsTheHolderTtl) {
  Lock<RedisBackend> a(redis(), "c", {.ttl = 5s});
  ASSERT_TRUE(a.try_lock());
  const auto owner = dlock::OwnerId::generate();
  const auto r = redis().try_acquire({"c", owner, 1000ms, std::chrono::steady_clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(r));
  const auto ttl = std::get<dlock::Contended>(r).holder_ttl;
  ASSERT_TRUE(ttl.has_value());
  EXPECT_GT(*ttl, 4000ms);
  EXPECT_LE(*ttl, 5000ms);
  Lock<RedisBackend> b(redis(), "c", {.ttl = 5s});
  EXPECT_FALSE(b.try_lock());
}

TEST_F(RedisTest, ValidityIsMeasuredFromBeforeTheRequest) {
  const auto owner = dlock::OwnerId::generate();
  const auto started = std::chrono::steady_clock::now() - 50ms;  // as if the request had been slow
  const auto r = redis().try_acquire({"v", owner, 1000ms, started});
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(r));
  EXPECT_EQ(std::get<dlock::Grant<dlock::NoHandle>>(r).valid_until, started + 1000ms);
}

TEST_F(RedisTest, NonOwnerCannotReleaseOrExtend) {
  Lock<RedisBackend> holder(redis(), "n", {.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  const std::string owner_text(holder.owner_id());
  const long long before = cmd({"PTTL", key("n")}).integer;

  auto stranger = lease_for(dlock::OwnerId::generate());
  EXPECT_EQ(redis().release("n", stranger), dlock::ReleaseResult::not_held);
  EXPECT_FALSE(redis().extend("n", stranger, 60000ms, std::chrono::steady_clock::now()).has_value());
  EXPECT_EQ(cmd({"GET", key("n")}).str, owner_text);
  const long long after = cmd({"PTTL", key("n")}).integer;
  EXPECT_LE(after, before);  // not extended to 60 s
  EXPECT_TRUE(holder.owns_lock());
}

TEST_F(RedisTest, FencingCounterHasATtlAndIsSeededFromServerTime) {
  const auto fence = redis_keys_for("f").fence;
  const std::uint64_t before = server_time_us(*this);
  Lock<RedisBackend> lock(redis(), "f", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  const std::uint64_t first = lock.fencing_token();
  const std::uint64_t after = server_time_us(*this);
  // Seeded from TIME (then incremented once), not from 0.
  EXPECT_GT(first, before);
  EXPECT_LE(first, after + 1);
  // Kept max(fence_ttl, 3 x ttl) past the clock reaching its value (rounded up to the next ms).
  const long long pttl = cmd({"PTTL", fence}).integer;
  EXPECT_GT(pttl, Ms(30s - 1s).count());
  EXPECT_LE(pttl, Ms(30s + 2ms).count());
  lock.unlock();

  // The counter expires (or is deleted): tokens still increase.
  ASSERT_EQ(cmd({"DEL", fence}).integer, 1);
  ASSERT_TRUE(lock.try_lock());
  EXPECT_GT(lock.fencing_token(), first);
  lock.unlock();

  // The TTL follows RedisOptions::fence_ttl (when above 3 x ttl) and is refreshed on each acquire.
  RedisOptions o = options();
  o.fence_ttl = 60s;
  RedisBackend short_fence(o);
  Lock<RedisBackend> l2(short_fence, "f", {.ttl = 10s});
  ASSERT_TRUE(l2.try_lock());
  const long long p2 = cmd({"PTTL", fence}).integer;
  EXPECT_GT(p2, 59000);
  EXPECT_LE(p2, 60002);
}

TEST_F(RedisTest, ExtendManyPipelinesOwnerCheckedExtensions) {
  std::vector<std::unique_ptr<Lock<RedisBackend>>> locks;
  for (const char* name : {"m1", "m2", "m3"}) {
    locks.push_back(std::make_unique<Lock<RedisBackend>>(redis(), name, LockOptions{.ttl = 5s, .observer = quiet()}));
    ASSERT_TRUE(locks.back()->try_lock());
  }
  ASSERT_EQ(cmd({"DEL", key("m2")}).integer, 1);  // m2 lost
  const std::string stranger(dlock::OwnerId::generate().str());
  const std::string owners[] = {std::string(locks[0]->owner_id()), std::string(locks[1]->owner_id()),
                                std::string(locks[2]->owner_id())};
  const auto k1 = key("m1"), k2 = key("m2"), k3 = key("m3");
  const dlock::detail::RedisClient::ExtendItem items[] = {
      {k1, owners[0], 60000ms}, {k2, owners[1], 60000ms}, {k3, stranger, 60000ms}, {k3, owners[2], 45000ms}};
  const std::vector<bool> ok = redis().node().extend_many(items);
  EXPECT_EQ(ok, (std::vector<bool>{true, false, false, true}));
  EXPECT_GT(cmd({"PTTL", k1}).integer, 59000);
  EXPECT_EQ(cmd({"EXISTS", k2}).integer, 0);
  const long long p3 = cmd({"PTTL", k3}).integer;
  EXPECT_GT(p3, 44000);
  EXPECT_LE(p3, 45000);

  // After SCRIPT FLUSH the pipelined EVALSHAs fall back to EVAL.
  ASSERT_EQ(cmd({"SCRIPT", "FLUSH"}).str, "OK");
  const dlock::detail::RedisClient::ExtendItem again[] = {{k1, owners[0], 30000ms}, {k3, owners[2], 30000ms}};
  EXPECT_EQ(redis().node().extend_many(again), (std::vector<bool>{true, true}));
  EXPECT_LE(cmd({"PTTL", k1}).integer, 30000);
  EXPECT_TRUE(redis().node().extend_many({}).empty());
}

TEST_F(RedisTest, BackendExtendManyFillsEachItem) {
  const auto now = std::chrono::steady_clock::now();
  const auto o1 = dlock::OwnerId::generate(), o2 = dlock::OwnerId::generate(), o3 = dlock::OwnerId::generate();
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(redis().try_acquire({"c1", o1, 5000ms, now})));
  ASSERT_EQ(cmd({"RPUSH", key("b3"), "x"}).integer, 1);  // wrong type: an error for that item only
  std::vector<dlock::ExtendItem> items(4);
  items[0] = {.name = "c1", .owner = &o1, .ttl = 40000ms, .started = now};
  items[1] = {.name = "c1", .owner = &o2, .ttl = 40000ms, .started = now};    // not the owner
  items[2] = {.name = "b3", .owner = &o3, .ttl = 40000ms, .started = now};    // wrong type
  items[3] = {.name = "}bad", .owner = &o3, .ttl = 40000ms, .started = now};  // invalid name
  redis().extend_many(items);
  ASSERT_TRUE(items[0].valid_until.has_value());
  EXPECT_EQ(*items[0].valid_until, now + 40000ms);
  EXPECT_FALSE(items[0].error);
  EXPECT_GT(cmd({"PTTL", key("c1")}).integer, 39000);
  EXPECT_FALSE(items[1].valid_until.has_value());
  EXPECT_FALSE(items[1].error);
  EXPECT_TRUE(items[2].error);
  EXPECT_THROW(std::rethrow_exception(items[2].error), dlock::ServerError);
  EXPECT_THROW(std::rethrow_exception(items[3].error), dlock::InvalidArgument);
}

TEST_F(RedisTest, ScriptFlushFallsBackToEval) {
  Lock<RedisBackend> lock(redis(), "sf", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());  // connection made, scripts loaded
  ASSERT_EQ(cmd({"SCRIPT", "FLUSH"}).str, "OK");
  lock.extend(20s);
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  ASSERT_EQ(cmd({"SCRIPT", "FLUSH"}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
}

TEST_F(RedisTest, WrongTypeIsAClearServerError) {
  ASSERT_EQ(cmd({"RPUSH", key("w"), "x"}).integer, 1);
  Lock<RedisBackend> lock(redis(), "w", {.ttl = 10s, .observer = quiet()});
  try {
    (void)lock.try_lock();
    FAIL() << "expected ServerError";
  } catch (const dlock::ServerError& e) {
    EXPECT_EQ(e.code(), dlock::errc::server);
    EXPECT_NE(std::string(e.what()).find("wrong type"), std::string::npos) << e.what();
  }
  // A fencing counter of the wrong type: the error leaves no lock behind.
  const auto fence = redis_keys_for("w2").fence;
  ASSERT_EQ(cmd({"RPUSH", fence, "x"}).integer, 1);
  Lock<RedisBackend> l2(redis(), "w2", {.ttl = 10s, .observer = quiet()});
  EXPECT_THROW((void)l2.try_lock(), dlock::ServerError);
  EXPECT_EQ(cmd({"EXISTS", key("w2")}).integer, 0);
}

TEST_F(RedisTest, NamesThatWouldBreakTheHashTagAreRejected) {
  Lock<RedisBackend> lock(redis(), "}x", {.ttl = 10s, .observer = quiet()});
  EXPECT_THROW((void)lock.try_lock(), dlock::InvalidArgument);
}

// ---- interop with classic SET NX PX clients ----

TEST_F(RedisTest, InteroperatesWithPlainSetNxPxClients) {
  const std::string k = key("classic");
  // A classic client holds it: dlock sees contention and the holder's TTL.
  ASSERT_EQ(cmd({"SET", k, "classic-owner", "NX", "PX", "5000"}).str, "OK");
  Lock<RedisBackend> lock(redis(), "classic", {.ttl = 10s, .observer = quiet()});  // released behind its back below
  EXPECT_FALSE(lock.try_lock());
  // The classic compare-and-delete releases it.
  const char* cad = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
  EXPECT_EQ(cmd({"EVAL", cad, "1", k, "classic-owner"}).integer, 1);
  // dlock holds it: the classic SET NX fails, and the value is dlock's owner id.
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"SET", k, "classic-owner", "NX", "PX", "5000"}).type, RedisValue::Type::nil);
  EXPECT_EQ(cmd({"GET", k}).str, lock.owner_id());
  // A classic client that knows the owner id can release dlock's lock.
  const std::string owner(lock.owner_id());
  EXPECT_EQ(cmd({"EVAL", cad, "1", k, owner}).integer, 1);
  Lock<RedisBackend> other(redis(), "classic", {.ttl = 10s});
  EXPECT_TRUE(other.try_lock());
  // A classic lock without TTL: contention without a holder TTL.
  other.unlock();
  ASSERT_EQ(cmd({"SET", k, "forever", "NX"}).str, "OK");
  const auto r = redis().try_acquire({"classic", dlock::OwnerId::generate(), 1000ms, std::chrono::steady_clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(r));
  EXPECT_FALSE(std::get<dlock::Contended>(r).holder_ttl.has_value());
}

// ---- authentication and endpoints ----

TEST_F(RedisTest, AclUserWithPasswordAndUriForm) {
  const AclUser acl_test_user(*this, {"~*", "&*", "+@all"});
  const std::string& user = acl_test_user.name;
  const std::string& pw = acl_test_user.password;

  RedisOptions o = options();
  o.username = user;
  o.password = pw;
  RedisBackend acl(o);
  Lock<RedisBackend> lock(acl, "acl", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"GET", key("acl")}).str, lock.owner_id());
  lock.unlock();

  const RedisOptions base = options();
  RedisBackend by_uri(fmt::format("redis://{}:{}@{}:{}/0", user, pw, base.host, base.port), base);
  Lock<RedisBackend> l2(by_uri, "acl-uri", {.ttl = 10s});
  ASSERT_TRUE(l2.try_lock());
  EXPECT_EQ(cmd({"GET", key("acl-uri")}).str, l2.owner_id());
  l2.unlock();

  o.password = "wrong-password-xyz";
  RedisBackend bad(o);
  Lock<RedisBackend> l3(bad, "acl-bad", {.ttl = 10s, .observer = quiet()});
  try {
    (void)l3.try_lock();
    FAIL() << "expected ServerError(auth)";
  } catch (const dlock::ServerError& e) {
    EXPECT_EQ(e.code(), dlock::errc::auth);
    const std::string msg = e.what();
    EXPECT_EQ(msg.find("wrong-password-xyz"), std::string::npos) << msg;
    EXPECT_NE(msg.find(user), std::string::npos) << msg;
    EXPECT_NE(msg.find(bad.endpoint()), std::string::npos) << msg;
  }
  // A blocking acquire does not retry an authentication failure.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)l3.try_lock_for(5s), dlock::ServerError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST_F(RedisTest, DatabaseIndexIsSelected) {
  RedisOptions o = options();
  o.database = 3;
  RedisBackend db3(o);
  Lock<RedisBackend> lock(db3, "db", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"EXISTS", key("db")}).integer, 0);  // not in db 0
  const auto r = db3.node().command({"GET", key("db")});
  EXPECT_EQ(r.str, lock.owner_id());
  lock.unlock();
  dlock::test::delete_keys(db3.node(), prefix_);
}

TEST_F(RedisTest, UnixSocketAndUri) {
  DLOCK_REQUIRE_OWN_REDIS();
  const std::string sock = SharedRedis::instance()->server()->unix_socket();
  RedisOptions o = options();
  o.unix_socket = sock;
  RedisBackend unix_backend(o);
  EXPECT_EQ(unix_backend.endpoint(), sock);
  Lock<RedisBackend> lock(unix_backend, "unix", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(cmd({"GET", key("unix")}).str, lock.owner_id());
  lock.unlock();

  RedisBackend by_uri("unix://" + sock + "?db=0", options());
  Lock<RedisBackend> l2(by_uri, "unix", {.ttl = 10s});
  ASSERT_TRUE(l2.try_lock());
  l2.unlock();
}

// ---- pub/sub wake-up ----

TEST_F(RedisTest, OneSharedPubSubConnectionWithReferenceCounts) {
  auto count_subscribers = [&](const std::string& channel) {
    const auto r = cmd({"PUBSUB", "NUMSUB", channel});
    return r.elements.at(1).integer;
  };
  const std::string ch1 = redis_keys_for("s1").channel, ch2 = redis_keys_for("s2").channel;
  {
    auto a = redis().subscribe_release("s1");
    auto b = redis().subscribe_release("s1");
    auto c = redis().subscribe_release("s2");
    // Acknowledged before subscribe_release returned.
    EXPECT_EQ(count_subscribers(ch1), 1);
    EXPECT_EQ(count_subscribers(ch2), 1);
    // One release wakes every waiter on that name, and only those.
    Lock<RedisBackend> l(redis(), "s1", {.ttl = 10s});
    ASSERT_TRUE(l.try_lock());
    l.unlock();
    EXPECT_TRUE(a.wait_for(2s));
    EXPECT_TRUE(b.wait_for(2s));
    EXPECT_FALSE(c.wait_for(50ms));
    EXPECT_FALSE(a.wait_for(20ms));  // consumed
    {
      auto moved = std::move(c);
      EXPECT_EQ(count_subscribers(ch2), 1);
    }
  }
  // The last reference unsubscribes (asynchronously).
  EXPECT_TRUE(dlock::test::eventually([&] { return count_subscribers(ch1) == 0 && count_subscribers(ch2) == 0; }, 2s));
  EXPECT_EQ(count_subscribers(ch1), 0);
  EXPECT_EQ(count_subscribers(ch2), 0);
}

TEST_F(RedisTest, DeadPubSubConnectionDoesNotHangWaitersAndReconnects) {
  auto sub = redis().subscribe_release("dead");
  const std::string ch = redis_keys_for("dead").channel;
  const auto numsub = [&] { return cmd({"PUBSUB", "NUMSUB", ch}).elements.at(1).integer; };
  ASSERT_EQ(numsub(), 1);
  // Kill only our pub/sub connection(s) on the server.
  ASSERT_GE(cmd({"CLIENT", "KILL", "TYPE", "pubsub"}).integer, 1);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(sub.wait_for(200ms));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  // A new subscription within the 1 s reconnect backoff does not wait for
  // the server (connect_timeout + command_timeout would be 4 s)...
  const auto t1 = std::chrono::steady_clock::now();
  auto again = redis().subscribe_release("dead");
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 1s);
  // ... and the thread reconnects and resubscribes by itself.
  EXPECT_TRUE(dlock::test::eventually([&] { return numsub() == 1; }, 5s));
  Lock<RedisBackend> l(redis(), "dead", {.ttl = 10s});
  ASSERT_TRUE(l.try_lock());
  l.unlock();
  EXPECT_TRUE(again.wait_for(2s));
}

// A release published while the pub/sub connection was down (between its
// loss and the resubscription a second later; in a failover the sentinels'
// CLIENT KILL TYPE pubsub on the promoted replica drops it too) reaches no
// one. The resubscription wakes the channel's blocking waiters as a release
// does (plain, wake-one and targeted), so they try again instead of sleeping
// out their backoff. Before: none of the three was woken within 5 s.
TEST_F(RedisTest, ARenewedSubscriptionWakesBlockingWaitersThatMayHaveMissedARelease) {
  const std::string ch = redis_keys_for("renewed").channel;
  dlock::detail::RedisSubscriber subscriber(options(), dlock::detail::redis_endpoint(options()));
  auto plain = subscriber.subscribe(ch);
  auto one = subscriber.subscribe_one(ch);
  auto targeted = subscriber.subscribe_targeted(ch, "owner-1");
  const auto numsub = [&] { return cmd({"PUBSUB", "NUMSUB", ch}).elements.at(1).integer; };
  ASSERT_EQ(numsub(), 1);
  const auto failures = subscriber.failures();
  ASSERT_GE(cmd({"CLIENT", "KILL", "TYPE", "pubsub"}).integer, 1);
  ASSERT_TRUE(dlock::test::eventually([&] { return subscriber.failures() > failures; }, 2s));
  // Nobody hears it: the reconnect comes one second after the loss at the earliest.
  ASSERT_EQ(cmd({"PUBLISH", ch, ""}).integer, 0);
  EXPECT_TRUE(plain.wait_for(5s));
  EXPECT_TRUE(one.wait_for(5s));
  EXPECT_TRUE(targeted.wait_for(5s));
  EXPECT_EQ(numsub(), 1);
  EXPECT_TRUE(subscriber.subscribed(ch));
  // An acknowledgement of a first SUBSCRIBE wakes nobody.
  auto fresh = subscriber.subscribe(redis_keys_for("fresh").channel);
  EXPECT_EQ(fresh.acknowledged(), 1u);
  EXPECT_FALSE(fresh.wait_for(300ms));
}

// The same through relocate() (Sentinel: the primary moved): a release on
// the new location before the subscription there is acknowledged wakes the
// waiter when it is. The new location is this server behind a proxy that
// holds the connection until the release is published. Before: not woken
// within 5 s.
TEST_F(RedisTest, ARelocatedSubscriptionWakesItsWaiterAtTheAcknowledgement) {
  const std::string ch = redis_keys_for("relocated").channel;
  dlock::test::FaultProxy proxy(options().port);
  proxy.silence();
  std::mutex mu;
  RedisOptions at = options();
  at.connect_timeout = 5s;
  dlock::detail::RedisSubscriber subscriber(std::vector<dlock::detail::RedisSubscriber::Server>{
      {.options = at, .endpoint = dlock::detail::redis_endpoint(at), .locate = [&]() -> std::optional<RedisOptions> {
         std::lock_guard lk(mu);
         return at;
       }}});
  auto sub = subscriber.subscribe(ch);
  const auto numsub = [&] { return cmd({"PUBSUB", "NUMSUB", ch}).elements.at(1).integer; };
  ASSERT_EQ(numsub(), 1);
  {
    std::lock_guard lk(mu);
    at.port = proxy.port();
  }
  subscriber.relocate();  // the connection here is closed; the one through the proxy is held
  ASSERT_TRUE(dlock::test::eventually([&] { return numsub() == 0; }, 2s));
  ASSERT_EQ(cmd({"PUBLISH", ch, ""}).integer, 0);  // nobody hears it
  proxy.heal();
  EXPECT_TRUE(sub.wait_for(5s));
  EXPECT_EQ(numsub(), 1);
}

TEST_F(RedisTest, SubscribeRefusedByTheAclIsReportedAndNeitherWaitedForNorRetried) {
  const std::string allowed = prefix_ + "ok", denied = prefix_ + "no";
  // Every command and key, but only the channels matching `allowed`.
  const std::string channels = "&" + allowed + "*";
  const AclUser user(*this, {"~*", "resetchannels", channels, "+@all"});

  RedisOptions o = options();
  o.username = user.name;
  o.password = user.password;
  o.command_timeout = 2s;
  dlock::detail::RedisSubscriber subscriber(o, dlock::detail::redis_endpoint(o));
  // The NOPERM reply settles the subscription at once instead of after command_timeout.
  auto t0 = std::chrono::steady_clock::now();
  auto refused = subscriber.subscribe(denied);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(refused.acknowledged(), 0u);
  const std::string why = subscriber.last_refusal();
  EXPECT_NE(why.find("NOPERM"), std::string::npos) << why;
  EXPECT_NE(why.find(denied), std::string::npos) << why;
  EXPECT_NE(why.find(dlock::detail::redis_endpoint(o)), std::string::npos) << why;
  // Not resent while the channel is still subscribed.
  t0 = std::chrono::steady_clock::now();
  auto refused_again = subscriber.subscribe(denied);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(refused_again.acknowledged(), 0u);
  // The connection goes on serving the channels the user may use.
  auto ok = subscriber.subscribe(allowed);
  EXPECT_EQ(ok.acknowledged(), 1u);
  EXPECT_EQ(cmd({"PUBLISH", allowed, "x"}).integer, 1);
  EXPECT_TRUE(ok.wait_for(2s));
  // Past command_timeout: nothing was dropped for an acknowledgement that never came.
  // (Waiting out the subscriber's real timeout is the point: nothing may happen.)
  std::this_thread::sleep_for(o.command_timeout + 500ms);
  EXPECT_EQ(subscriber.failures(), 0u);
  EXPECT_EQ(subscriber.connected(), 1u);
  EXPECT_EQ(cmd({"PUBLISH", allowed, "y"}).integer, 1);
  EXPECT_TRUE(ok.wait_for(2s));
  EXPECT_FALSE(refused.wait_for(10ms));
}

// A server that vanishes without a reset (host down, partition) must not
// leave a pub/sub or idle connection waiting forever: TCP keepalive is on,
// with the first probe after 15 s of silence (pooled and pub/sub connections are the same transport links).
TEST_F(RedisTest, TcpConnectionsProbeASilentPeerWithKeepalive) {
  const RedisOptions o = options();
  const auto keepalive = [](int fd) {
    int on = 0, idle = 0;
    socklen_t len = sizeof on;
    EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &len), 0);
    len = sizeof idle;
    EXPECT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &len), 0);
    return std::pair{on, idle};
  };
  dlock::detail::RedisLink link = dlock::detail::RedisLink::open(o);
  dlock::detail::RedisCall ping;
  ping.request.push({"PING"});
  ASSERT_EQ(link.exec(std::move(ping)).at(0).str, "PONG");
  EXPECT_EQ(keepalive(link.fd()), std::pair(1, 15));
}

TEST_F(RedisTest, DestroyingTheBackendWithLiveSubscriptionsIsSafe) {
  auto b = std::make_unique<RedisBackend>(options());
  auto sub = b->subscribe_release("gone");
  std::atomic<bool> waiting{false};
  std::thread waiter([&] {
    waiting = true;
    (void)sub.wait_for(300ms);
  });
  EXPECT_TRUE(dlock::test::eventually([&] { return waiting.load(); }, 5s));
  b.reset();  // while the waiter waits (or, at worst, is about to)
  waiter.join();
  EXPECT_FALSE(sub.wait_for(10ms));
}

// ---- threads of one process ----

TEST_F(RedisTest, ThreadsSharingOneBackendExcludeEachOther) {
  RedisOptions o = options();
  o.pool_size = 3;  // fewer connections than threads
  RedisBackend shared(o);
  long counter = 0;  // deliberately unsynchronised: the lock is the only protection
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      Lock<RedisBackend> lock(shared, "threads", {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
      for (int i = 0; i < 100; ++i) {
        std::scoped_lock hold(lock);
        const long v = counter;
        std::this_thread::yield();
        counter = v + 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 600);
  EXPECT_LE(shared.node().open_connections(), 3u);
}

TEST_F(RedisTest, ContendersAllGetAShare) {
  constexpr int n = 8;
  RedisBackend shared(options());
  std::atomic<bool> stop{false};
  std::vector<int> wins(n, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      Lock<RedisBackend> lock(shared, "fair", {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 50ms}});
      while (!stop) {
        if (!lock.try_lock_for(500ms)) continue;
        ++wins[static_cast<std::size_t>(t)];
        std::this_thread::sleep_for(1ms);  // the critical section
        lock.unlock();
        std::this_thread::sleep_for(2ms);  // work outside the lock before asking again
      }
    });
  }
  std::this_thread::sleep_for(2500ms);  // the length of the run (a workload, not synchronisation)
  stop = true;
  for (auto& t : threads) t.join();
  const int total = std::accumulate(wins.begin(), wins.end(), 0);
  const int least = *std::min_element(wins.begin(), wins.end());
  std::string shares;
  for (int w : wins) shares += std::to_string(w) + " ";
  EXPECT_GE(total, 100) << shares;
  EXPECT_GE(least, total / (n * 8)) << "acquisitions per contender: " << shares;
  RecordProperty("shares", shares);
}

}  // namespace
