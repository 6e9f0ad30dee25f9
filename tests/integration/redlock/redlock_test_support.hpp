// Test support for the Redlock integration tests: five throw-away
// redis-servers (support/redis_server.hpp: loopback, temporary directories,
// no persistence, PR_SET_PDEATHSIG) started by a GoogleTest environment
// before the first test and stopped after the last, also when tests fail.
// Each test gets its own key prefix; the fixture heals the cluster (resumes
// paused nodes, restarts killed ones) and deletes the test's keys on every
// node before and after each test.
//
// These tests always start their own servers: they kill, pause and restart
// nodes, which an external DLOCK_TEST_REDIS server cannot offer five times.
#pragma once

#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "support/redis_server.hpp"

namespace dlock::test {

/// An observer that drops every event (for tests that provoke expected warnings).
struct QuietObserver : Observer {
  void on_event(const Event&) noexcept override {}
};

class RedlockCluster : public ::testing::Environment {
 public:
  static RedlockCluster*& instance() {
    static RedlockCluster* env = nullptr;
    return env;
  }
  explicit RedlockCluster(std::size_t nodes = 5) : size_(nodes) { instance() = this; }

  void SetUp() override {
    for (std::size_t i = 0; i < size_; ++i) servers_.push_back(std::make_unique<RedisServer>());
  }
  void TearDown() override { servers_.clear(); }

  [[nodiscard]] std::size_t size() const noexcept { return servers_.size(); }
  [[nodiscard]] RedisServer& server(std::size_t i) { return *servers_.at(i); }
  /// Every node running and not paused.
  void heal() {
    for (auto& s : servers_) {
      if (s->running()) {
        s->resume();
      } else {
        s->restart();
      }
    }
  }

 private:
  std::size_t size_;
  std::vector<std::unique_ptr<RedisServer>> servers_;
};

class RedlockTest : public ::testing::Test {
 public:
  void SetUp() override {
    prefix_ = test_key_prefix();
    ASSERT_NE(RedlockCluster::instance(), nullptr);
    ASSERT_EQ(cluster().size(), 5u) << "the cluster did not start";
    cluster().heal();
    inspect_.clear();
    for (std::size_t i = 0; i < cluster().size(); ++i) {
      RedisOptions o = cluster().server(i).options();
      o.key_prefix = prefix_;
      inspect_.push_back(std::make_unique<detail::RedisClient>(o));
    }
  }
  void TearDown() override {
    cluster().heal();
    for (auto& n : inspect_) {
      try {
        delete_keys(*n, prefix_);
      } catch (const Error& e) {
        ADD_FAILURE() << "cleanup failed: " << e.what();
      }
    }
  }

  [[nodiscard]] static RedlockCluster& cluster() { return *RedlockCluster::instance(); }
  [[nodiscard]] RedisServer& server(std::size_t i) { return cluster().server(i); }

  /// The five nodes with this test's key prefix and the default timeouts.
  [[nodiscard]] RedlockOptions options() const {
    RedlockOptions o;
    for (std::size_t i = 0; i < cluster().size(); ++i) o.nodes.push_back(cluster().server(i).options());
    o.key_prefix = prefix_;
    return o;
  }
  [[nodiscard]] std::string key(std::string_view name) const { return detail::redis_keys(prefix_, name).lock; }
  [[nodiscard]] std::string fence(std::string_view name) const { return detail::redis_keys(prefix_, name).fence; }

  /// A command on node i, through a blocking client of its own.
  detail::RedisValue cmd(std::size_t i, std::initializer_list<std::string_view> args) {
    return inspect_.at(i)->command(args);
  }
  /// The value of `k` on node i; empty when absent.
  std::string get(std::size_t i, std::string_view k) {
    const auto v = cmd(i, {"GET", k});
    return v.type == detail::RedisValue::Type::string ? v.str : std::string();
  }
  /// How many running nodes hold lock `name` for `owner`.
  std::size_t holders(std::string_view name, std::string_view owner) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < cluster().size(); ++i)
      if (server(i).running() && get(i, key(name)) == owner) ++n;
    return n;
  }
  /// How many running nodes have the key of lock `name` at all.
  std::size_t keys_present(std::string_view name) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < cluster().size(); ++i)
      if (server(i).running() && cmd(i, {"EXISTS", key(name)}).integer == 1) ++n;
    return n;
  }
  [[nodiscard]] static std::shared_ptr<Observer> quiet() { return std::make_shared<QuietObserver>(); }

  std::string prefix_;
  std::vector<std::unique_ptr<detail::RedisClient>> inspect_;
};

}  // namespace dlock::test
