// The acquire script's server calls, counted with INFO commandstats (issue 12):
// a grant makes five (SET NX PX, GET of the counter, TIME, SET, PEXPIREAT)
// and does not look at a holder (no PTTL, TYPE); contention makes three
// (SET NX PX, GET, PTTL). Before the trim a grant made six (PTTL, TIME, GET,
// SET, PEXPIREAT, SET). docs/redis.md lists them.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <regex>
#include <string>
#include <variant>

#include "support/redis_server.hpp"

using namespace std::chrono_literals;

namespace {

// Calls per command since the last CONFIG RESETSTAT, without the test's own
// (CONFIG RESETSTAT, INFO) and the script call itself (EVALSHA, EVAL).
std::map<std::string, long> calls(dlock::detail::RedisClient& node) {
  const std::string info = node.command({"INFO", "commandstats"}).str;
  std::map<std::string, long> out;
  const std::regex line(R"(cmdstat_([a-z|]+):calls=(\d+))");
  for (auto it = std::sregex_iterator(info.begin(), info.end(), line); it != std::sregex_iterator(); ++it) {
    const std::string name = (*it)[1];
    if (name == "config|resetstat" || name == "info" || name == "evalsha" || name == "eval") continue;
    out[name] = std::stol((*it)[2]);
  }
  return out;
}

long total(const std::map<std::string, long>& c) {
  long n = 0;
  for (const auto& [name, k] : c) n += k;
  return n;
}

TEST(RedisScriptCalls, AGrantMakesFiveServerCallsAndContentionThree) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::RedisServer server;
  dlock::RedisOptions o = server.options();
  o.key_prefix = "calls:";
  o.pool_size = 1;
  dlock::RedisBackend redis(o);
  ASSERT_EQ(redis.node().command({"PING"}).str, "PONG");  // the connection open, the scripts loaded

  const auto acquire = [&](const dlock::OwnerId& owner) {
    return redis.try_acquire(dlock::AcquireRequest{"n", owner, 10s, std::chrono::steady_clock::now()});
  };
  ASSERT_EQ(redis.node().command({"CONFIG", "RESETSTAT"}).str, "OK");
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(acquire(dlock::OwnerId::generate())));
  const auto grant = calls(redis.node());
  EXPECT_EQ(total(grant), 5) << "a grant's server calls";
  EXPECT_EQ(grant.count("pttl"), 0U) << "a grant looked at a holder";
  EXPECT_EQ(grant.count("type"), 0U) << "a grant looked at a holder";

  ASSERT_EQ(redis.node().command({"CONFIG", "RESETSTAT"}).str, "OK");
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(acquire(dlock::OwnerId::generate())));
  const auto contended = calls(redis.node());
  EXPECT_EQ(total(contended), 3) << "contention's server calls";
  EXPECT_EQ(contended.count("pttl"), 1U);
}

}  // namespace
