// RedisBackend's connections against real servers: what the handshake checks
// (an evicting maxmemory-policy, a refused AUTH that repeats its arguments,
// SCRIPT LOAD refused by the ACL) and fork(): a child never shares a socket
// with its parent.
#include <dlock/detail/sha1.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "redis_test_support.hpp"
#include "support/lock_cycles.hpp"
#include "unit/fork_support.hpp"
#include "unit/leak_check.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::RedisOptions;
using dlock::test::leaked_part;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

using RedisConnTest = RedisTest;

// How often the server ran `command` since its last CONFIG RESETSTAT (INFO commandstats).
long long calls(dlock::detail::RedisClient& node, const std::string& command) {
  const std::string info = node.command({"INFO", "commandstats"}).str;
  const std::string field = "cmdstat_" + command + ":calls=";
  const auto at = info.find(field);
  return at == std::string::npos ? 0 : std::stoll(info.substr(at + field.size()));
}

// ---- AUTH refused with its arguments repeated (item 14) ----

TEST_F(RedisConnTest, AuthRefusalNeverShowsThePasswordEvenWhenTheServerRepeatsIt) {
  DLOCK_REQUIRE_OWN_REDIS();
  // A server that does not know AUTH answers "unknown command 'AUTH', with
  // args beginning with: 'user' 'password'" (so do some proxies).
  RedisServer server({"--rename-command", "AUTH", ""});
  const std::string password = "Zx7Qp2Lk9Wm4";
  for (const std::string user : {"", "app-user"}) {
    RedisOptions o = server.options();
    o.username = user;
    o.password = password;
    o.key_prefix = prefix_;
    RedisBackend b(o);
    // The default observer (its stderr line is checked too) logs once per lock name and event.
    Lock<RedisBackend> lock(b, "auth:" + user, {.ttl = 10s});
    std::string what;
    ::testing::internal::CaptureStderr();
    try {
      (void)lock.try_lock();
    } catch (const dlock::ServerError& e) {
      what = e.what();
      EXPECT_EQ(e.code(), dlock::errc::auth);
    }
    const std::string logged = ::testing::internal::GetCapturedStderr();
    ASSERT_FALSE(what.empty()) << "expected ServerError(auth)";
    EXPECT_EQ(leaked_part(what, password), "") << what;
    EXPECT_EQ(leaked_part(logged, password), "") << logged;
    EXPECT_NE(logged.find("refused authentication"), std::string::npos) << logged;
    EXPECT_NE(what.find(b.endpoint()), std::string::npos) << what;
    EXPECT_NE(what.find("does not know AUTH"), std::string::npos) << what;
  }
}

// ---- an evicting maxmemory-policy (item 6) ----

TEST_F(RedisConnTest, ServerThatMayEvictLockKeysFailsClosedByDefault) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server({"--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"});
  RedisOptions o = server.options();
  o.key_prefix = prefix_;
  RedisBackend b(o);
  Lock<RedisBackend> lock(b, "evict", {.ttl = 10s, .observer = quiet()});
  try {
    (void)lock.try_lock();
    FAIL() << "expected ServerError";
  } catch (const dlock::ServerError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.code(), dlock::errc::server);
    EXPECT_NE(msg.find(b.endpoint()), std::string::npos) << msg;
    EXPECT_NE(msg.find("maxmemory-policy volatile-lru"), std::string::npos) << msg;
    EXPECT_NE(msg.find("noeviction"), std::string::npos) << msg;
    EXPECT_NE(msg.find("eviction_check"), std::string::npos) << msg;
  }
  // Nothing was written: the check comes before the first command.
  RedisOptions unchecked = o;
  unchecked.eviction_check = dlock::EvictionCheck::off;
  RedisBackend inspect(unchecked);
  EXPECT_EQ(inspect.node().command({"EXISTS", key("evict")}).integer, 0);
  // A blocking acquire does not retry it.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW((void)lock.try_lock_for(5s), dlock::ServerError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST_F(RedisConnTest, EvictionCheckWarnProceedsWithOneWarningPerServerAndOffSkipsTheCheck) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server({"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"});
  RedisOptions o = server.options();
  o.key_prefix = prefix_;
  o.eviction_check = dlock::EvictionCheck::warn;
  RedisBackend b(o);
  ::testing::internal::CaptureStderr();
  Lock<RedisBackend> lock(b, "warned", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  {  // more connections to the same server: no more warnings
    using dlock::detail::RedisLink;
    for (int i = 0; i < 2; ++i) {
      RedisLink link = RedisLink::open(o, {.facts = &b.node().facts()});
      dlock::detail::RedisCall ping;
      ping.request.push({"PING"});
      EXPECT_EQ(link.exec(std::move(ping)).at(0).str, "PONG");
    }
  }
  const std::string logged = ::testing::internal::GetCapturedStderr();
  const auto first = logged.find("maxmemory-policy allkeys-lru");
  EXPECT_NE(first, std::string::npos) << logged;
  EXPECT_EQ(logged.find("maxmemory-policy allkeys-lru", first + 1), std::string::npos) << "warned twice:\n" << logged;
  EXPECT_EQ(b.node().facts().warnings().size(), 1u);

  // off: no CONFIG GET at all.
  (void)b.node().command({"CONFIG", "RESETSTAT"});
  RedisOptions off = o;
  off.eviction_check = dlock::EvictionCheck::off;
  RedisBackend quiet_backend(off);
  Lock<RedisBackend> l2(quiet_backend, "off", {.ttl = 10s});
  ASSERT_TRUE(l2.try_lock());
  l2.unlock();
  EXPECT_EQ(calls(b.node(), "config|get"), 0);
  EXPECT_TRUE(quiet_backend.node().facts().warnings().empty());
}

TEST_F(RedisConnTest, ServerWithoutConfigIsUsedWithOneWarning) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server({"--rename-command", "CONFIG", ""});
  RedisOptions o = server.options();
  o.key_prefix = prefix_;
  RedisBackend b(o);
  ::testing::internal::CaptureStderr();
  Lock<RedisBackend> lock(b, "noconfig", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  const std::string logged = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(logged.find("cannot check that Redis at " + std::string(b.endpoint())), std::string::npos) << logged;
  ASSERT_EQ(b.node().facts().warnings().size(), 1u);
}

// ---- SCRIPT LOAD refused by the ACL (item 17) ----

TEST_F(RedisConnTest, AclUserWithoutScriptLoadCallsTheScriptsByShaAndEval) {
  // EVALSHA names a script by the SHA-1 that SCRIPT LOAD would return.
  for (std::size_t i = 0; i < dlock::detail::redis_script_count; ++i)
    EXPECT_EQ(cmd({"SCRIPT", "LOAD", dlock::detail::redis_scripts[i]}).str,
              dlock::detail::sha1_hex(dlock::detail::redis_scripts[i]));

  const AclUser user(*this, {"~*", "&*", "+@all", "-script|load", "-config"});
  RedisOptions o = options();
  o.username = user.name;
  o.password = user.password;
  ASSERT_EQ(cmd({"SCRIPT", "FLUSH"}).str, "OK");  // nobody has the scripts loaded
  RedisBackend b(o);
  ::testing::internal::CaptureStderr();
  {
    Lock<RedisBackend> lock(b, "acl-eval", {.ttl = 10s});
    ASSERT_TRUE(lock.try_lock());
    EXPECT_EQ(cmd({"GET", key("acl-eval")}).str, lock.owner_id());
    lock.extend(5s);
    EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  }
  // The EVAL fallback cached the scripts: from now on EVALSHA alone.
  (void)cmd({"CONFIG", "RESETSTAT"});
  {
    Lock<RedisBackend> lock(b, "acl-evalsha", {.ttl = 10s});
    ASSERT_TRUE(lock.try_lock());
    EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  }
  EXPECT_GE(calls(backend_->node(), "evalsha"), 2);
  EXPECT_EQ(calls(backend_->node(), "eval"), 0);
  // The user may not read CONFIG either: one warning, and the locks work.
  const std::string logged = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(logged.find("NOPERM"), std::string::npos) << logged;
  EXPECT_EQ(b.node().facts().warnings().size(), 1u);
}

// ---- fork() (item 2) ----

// Also checks on the server that each lock is held by its owner.
std::string lock_cycles(RedisBackend& b, const std::string& who, int cycles) {
  return dlock::test::lock_cycles(b, who, cycles, [&](const std::string& name, std::string_view owner) {
    const auto v = b.node().command({"GET", b.node().keys(name).lock});
    return v.str == owner ? std::string() : "the server holds '" + v.str + "' for " + name;
  });
}

TEST_F(RedisConnTest, ParentAndChildUseOneBackendAfterForkWithoutSharingAConnection) {
  auto b = std::make_unique<RedisBackend>(options());
  ASSERT_EQ(lock_cycles(*b, "warm", 4), "");         // idle pooled connections exist
  auto parent_sub = b->subscribe_release("warm:0");  // and the pub/sub thread runs
  const std::string channel = b->node().keys("child-wake").channel;

  std::string parent_result;
  const auto child_result = dlock::test::in_child_while(
      [&]() -> std::string {
        if (std::string why = lock_cycles(*b, "child", 400); !why.empty()) return why;
        // The pub/sub thread is the parent's: the child's first subscribe starts its own.
        auto sub = b->subscribe_release("child-wake");
        (void)b->node().command({"PUBLISH", channel, "x"});
        if (!sub.wait_for(5s)) return "no release notification in the child";
        { auto inherited = std::move(parent_sub); }  // the parent's subscription: dropped without its lock
        b.reset();                                   // closes the child's connections, joins the child's thread
        return "ok";
      },
      [&] { parent_result = lock_cycles(*b, "parent", 400); });
  EXPECT_EQ(parent_result, "");
  EXPECT_EQ(child_result.value_or("(the child crashed or hung)"), "ok");
  // The parent's pool and pub/sub connection still work.
  EXPECT_EQ(lock_cycles(*b, "parent-after", 8), "");
  auto sub = b->subscribe_release("after");
  (void)cmd({"PUBLISH", b->node().keys("after").channel, "x"});
  EXPECT_TRUE(sub.wait_for(5s));
}

}  // namespace
