// Fixture shared by the Redis integration tests: a backend on the shared
// server with a per-test key prefix, cleaned up after the test.
#pragma once

#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "support/redis_server.hpp"

extern char** environ;

namespace dlock::test {

/// An observer that drops every event (for tests that provoke expected warnings).
struct QuietObserver : Observer {
  void on_event(const Event&) noexcept override {}
};

/// The cross-process counter test (redis_worker): spawns `workers` copies of
/// `program` with `args` (URI KEY_PREFIX LOCK_NAME CYCLES [TLS_CA_FILE]),
/// waits for them, then expects <prefix>counter == workers x cycles and the
/// tokens RPUSHed inside the critical sections strictly increasing.
inline void expect_workers_exclude_each_other(const char* program, const std::vector<std::string>& args, int workers,
                                              int cycles, detail::RedisClient& node, const std::string& prefix) {
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    std::vector<std::string> argv_text{program};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    ASSERT_EQ(posix_spawn(&pid, program, nullptr, nullptr, argv.data(), environ), 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker " << pid << " status " << status;
  }
  EXPECT_EQ(node.command({"GET", prefix + "counter"}).str, std::to_string(workers * cycles));
  const auto list = node.command({"LRANGE", prefix + "tokens", "0", "-1"});
  ASSERT_EQ(list.elements.size(), static_cast<std::size_t>(workers * cycles));
  std::uint64_t last = 0;
  std::size_t violations = 0;
  for (const auto& e : list.elements) {
    const std::uint64_t t = std::stoull(e.str);
    if (t <= last) ++violations;
    last = t;
  }
  EXPECT_EQ(violations, 0u) << "fencing tokens not strictly increasing in acquisition order";
}

/// The server's clock (TIME) in microseconds since the epoch.
inline std::uint64_t server_time_us(detail::RedisClient& node) {
  const detail::RedisValue r = node.command({"TIME"});
  return std::stoull(r.elements.at(0).str) * 1'000'000 + std::stoull(r.elements.at(1).str);
}

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

  /// A throw-away ACL user on the shared server, deleted when this goes.
  class AclUser {
   public:
    /// Creates the user with these ACL rules (after "on" and its password).
    AclUser(RedisTest& test, std::initializer_list<std::string_view> rules)
        : name("dlock-test-" + std::string(OwnerId::generate().str()).substr(24)), test_(test) {
      const std::string pw = ">" + password;
      std::vector<std::string_view> args{"ACL", "SETUSER", name, "on", pw};
      args.insert(args.end(), rules.begin(), rules.end());
      const auto reply = test_.backend_->node().command(args);
      if (reply.str != "OK") throw std::runtime_error("ACL SETUSER failed: " + reply.str);
    }
    AclUser(const AclUser&) = delete;
    AclUser& operator=(const AclUser&) = delete;
    ~AclUser() {
      try {
        (void)test_.cmd({"ACL", "DELUSER", name});
      } catch (...) {
      }
    }

    const std::string name;
    const std::string password = "s3cret-pass";

   private:
    RedisTest& test_;
  };

  [[nodiscard]] static std::shared_ptr<Observer> quiet() { return std::make_shared<QuietObserver>(); }

  std::string prefix_;
  std::unique_ptr<RedisBackend> backend_;
};

}  // namespace dlock::test
