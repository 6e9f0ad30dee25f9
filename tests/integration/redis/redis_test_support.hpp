// Fixture shared by the Redis integration tests: a backend on the shared
// server with a per-test key prefix, cleaned up after the test.
#pragma once

#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "support/redis_server.hpp"

namespace dlock::test {

/// An observer that drops every event (for tests that provoke expected warnings).
struct QuietObserver : Observer {
  void on_event(const Event&) noexcept override {}
};

class RedisTest : public ::testing::Test {
 public:  // also used by helpers outside the test bodies
  void SetUp() override {
    prefix_ = test_key_prefix();
    backend_ = std::make_unique<RedisBackend>(options());
  }
  void TearDown() override {
    if (backend_) {
      try {
        delete_keys(backend_->node(), prefix_);
      } catch (const Error& e) {
        ADD_FAILURE() << "cleanup failed: " << e.what();
      }
    }
  }

  /// The shared server's options with this test's key prefix.
  [[nodiscard]] RedisOptions options() const {
    RedisOptions o = SharedRedis::instance()->options();
    o.key_prefix = prefix_;
    return o;
  }
  [[nodiscard]] RedisBackend& redis() { return *backend_; }
  [[nodiscard]] std::string key(std::string_view name) const { return redis_keys_for(name).lock; }
  [[nodiscard]] detail::RedisKeys redis_keys_for(std::string_view name) const {
    return detail::redis_keys(prefix_, name);
  }
  detail::RedisValue cmd(std::initializer_list<std::string_view> args) { return backend_->node().command(args); }
  [[nodiscard]] static std::shared_ptr<Observer> quiet() { return std::make_shared<QuietObserver>(); }

  std::string prefix_;
  std::unique_ptr<RedisBackend> backend_;
};

}  // namespace dlock::test
