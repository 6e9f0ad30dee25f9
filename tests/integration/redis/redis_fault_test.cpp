// RedisBackend when the server misbehaves: killed, paused (SIGSTOP),
// restarted, protected by a password, a read-only replica, out of memory.
// Each test starts its own redis-server; all are skipped when
// DLOCK_TEST_REDIS points at an external server.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <signal.h>

#include <atomic>

#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "support/in_doubt.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::RedisOptions;
using dlock::test::RedisServer;
using Ms = std::chrono::milliseconds;

namespace {

std::shared_ptr<dlock::Observer> quiet() { return std::make_shared<dlock::test::QuietObserver>(); }

Ms since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - t0);
}

TEST(RedisFault, KilledServerGivesConnectionErrorsThenReconnectsAfterRestart) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisOptions o = server.options();
  o.command_timeout = 500ms;
  o.connect_timeout = 500ms;
  RedisBackend redis(o);
  Lock<RedisBackend> lock(redis, "k", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(lock.try_lock());

  server.kill();
  auto t0 = std::chrono::steady_clock::now();
  try {
    lock.extend(10s);
    FAIL() << "expected ConnectionError";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find(redis.endpoint()), std::string::npos) << e.what();
  }
  EXPECT_LT(since(t0), o.command_timeout + o.connect_timeout + 500ms);

  t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)lock.release(), dlock::ConnectionError);
  EXPECT_LT(since(t0), o.command_timeout + o.connect_timeout + 500ms);

  // A batch extension reports the outage on every item.
  const auto owner = dlock::OwnerId::generate();
  std::vector<dlock::ExtendItem> items(2);
  items[0] = {.name = "k", .owner = &owner, .ttl = 10000ms, .started = std::chrono::steady_clock::now()};
  items[1] = {.name = "k2", .owner = &owner, .ttl = 10000ms, .started = std::chrono::steady_clock::now()};
  redis.extend_many(items);
  for (const auto& it : items) {
    ASSERT_TRUE(it.error);
    EXPECT_THROW(std::rethrow_exception(it.error), dlock::ConnectionError);
    EXPECT_FALSE(it.valid_until.has_value());
  }

  Lock<RedisBackend> other(redis, "k", {.ttl = 10s, .observer = quiet()});
  t0 = std::chrono::steady_clock::now();
  try {
    (void)other.try_lock();
    FAIL() << "expected ConnectionError";
  } catch (const dlock::ConnectionError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(redis.endpoint()), std::string::npos) << msg;
    EXPECT_NE(msg.find("redis-server is running"), std::string::npos) << msg;
  }
  // A blocking acquire keeps retrying through the outage and reports it, not contention.
  t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)other.try_lock_for(300ms), dlock::ConnectionError);
  EXPECT_LT(since(t0), 300ms + o.connect_timeout + 1s);

  server.restart();  // no persistence: the lock is gone with the old process
  ASSERT_TRUE(other.try_lock());
  EXPECT_GT(other.fencing_token(), 0u);
  other.unlock();
  ASSERT_TRUE(other.try_lock());
  other.unlock();
}

TEST(RedisFault, IdleConnectionsToARestartedServerAreReplacedNotReused) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisOptions o = server.options();
  o.pool_size = 4;
  RedisBackend redis(o);
  // Open four pooled connections.
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<Lock<RedisBackend>>> locks;
  for (int i = 0; i < 4; ++i)
    locks.push_back(
        std::make_unique<Lock<RedisBackend>>(redis, "n" + std::to_string(i), dlock::LockOptions{.ttl = 10s}));
  for (auto& l : locks) threads.emplace_back([&l] { ASSERT_TRUE(l->try_lock()); });
  for (auto& t : threads) t.join();
  for (auto& l : locks) l->unlock();

  server.restart();
  // The server closed them; the pool notices instead of failing a call.
  Lock<RedisBackend> lock(redis, "after", {.ttl = 10s});
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(lock.try_lock()) << i;
    lock.unlock();
  }
}

TEST(RedisFault, PausedServerBoundsTryLockForByItsTimeoutPlusTheCommandTimeout) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisOptions o = server.options();
  o.command_timeout = 500ms;
  RedisBackend redis(o);
  Lock<RedisBackend> holder(redis, "p", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(holder.try_lock());
  RedisBackend second(o);
  Lock<RedisBackend> waiter(second, "p",
                            {.ttl = 10s, .retry = {.initial_delay = 20ms, .max_delay = 50ms}, .observer = quiet()});
  ASSERT_FALSE(waiter.try_lock());  // connected and subscribed before the pause

  server.pause();
  const auto t0 = std::chrono::steady_clock::now();
  bool acquired = true;
  try {
    acquired = waiter.try_lock_for(300ms);
  } catch (const dlock::TimeoutError& e) {  // the acquire was sent: its outcome is unknown
    acquired = false;
    EXPECT_NE(std::string(e.what()).find("command_timeout"), std::string::npos) << e.what();
  }
  const Ms took = since(t0);
  EXPECT_FALSE(acquired);
  EXPECT_LT(took, 300ms + o.command_timeout + 1s) << took.count() << " ms";
  server.resume();

  // Afterwards everything works again.
  holder.unlock();
  ASSERT_TRUE(waiter.try_lock_for(2s));
  waiter.unlock();
}

TEST(RedisFault, PasswordOnlyAuth) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server({"--requirepass", "pass-only-123"});
  RedisOptions o = server.options();
  o.password = "pass-only-123";
  RedisBackend redis(o);
  Lock<RedisBackend> lock(redis, "pw", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();

  RedisBackend by_uri("redis://:pass-only-123@127.0.0.1:" + std::to_string(server.port()));
  Lock<RedisBackend> l2(by_uri, "pw", {.ttl = 10s});
  ASSERT_TRUE(l2.try_lock());
  l2.unlock();

  for (const std::string& pw : {std::string("wrong-pw-456"), std::string()}) {
    RedisOptions bad = server.options();
    bad.password = pw;
    RedisBackend b(bad);
    Lock<RedisBackend> l(b, "pw", {.ttl = 10s, .observer = quiet()});
    try {
      (void)l.try_lock();
      FAIL() << "expected ServerError(auth) for password '" << pw << "'";
    } catch (const dlock::ServerError& e) {
      EXPECT_EQ(e.code(), dlock::errc::auth) << e.what();
      const std::string msg = e.what();
      EXPECT_EQ(msg.find("wrong-pw-456"), std::string::npos) << msg;
      EXPECT_EQ(msg.find("pass-only-123"), std::string::npos) << msg;
      EXPECT_NE(msg.find("password"), std::string::npos) << msg;
    }
  }
}

TEST(RedisFault, ReadOnlyReplicaIsRetriedAndOutOfMemoryIsAClearServerError) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer primary;
  RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
  RedisBackend on_replica(replica.options());
  Lock<RedisBackend> l(on_replica, "ro", {.ttl = 10s, .observer = quiet()});
  // READONLY is a failover's transient state (issue 14): a ConnectionError
  // that says nothing was done, and what to do if it lasts.
  try {
    (void)l.try_lock();
    FAIL() << "expected ConnectionError";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("read-only replica"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("point it at the primary"), std::string::npos) << e.what();
  }
  // Retried until the deadline, like an outage.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)l.try_lock_for(300ms), dlock::ConnectionError);
  EXPECT_GE(since(t0), 250ms);

  RedisBackend on_primary(primary.options());
  ASSERT_EQ(on_primary.node().command({"CONFIG", "SET", "maxmemory", "1"}).str, "OK");
  Lock<RedisBackend> m(on_primary, "oom", {.ttl = 10s, .observer = quiet()});
  try {
    (void)m.try_lock();
    FAIL() << "expected ServerError";
  } catch (const dlock::ServerError& e) {
    EXPECT_EQ(e.code(), dlock::errc::server);
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
}

}  // namespace

// hiredis writes with write(): a server that dies while a large pipelined
// batch is being written must fail the batch, not kill this process with
// SIGPIPE (whose default action is to terminate; dlock must not rely on the
// application ignoring it).
TEST(RedisFault, ServerDyingMidWriteNeverRaisesSigpipe) {
  DLOCK_REQUIRE_OWN_REDIS();
  struct sigaction dfl {};
  struct sigaction old {};
  dfl.sa_handler = SIG_DFL;
  ASSERT_EQ(::sigaction(SIGPIPE, &dfl, &old), 0);
  RedisServer server;
  RedisOptions o = server.options();
  o.command_timeout = 5s;
  RedisBackend redis(o);
  {
    Lock<RedisBackend> warm(redis, "warm", {.observer = quiet()});
    ASSERT_TRUE(warm.try_lock());  // a pooled connection exists
  }
  const auto owner = dlock::OwnerId::generate();
  const std::string long_name(200, 'n');
  std::vector<dlock::ExtendItem> items(150'000);
  for (auto& it : items)
    it = {.name = long_name, .owner = &owner, .ttl = 10000ms, .started = std::chrono::steady_clock::now()};
  // While the client streams the batch (~45 MB: many write() calls), the
  // server keeps dropping client connections; the writes that follow a drop
  // hit a reset socket (EPIPE, and SIGPIPE unless dlock prevents it).
  std::atomic<bool> done{false};
  std::thread killer([&] {
    RedisBackend admin(o);
    std::this_thread::sleep_for(5ms);  // fault pacing: the first kill a moment into the stream
    while (!done) {
      (void)admin.node().command({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"});
      std::this_thread::sleep_for(2ms);  // fault pacing: a kill every 2 ms
    }
  });
  redis.extend_many(items);  // must return, with every item failed
  done = true;
  killer.join();
  ::sigaction(SIGPIPE, &old, nullptr);
  for (const auto& it : items) {
    ASSERT_TRUE(it.error != nullptr);
    ASSERT_FALSE(it.valid_until.has_value());
  }
}

// The degradation policies against a real, stopped redis-server: fail closed
// (the default), fall back to in-process exclusion, or run without the lock,
// each degraded grant reported with the lock's name and the reason.
TEST(RedisFault, DegradationPoliciesAgainstAStoppedServer) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisOptions o = server.options();
  o.connect_timeout = 300ms;
  o.command_timeout = 300ms;
  RedisBackend redis(o);
  dlock::MemoryBackend local;
  dlock::UnlockedBackend none;
  dlock::FallbackBackend<RedisBackend, dlock::MemoryBackend> to_local(redis, local);
  dlock::FallbackBackend<RedisBackend, dlock::UnlockedBackend> to_none(redis, none);
  auto metrics = std::make_shared<dlock::MetricsRegistry>();
  using R = dlock::MetricsRegistry::ReasonCounter;

  {  // while the server runs, the primary serves and nothing is degraded
    Lock<decltype(to_local)> lock(to_local, "thumbs:1", {.observer = metrics});
    ASSERT_TRUE(lock.try_lock());
    EXPECT_EQ(metrics->value(R::degraded, "redis", "thumbs", "memory"), 0u);
  }
  server.stop();

  Lock<RedisBackend> closed(redis, "payments:1", {.observer = quiet()});
  EXPECT_THROW((void)closed.try_lock(), dlock::ConnectionError);  // fail closed: nothing runs

  Lock<decltype(to_local)> a(to_local, "thumbs:1", {.observer = metrics});
  Lock<decltype(to_local)> b(to_local, "thumbs:1", {.observer = metrics});
  ASSERT_TRUE(a.try_lock());   // from the in-process fallback
  EXPECT_FALSE(b.try_lock());  // which still excludes within this process
  a.unlock();
  EXPECT_EQ(metrics->value(R::degraded, "redis", "thumbs", "memory"), 1u);  // a's grant (b was contended)

  Lock<decltype(to_none)> c(to_none, "cache:warm", {.observer = metrics});
  Lock<decltype(to_none)> d(to_none, "cache:warm", {.observer = metrics});
  EXPECT_TRUE(c.try_lock());
  EXPECT_TRUE(d.try_lock());  // no lock at all
  EXPECT_EQ(metrics->value(R::degraded, "redis", "cache", "unlocked"), 2u);
}

// ---- issue 11 item 19: "could not reach the service" is one error kind ----
//
// ConnectionError (errc::connection) only when nothing was asked of the
// server: the connect is refused or times out, or the server does not answer
// the connection's handshake. A request that was sent and got no answer
// within command_timeout has an unknown outcome (the server may have granted
// it): TimeoutError, and the message says so. FallbackBackend degrades on the
// first kind only.

namespace {

RedisOptions unreachable(int port) {
  return RedisOptions{.host = "127.0.0.1", .port = port, .connect_timeout = 300ms, .command_timeout = 300ms};
}

// One acquire attempt straight on the backend (no retries, no fallback).
void attempt(RedisBackend& redis, std::string_view name) {
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  (void)redis.try_acquire(
      dlock::AcquireRequest{.name = name, .owner = owner, .ttl = 10s, .started = std::chrono::steady_clock::now()});
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

TEST(RedisFault, AClosedPortIsAConnectionErrorAndTheFallbackDegrades) {
  RedisBackend redis(unreachable(dlock::test::free_loopback_port()));
  Lock<RedisBackend> closed(redis, "closed", {.observer = quiet()});
  try {
    (void)closed.try_lock();
    FAIL() << "acquired on a closed port";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot connect"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(redis.endpoint()), std::string::npos) << e.what();
  }
  dlock::MemoryBackend local;
  dlock::FallbackBackend<RedisBackend, dlock::MemoryBackend> degrade(redis, local);
  Lock<decltype(degrade)> lock(degrade, "closed", {.observer = quiet()});
  EXPECT_TRUE(lock.try_lock());  // from the in-process fallback
}

TEST(RedisFault, AServerThatNeverAnswersTheHandshakeIsAConnectionErrorAndTheFallbackDegrades) {
  dlock::test::BlackHole silent;  // accepts TCP connections, never says a word
  RedisBackend redis(unreachable(silent.port()));
  const std::string why = what_of([&] { attempt(redis, "silent"); });
  EXPECT_NE(why.find("handshake"), std::string::npos) << why;
  EXPECT_NE(why.find("cannot connect"), std::string::npos) << why;
  EXPECT_NE(why.find("connect_timeout 300ms"), std::string::npos) << why;
  EXPECT_THROW(attempt(redis, "silent"), dlock::ConnectionError);

  dlock::MemoryBackend local;
  dlock::FallbackBackend<RedisBackend, dlock::MemoryBackend> degrade(redis, local);
  Lock<decltype(degrade)> lock(degrade, "silent", {.observer = quiet()});
  EXPECT_TRUE(lock.try_lock());  // from the in-process fallback
}

TEST(RedisFault, ARequestSentToAServerPausedAfterTheHandshakeIsInDoubtAndDoesNotDegrade) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisOptions o = server.options();
  o.connect_timeout = 300ms;
  o.command_timeout = 300ms;
  RedisBackend redis(o);
  ASSERT_EQ(redis.node().command({"PING"}).str, "PONG");  // a pooled connection, its handshake done
  server.pause();
  const std::string why = what_of([&] { attempt(redis, "sent"); });
  EXPECT_NE(why.find("the request was sent; its outcome is unknown"), std::string::npos) << why;
  EXPECT_NE(why.find("command_timeout 300ms"), std::string::npos) << why;
  server.resume();

  ASSERT_EQ(redis.node().command({"PING"}).str, "PONG");
  dlock::MemoryBackend local;
  dlock::FallbackBackend<RedisBackend, dlock::MemoryBackend> degrade(redis, local);
  Lock<decltype(degrade)> lock(degrade, "sent", {.observer = quiet()});
  server.pause();
  dlock::test::expect_in_doubt_not_degraded(lock);
  server.resume();
}

}  // namespace
