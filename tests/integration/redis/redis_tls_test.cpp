// RedisBackend over TLS against real TLS redis-servers (tests/integration/
// support/redis_server.hpp makes the throw-away CA and certificates): locks,
// wake-on-release, 8 processes, Redlock over five TLS nodes, and every way a TLS setting can be wrong,
// each failing fast with a message that says why.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::ConnectionError;
using dlock::RedisBackend;
using dlock::RedisOptions;
using dlock::test::RedisServer;
using dlock::test::TlsMode;
using Clock = std::chrono::steady_clock;

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tls_ = std::make_unique<RedisServer>(std::vector<std::string>{}, TlsMode::on); }
  static void TearDownTestSuite() { tls_.reset(); }
  void SetUp() override {
    if (dlock::test::redis_is_external()) GTEST_SKIP() << "needs its own TLS redis-server";
    prefix_ = dlock::test::test_key_prefix();
  }
  [[nodiscard]] RedisOptions options() const {
    RedisOptions o = tls_->options();
    o.key_prefix = prefix_;
    return o;
  }
  // The message of the ConnectionError the first lock attempt throws, and how long it took.
  static std::pair<std::string, Clock::duration> connect_error(const RedisOptions& o) {
    RedisBackend b(o);
    dlock::Lock<RedisBackend> lock(b, "refused", {.ttl = 10s});
    const auto start = Clock::now();
    try {
      (void)lock.try_lock();
    } catch (const ConnectionError& e) {
      return {e.what(), Clock::now() - start};
    } catch (const std::exception& e) {
      return {std::string("not a ConnectionError: ") + e.what(), Clock::now() - start};
    }
    return {"no error", Clock::now() - start};
  }

  static inline std::unique_ptr<RedisServer> tls_;
  std::string prefix_;
};

TEST_F(RedisTls, LockAndUnlock) {
  RedisBackend b(options());
  dlock::Lock<RedisBackend> a(b, "orders:42", {.ttl = 10s}), other(b, "orders:42", {.ttl = 10s});
  ASSERT_TRUE(a.try_lock());
  EXPECT_GT(a.fencing_token(), 0u);
  EXPECT_FALSE(other.try_lock());
  a.unlock();
  ASSERT_TRUE(other.try_lock());
  EXPECT_GT(other.fencing_token(), 0u);
  other.unlock();
}

TEST_F(RedisTls, RedissUri) {
  RedisOptions base{.key_prefix = prefix_, .tls = dlock::TlsOptions{.ca_file = tls_->certificates().ca}};
  RedisBackend b(fmt::format("rediss://127.0.0.1:{}/0", tls_->port()), base);
  dlock::Lock<RedisBackend> lock(b, "uri", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
}

TEST_F(RedisTls, ReleaseWakesAWaiter) {
  RedisBackend b(options());
  dlock::Lock<RedisBackend> holder(b, "wake", {.ttl = 30s});
  ASSERT_TRUE(holder.try_lock());
  auto sub = b.subscribe_release("wake");  // acknowledged over TLS before it returns
  holder.unlock();
  EXPECT_TRUE(sub.wait_for(5s)) << "the release's PUBLISH did not arrive over the TLS pub/sub connection";
  // And a blocked Lock is woken long before its backoff would retry.
  ASSERT_TRUE(holder.try_lock());
  std::thread releaser([&] {
    std::this_thread::sleep_for(200ms);  // let the waiter block first (not a synchronisation: either order passes)
    holder.unlock();
  });
  dlock::Lock<RedisBackend> waiter(b, "wake", {.ttl = 30s, .retry = {.initial_delay = 5s, .max_delay = 5s}});
  const auto start = Clock::now();
  EXPECT_TRUE(waiter.try_lock_for(10s));
  EXPECT_LT(Clock::now() - start, 3s) << "woken by the backoff, not by the release";
  releaser.join();
  waiter.unlock();
}

TEST_F(RedisTls, WrongCaFailsWithinConnectTimeoutSayingWhy) {
  RedisOptions o = options();
  o.tls->ca_file = tls_->certificates().other_ca;
  const auto [message, took] = connect_error(o);
  EXPECT_NE(message.find("certificate verify failed: "), std::string::npos) << message;
  EXPECT_NE(message.find(fmt::format("127.0.0.1:{}", tls_->port())), std::string::npos) << message;
  EXPECT_LT(took, o.connect_timeout);
}

TEST_F(RedisTls, ServerNameMismatchIsRefused) {
  RedisOptions o = options();
  o.tls->server_name = "not-this-server.example";
  const auto [message, took] = connect_error(o);
  EXPECT_NE(message.find("certificate verify failed: "), std::string::npos) << message;
  o.tls->server_name = "localhost";  // the name the certificate carries
  RedisBackend b(o);
  dlock::Lock<RedisBackend> lock(b, "named", {.ttl = 10s});
  EXPECT_TRUE(lock.try_lock());
}

TEST_F(RedisTls, MutualTlsWithAndWithoutAClientCertificate) {
  RedisServer mutual({}, TlsMode::mutual);
  RedisOptions o = mutual.options();
  o.key_prefix = prefix_;
  {
    RedisBackend b(o);
    dlock::Lock<RedisBackend> lock(b, "mtls", {.ttl = 10s});
    ASSERT_TRUE(lock.try_lock());
    lock.unlock();
  }
  o.tls->cert_file.clear();
  o.tls->key_file.clear();
  const auto [message, took] = connect_error(o);
  EXPECT_NE(message.find("cannot connect"), std::string::npos) << message;
  EXPECT_NE(message.find("certificate"), std::string::npos) << message;
  EXPECT_LT(took, o.connect_timeout);
}

TEST_F(RedisTls, PlainClientOnATlsPortFailsFast) {
  RedisOptions o = options();
  o.tls.reset();
  const auto [message, took] = connect_error(o);
  EXPECT_NE(message.find("cannot connect"), std::string::npos) << message;
  EXPECT_NE(message.find("TLS"), std::string::npos) << message;
  EXPECT_LT(took, o.connect_timeout);
}

// A plain Redis reads the ClientHello as an inline command: it answers an
// error (then "wrong version number") only if the hello's random bytes hold a
// newline, else it waits for more. Either way the attempt ends within
// connect_timeout and the message names the TLS handshake.
TEST_F(RedisTls, TlsClientOnAPlainPortFailsWithinConnectTimeout) {
  RedisOptions o = dlock::test::SharedRedis::instance()->options();
  o.tls = dlock::TlsOptions{.ca_file = tls_->certificates().ca};
  o.connect_timeout = 300ms;
  const auto [message, took] = connect_error(o);
  EXPECT_NE(message.find("TLS handshake"), std::string::npos) << message;
  EXPECT_NE(message.find("cannot connect"), std::string::npos) << message;
  EXPECT_LT(took, o.connect_timeout + 500ms);
}

TEST_F(RedisTls, RedlockOverFiveTlsNodes) {
  std::vector<std::unique_ptr<RedisServer>> servers;
  dlock::RedlockOptions o{.node_timeout = 1s, .key_prefix = prefix_};  // TLS handshakes on a loaded machine
  for (int i = 0; i < 5; ++i) {
    servers.push_back(std::make_unique<RedisServer>(std::vector<std::string>{}, TlsMode::on));
    o.nodes.push_back(servers.back()->options());
  }
  dlock::RedlockBackend rl(o);
  dlock::Lock<dlock::RedlockBackend> lock(rl, "five", {.ttl = 10s}), other(rl, "five", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(other.try_lock());
  auto sub = rl.subscribe_release("five");
  EXPECT_EQ(sub.acknowledged(), 5u);
  lock.unlock();
  EXPECT_TRUE(sub.wait_for(5s)) << "no release arrived over the TLS pub/sub connections";
  ASSERT_TRUE(other.try_lock());
  other.unlock();
}

TEST_F(RedisTls, ProcessesExcludeEachOtherAndTokensIncrease) {
  constexpr int workers = 8, cycles = 100;
  const std::string uri = fmt::format("rediss://127.0.0.1:{}/0", tls_->port());
  RedisBackend b(options());
  dlock::test::expect_workers_exclude_each_other(
      DLOCK_REDIS_WORKER, {uri, prefix_, "tls-counter", std::to_string(cycles), tls_->certificates().ca}, workers,
      cycles, b.node(), prefix_);
}

}  // namespace
