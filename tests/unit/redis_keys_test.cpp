// The Redis backend's pure parts, without a server: key layout and hash
// tags, the URI form, option validation, error-reply mapping.
#include <dlock/detail/sha1.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "leak_check.hpp"

using dlock::RedisOptions;
using dlock::detail::redis_hash_tag;
using dlock::detail::redis_keys;
using dlock::test::leaked_part;
using namespace std::chrono_literals;

static_assert(dlock::Backend<dlock::RedisBackend>);
static_assert(dlock::NotifiesRelease<dlock::RedisBackend>);
static_assert(!dlock::WaitsOnServer<dlock::RedisBackend>);
static_assert(dlock::BatchesExtend<dlock::RedisBackend>);

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dlock::InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}

TEST(RedisKeys, Layout) {
  const auto k = redis_keys("dlock:", "orders:42");
  EXPECT_EQ(k.lock, "dlock:{orders:42}");
  EXPECT_EQ(k.fence, "dlock:{orders:42}:fence");
  EXPECT_EQ(k.channel, "dlock:{orders:42}:released");
  const auto e = redis_keys("", "x");
  EXPECT_EQ(e.lock, "{x}");
  EXPECT_EQ(e.fence, "{x}:fence");
}

TEST(RedisKeys, AllThreeShareTheHashTag) {
  for (const std::string name : {"orders:42", "a{b", "a}b", "{x}", "x{}", "ü-名前", "a b"}) {
    const auto k = redis_keys("app:", name);
    const auto tag = redis_hash_tag(k.lock);
    EXPECT_NE(tag, k.lock) << name;  // a real tag, not the whole key
    EXPECT_EQ(redis_hash_tag(k.fence), tag) << name;
    EXPECT_EQ(redis_hash_tag(k.channel), tag) << name;
  }
}

TEST(RedisKeys, HashTagRules) {
  EXPECT_EQ(redis_hash_tag("plain"), "plain");
  EXPECT_EQ(redis_hash_tag("a{b}c"), "b");
  EXPECT_EQ(redis_hash_tag("a{}c"), "a{}c");  // empty tag: whole key
  EXPECT_EQ(redis_hash_tag("a{b"), "a{b");
  EXPECT_EQ(redis_hash_tag("{a}{b}"), "a");
}

TEST(RedisKeys, DistinctNamesGiveDistinctKeys) {
  const auto a = redis_keys("p:", "x");
  const auto b = redis_keys("p:", "x}:fence");  // would collide with a.fence if braces were not closed per name
  EXPECT_NE(a.fence, b.lock);
  EXPECT_NE(a.lock, b.lock);
}

TEST(RedisKeys, NameStartingWithCloseBraceIsRejected) {
  EXPECT_THROW(dlock::detail::validate_redis_lock_name("}x"), dlock::InvalidArgument);
  EXPECT_NO_THROW(dlock::detail::validate_redis_lock_name("x}"));
}

TEST(RedisUri, HostPortDatabase) {
  const auto o = dlock::parse_redis_uri("redis://example.com:6380/3");
  EXPECT_EQ(o.host, "example.com");
  EXPECT_EQ(o.port, 6380);
  EXPECT_EQ(o.database, 3);
  EXPECT_TRUE(o.unix_socket.empty());
  EXPECT_TRUE(o.username.empty());
  EXPECT_TRUE(o.password.empty());
}

TEST(RedisUri, Defaults) {
  const auto o = dlock::parse_redis_uri("redis://10.0.0.1");
  EXPECT_EQ(o.host, "10.0.0.1");
  EXPECT_EQ(o.port, 6379);
  EXPECT_EQ(o.database, 0);
  EXPECT_EQ(dlock::parse_redis_uri("redis://h/").database, 0);
}

TEST(RedisUri, UserAndPassword) {
  const auto o = dlock::parse_redis_uri("redis://app:secret@127.0.0.1:6379/0");
  EXPECT_EQ(o.username, "app");
  EXPECT_EQ(o.password, "secret");
  EXPECT_EQ(o.host, "127.0.0.1");
  const auto p = dlock::parse_redis_uri("redis://:only%40pass%3A@h");
  EXPECT_EQ(p.username, "");
  EXPECT_EQ(p.password, "only@pass:");
}

TEST(RedisUri, Ipv6) {
  const auto o = dlock::parse_redis_uri("redis://[::1]:7000/2");
  EXPECT_EQ(o.host, "::1");
  EXPECT_EQ(o.port, 7000);
  EXPECT_EQ(o.database, 2);
  EXPECT_EQ(dlock::detail::redis_endpoint(o), "[::1]:7000");
}

TEST(RedisUri, UnixSocket) {
  const auto o = dlock::parse_redis_uri("unix:///run/redis/redis.sock?db=5");
  EXPECT_EQ(o.unix_socket, "/run/redis/redis.sock");
  EXPECT_EQ(o.database, 5);
  EXPECT_EQ(dlock::detail::redis_endpoint(o), "/run/redis/redis.sock");
  const auto a = dlock::parse_redis_uri("unix://app:pw@/tmp/r.sock");
  EXPECT_EQ(a.username, "app");
  EXPECT_EQ(a.password, "pw");
  EXPECT_EQ(a.unix_socket, "/tmp/r.sock");
}

TEST(RedisUri, KeepsOtherFieldsOfTheBase) {
  const auto o = dlock::parse_redis_uri("redis://h:1", RedisOptions{.key_prefix = "app:", .pool_size = 2});
  EXPECT_EQ(o.key_prefix, "app:");
  EXPECT_EQ(o.pool_size, 2u);
  EXPECT_EQ(o.port, 1);
}

TEST(RedisUri, RedissMeansTls) {
  const auto o = dlock::parse_redis_uri("rediss://app:pw@cache.internal:6380/2");
  ASSERT_TRUE(o.tls.has_value());
  EXPECT_TRUE(o.tls->verify);
  EXPECT_EQ(o.host, "cache.internal");
  EXPECT_EQ(o.port, 6380);
  EXPECT_EQ(o.database, 2);
  EXPECT_EQ(o.password, "pw");
  EXPECT_EQ(dlock::parse_redis_uri("rediss://h").port, 6379);
  // The base's TLS settings (CA, client certificate) are kept.
  const auto base = dlock::RedisOptions{.tls = dlock::TlsOptions{.ca_file = "/etc/ca.pem"}};
  EXPECT_EQ(dlock::parse_redis_uri("rediss://h", base).tls->ca_file, "/etc/ca.pem");
  EXPECT_FALSE(dlock::parse_redis_uri("redis://h").tls.has_value());
}

TEST(RedisUri, Errors) {
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("localhost:6379"); }).find("scheme is missing"),
            std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("localhost:6379"); }).find("expected redis[s]://"),
            std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("http://h"); }).find("unknown scheme"), std::string::npos);
  EXPECT_NE(error_of([] {
              (void)dlock::parse_redis_uri("redis://h", dlock::RedisOptions{.tls = dlock::TlsOptions{}});
            }).find("rediss://"),
            std::string::npos);  // never a silent downgrade
  EXPECT_NE(error_of([] {
              (void)dlock::parse_redis_uri("unix:///tmp/r.sock", dlock::RedisOptions{.tls = dlock::TlsOptions{}});
            }).find("RedisOptions.tls"),
            std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://h:0"); }).find("port"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://h:99999"); }).find("port"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://h:x"); }).find("port"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://:6379"); }).find("host"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://h/db"); }).find("database"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://h?timeout=1"); }).find("only db=N"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("unix://relative.sock"); }).find("absolute"), std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://justuser@h"); }).find("user:password"),
            std::string::npos);
  EXPECT_NE(error_of([] { (void)dlock::parse_redis_uri("redis://user:@h"); }).find("needs a password"),
            std::string::npos);
  EXPECT_EQ(dlock::parse_redis_uri("unix:///tmp/a@b.sock").unix_socket, "/tmp/a@b.sock");
}

TEST(RedisUri, ErrorsNeverShowThePassword) {
  for (const char* uri : {"redis://app:hunter2@h:0", "redis://:hunter2@h/x", "unix://u:hunter2@rel",
                          "redis://:hunter2@h?bad=1", "redis://app:hunter2@h:%zz", "redis://u:hun%zzter2@h"}) {
    const std::string msg = error_of([&] { (void)dlock::parse_redis_uri(uri); });
    EXPECT_NE(msg.find("dlock: "), std::string::npos) << uri;
    EXPECT_EQ(msg.find("hunter2"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("hun"), std::string::npos) << msg;
  }
}

// Passwords written into URIs unencoded, with every character that ends a URI
// part early ('/', '?', '#', '@', ':'); and URIs that are wrong around them.
const std::vector<std::string> hostile_passwords{"s3cr3t/Qx7v", "Jv9?Wk2pLm", "Zq8@Yb#Tn:Rr", "/Mz8Lq4",   "Vb4Kx?",
                                                 "Nh3@Gp6/Cx?", "Fq!w%zzK9",  "Ux:9/?@#Pw",   "Hk2 Lm5/Dd"};

std::vector<std::string> hostile_uris(const std::string& pw) {
  return {"redis://app:" + pw + "@127.0.0.1:6379/0",
          "redis://:" + pw + "@h",
          "redis://app:" + pw + "@h:0",
          "redis://app:" + pw + "@h:port",
          "redis://app:" + pw + "@h:",
          "redis://app:" + pw + "@[::1",
          "redis://app:" + pw + "@[::1]x",
          "redis://app:" + pw + "@h/db",
          "redis://app:" + pw + "@h?timeout=1",
          "redis://app:" + pw + "@h?db=x",
          "redis://app:" + pw + "@",
          "redis://app:" + pw,  // the "@host" forgotten
          "redis://" + pw + "@h",
          "redis://" + pw,
          "unix://app:" + pw + "@/tmp/r.sock",
          "unix://app:" + pw + "@rel.sock",
          "unix://app:" + pw + "@/tmp/r.sock?db=x",
          "rediss://app:" + pw + "@h",
          "http://app:" + pw + "@h",
          "app:" + pw + "@h:6379",
          "redis:/app:" + pw + "@h"};
}

TEST(RedisUri, PasswordsWithDelimitersParseUpToTheLastAt) {
  for (const auto& pw : hostile_passwords) {
    if (pw.find('%') != std::string::npos) continue;  // not valid percent-encoding: rejected below
    const auto o = dlock::parse_redis_uri("redis://app:" + pw + "@127.0.0.1:6380/2");
    EXPECT_EQ(o.username, "app");
    EXPECT_EQ(o.password, pw);
    EXPECT_EQ(o.host, "127.0.0.1");
    EXPECT_EQ(o.port, 6380);
    EXPECT_EQ(o.database, 2);
    const auto u = dlock::parse_redis_uri("unix://app:" + pw + "@/tmp/r.sock?db=4");
    EXPECT_EQ(u.password, pw);
    EXPECT_EQ(u.unix_socket, "/tmp/r.sock");
    EXPECT_EQ(u.database, 4);
  }
}

TEST(RedisUri, NoErrorShowsAnyPartOfThePassword) {
  std::size_t errors = 0;
  for (const auto& pw : hostile_passwords) {
    for (const auto& uri : hostile_uris(pw)) {
      std::string msg;
      try {
        (void)dlock::parse_redis_uri(uri);
        continue;
      } catch (const dlock::InvalidArgument& e) {
        msg = e.what();
      }
      ++errors;
      EXPECT_NE(msg.find("dlock: invalid Redis URI"), std::string::npos) << msg;
      EXPECT_EQ(leaked_part(msg, pw), "") << uri << " -> " << msg;
    }
  }
  EXPECT_GT(errors, 150u);
}

TEST(RedisOptionsValidation, NamesFieldAndValue) {
  struct Case {
    RedisOptions o;
    std::string field, value;
  };
  const Case cases[] = {
      {{.host = ""}, "RedisOptions.host", "\"\""},
      {{.port = 0}, "RedisOptions.port", "0"},
      {{.port = 70000}, "RedisOptions.port", "70000"},
      {{.unix_socket = "rel.sock"}, "RedisOptions.unix_socket", "rel.sock"},
      {{.username = "app"}, "RedisOptions.username", "app"},
      {{.database = -1}, "RedisOptions.database", "-1"},
      {{.connect_timeout = 0ms}, "RedisOptions.connect_timeout", "0s"},
      {{.command_timeout = -5ms}, "RedisOptions.command_timeout", "-5ms"},
      {{.key_prefix = "a{b"}, "RedisOptions.key_prefix", "a{b"},
      {{.pool_size = 0}, "RedisOptions.pool_size", "0"},
      {{.fence_ttl = 10ms}, "RedisOptions.fence_ttl", "10ms"},
  };
  for (const auto& c : cases) {
    const std::string msg = error_of([&] { dlock::detail::validate(c.o); });
    EXPECT_NE(msg.find(c.field), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.value), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(dlock::detail::validate(RedisOptions{}));
  EXPECT_NO_THROW(dlock::detail::validate(RedisOptions{.host = "", .unix_socket = "/tmp/x.sock"}));
  EXPECT_NO_THROW(dlock::detail::validate(RedisOptions{.password = "pw"}));
}

TEST(RedisOptionsValidation, BackendValidatesAtConstruction) {
  EXPECT_THROW(dlock::RedisBackend(RedisOptions{.pool_size = 0}), dlock::InvalidArgument);
  EXPECT_THROW(dlock::RedisBackend("redis://h:0"), dlock::InvalidArgument);
}

TEST(RedisErrors, ServerRepliesMapToErrorCodes) {
  using dlock::detail::RedisValue;
  auto code_of = [](std::string reply) {
    try {
      dlock::detail::throw_if_error(RedisValue{RedisValue::Type::error, 0, std::move(reply), {}}, "h:1", "test");
    } catch (const dlock::Error& e) {
      return e.code();
    }
    return std::error_code{};
  };
  EXPECT_EQ(code_of("WRONGPASS invalid username-password pair or user is disabled."), dlock::errc::auth);
  EXPECT_EQ(code_of("NOAUTH Authentication required."), dlock::errc::auth);
  EXPECT_EQ(code_of("NOPERM this user has no permissions to run the 'evalsha' command"), dlock::errc::auth);
  // A failover's transient states are retried like an outage (issue 14).
  EXPECT_EQ(code_of("READONLY You can't write against a read only replica."), dlock::errc::connection);
  EXPECT_EQ(code_of("LOADING Redis is loading the dataset in memory"), dlock::errc::connection);
  EXPECT_EQ(code_of("MASTERDOWN Link with MASTER is down"), dlock::errc::connection);
  EXPECT_EQ(code_of("OOM command not allowed when used memory > 'maxmemory'."), dlock::errc::server);
  EXPECT_EQ(code_of("WRONGTYPE Operation against a key holding the wrong kind of value"), dlock::errc::server);
  EXPECT_NO_THROW(dlock::detail::throw_if_error(RedisValue{RedisValue::Type::integer, 1, {}, {}}, "h:1", "test"));
}

TEST(RedisScripts, FenceCounterIsKeptAFewLockTtlsWithAFloor) {
  using dlock::detail::fence_pttl;
  EXPECT_EQ(fence_pttl(10s, 10s), 30s);         // 3 x ttl
  EXPECT_EQ(fence_pttl(100ms, 10s), 10s);       // the floor (RedisOptions::fence_ttl)
  EXPECT_EQ(fence_pttl(1h, 7 * 24h), 7 * 24h);  // a larger floor wins
  // "Forever" saturates at 100 years instead of overflowing (the script adds it to the clock in ms as a double).
  const std::chrono::milliseconds most = std::chrono::hours(24 * 365 * 100);
  EXPECT_EQ(fence_pttl(std::chrono::milliseconds::max(), 10s), most);
  EXPECT_EQ(fence_pttl(most / 3 + 1ms, 10s), most);
  EXPECT_EQ(fence_pttl(10s, std::chrono::milliseconds::max()), most);
  EXPECT_LT(static_cast<double>(most.count()) + 2e12, 9007199254740992.0);  // + the clock in ms < 2^53
}

TEST(RedisScripts, TheCounterHelpersArePartOfEveryScriptThatWritesACounter) {
  using namespace dlock::detail;
  for (std::string_view script : {redis_acquire_script, redis_fence_raise_script}) {
    EXPECT_EQ(script.substr(0, std::string_view(lua_counter_helpers).size()), lua_counter_helpers);
    // The acquire keeps the counter it drew; the raise keeps it through raise_counter().
    EXPECT_TRUE(script.find("keep_counter(KEYS[") != std::string_view::npos ||
                script.find("raise_counter(KEYS[") != std::string_view::npos);
    EXPECT_EQ(script.back(), '\n');
    EXPECT_EQ(script.find('\0'), std::string_view::npos);
  }
}

TEST(RedisReplies, ReleaseReplyTellsARefusedPublishApart) {
  using dlock::detail::parse_release_reply;
  using dlock::detail::RedisValue;
  using Type = RedisValue::Type;
  const auto integer = [](long long v) { return RedisValue{Type::integer, v, {}, {}}; };
  EXPECT_TRUE(parse_release_reply(integer(1), "h:1", "k").released);
  EXPECT_TRUE(parse_release_reply(integer(1), "h:1", "k").publish_error.empty());
  EXPECT_FALSE(parse_release_reply(integer(0), "h:1", "k").released);
  const RedisValue refused{Type::array, 0, {}, {integer(1), RedisValue{Type::string, 0, "ERR no channel", {}}}};
  const auto r = parse_release_reply(refused, "h:1", "k");
  EXPECT_TRUE(r.released);
  EXPECT_EQ(r.publish_error, "ERR no channel");
  EXPECT_THROW((void)parse_release_reply(integer(2), "h:1", "k"), dlock::ServerError);
  EXPECT_THROW((void)parse_release_reply(RedisValue{Type::array, 0, {}, {integer(0), integer(0)}}, "h:1", "k"),
               dlock::ServerError);
  EXPECT_THROW((void)parse_release_reply(RedisValue{Type::error, 0, "NOPERM no", {}}, "h:1", "k"), dlock::ServerError);
}

TEST(RedisReplies, PublishRefusalsKeepTheLastAndNameTheEndpoint) {
  dlock::detail::ServerFacts facts;
  EXPECT_EQ(facts.publish_refusal(), "");
  testing::internal::CaptureStderr();
  facts.note_publish_refusal("h:1", "p{a}:released", "ERR first");
  facts.note_publish_refusal("h:1", "p{b}:released", "ERR second");
  const std::string logged = testing::internal::GetCapturedStderr();
  EXPECT_NE(logged.find("ERR first"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("ERR second"), std::string::npos) << "logged more than once: " << logged;
  EXPECT_NE(facts.publish_refusal().find("h:1"), std::string::npos);
  EXPECT_NE(facts.publish_refusal().find("ERR second"), std::string::npos);
}

// One mechanism for every once-per-server warning (detail/warn_once.hpp):
// each kind is written once, its latest message kept, kinds independent.
TEST(RedisReplies, OnceWarningsWriteEachKindOnceAndKeepTheLatest) {
  dlock::detail::OnceWarnings w;
  testing::internal::CaptureStderr();
  w.warn("eviction", "policy allkeys-lru");
  w.warn("eviction", "policy volatile-lru");
  w.warn("publish", "PUBLISH refused");
  const std::string logged = testing::internal::GetCapturedStderr();
  EXPECT_EQ(logged, "dlock: warning: policy allkeys-lru\ndlock: warning: PUBLISH refused\n");
  EXPECT_EQ(w.latest("eviction"), "policy volatile-lru");
  EXPECT_EQ(w.latest("config"), "");
  EXPECT_EQ(w.all(), (std::vector<std::string>{"policy volatile-lru", "PUBLISH refused"}));
}

TEST(RedisErrors, AuthRefusalsAreDescribedWithoutTheServersText) {
  using dlock::detail::redis_proto::describe_auth_refusal;
  const std::string pw = "Zx7Qp2Lk9Wm4";
  for (const std::string& reply :
       {"ERR unknown command 'AUTH', with args beginning with: 'app' '" + pw + "' ",
        "ERR unknown command 'AUTH', with args beginning with: '" + pw.substr(0, 6) + "' ",
        "WRONGPASS invalid username-password pair or user is disabled. (" + pw + ")",
        "ERR wrong number of arguments for 'auth' command " + pw, "-PROXY refused " + pw, pw + " garbage",
        "NOPERM " + pw, "ERR AUTH <password> called without any password configured for the default user. " + pw}) {
    const std::string d = describe_auth_refusal(reply);
    EXPECT_EQ(d.find(pw.substr(0, 4)), std::string::npos) << d;
    EXPECT_EQ(d.find(pw.substr(4, 4)), std::string::npos) << d;
    EXPECT_EQ(d.find(pw.substr(8, 4)), std::string::npos) << d;
  }
  EXPECT_NE(
      describe_auth_refusal("ERR unknown command 'AUTH', with args beginning with: 'x'").find("does not know AUTH"),
      std::string::npos);
  EXPECT_EQ(describe_auth_refusal("WRONGPASS invalid username-password pair").rfind("WRONGPASS: ", 0), 0u);
  EXPECT_EQ(describe_auth_refusal("ERR something new").rfind("ERR: ", 0), 0u);
  EXPECT_EQ(describe_auth_refusal("x y").rfind("error: ", 0), 0u);
}

TEST(RedisErrors, EvictionPolicyVerdicts) {
  using dlock::detail::judge_eviction_policy;
  using dlock::detail::RedisValue;
  using Kind = dlock::detail::EvictionVerdict::Kind;
  const auto policy = [](std::string p) {
    return RedisValue{RedisValue::Type::array,
                      0,
                      {},
                      {RedisValue{RedisValue::Type::string, 0, "maxmemory-policy", {}},
                       RedisValue{RedisValue::Type::string, 0, std::move(p), {}}}};
  };
  EXPECT_EQ(judge_eviction_policy(policy("noeviction"), "h:1").kind, Kind::safe);
  for (const char* p : {"volatile-lru", "allkeys-lru", "volatile-lfu", "allkeys-lfu", "volatile-random",
                        "allkeys-random", "volatile-ttl"}) {
    const auto v = judge_eviction_policy(policy(p), "h:1");
    EXPECT_EQ(v.kind, Kind::evicts) << p;
    EXPECT_NE(v.message.find(std::string("maxmemory-policy ") + p), std::string::npos) << v.message;
    EXPECT_NE(v.message.find("h:1"), std::string::npos) << v.message;
    EXPECT_NE(v.message.find("EvictionCheck::warn"), std::string::npos) << v.message;
  }
  const auto refused = judge_eviction_policy(
      RedisValue{RedisValue::Type::error, 0, "NOPERM no permissions to run 'config|get'", {}}, "h:1");
  EXPECT_EQ(refused.kind, Kind::unknown);
  EXPECT_NE(refused.message.find("NOPERM"), std::string::npos) << refused.message;
  EXPECT_EQ(judge_eviction_policy(RedisValue{RedisValue::Type::array, 0, {}, {}}, "h:1").kind, Kind::unknown);
  EXPECT_THROW(
      (void)judge_eviction_policy(RedisValue{RedisValue::Type::error, 0, "NOAUTH Authentication required.", {}}, "h:1"),
      dlock::ServerError);
}

TEST(RedisErrors, RunIdFromInfo) {
  EXPECT_EQ(dlock::detail::parse_run_id("# Server\r\nredis_version:7.0.15\r\nrun_id:ed43909e49b9\r\ntcp_port:1\r\n"),
            "ed43909e49b9");
  EXPECT_EQ(dlock::detail::parse_run_id("run_id:abc"), "abc");
  EXPECT_EQ(dlock::detail::parse_run_id("# Server\r\nredis_version:7.0.15\r\n"), "");
  EXPECT_EQ(dlock::detail::parse_run_id("xrun_id:abc\r\n"), "");
}

TEST(Sha1, KnownVectors) {
  using dlock::detail::sha1_hex;
  EXPECT_EQ(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  EXPECT_EQ(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
  EXPECT_EQ(sha1_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  EXPECT_EQ(sha1_hex(std::string(1000000, 'a')), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
  // Around the padding boundaries (one or two final blocks).
  EXPECT_EQ(sha1_hex(std::string(63, 'x')), "0ddc4e0cccd9a12850deb5abb0853a4425559fec");
  EXPECT_EQ(sha1_hex(std::string(65, 'x')), "78c741ddc482e4cdf8c474a0876347a0905b6233");
  EXPECT_EQ(sha1_hex(std::string(119, 'x')), "4300320394f7ee239bcdce7d3b8bcee173a0cd5c");
  EXPECT_EQ(sha1_hex(std::string(120, 'x')), "ceb2821639c4b6dcb10bce0e522ca2e608ce056d");
  EXPECT_EQ(sha1_hex(std::string(128, 'x')), "150fa3fbdc899bd0b8f95a9fb6027f564d953762");
  EXPECT_EQ(sha1_hex(std::string(55, 'a')), "c1c8bbdc22796e28c0e15163d20899b65621d65a");
  EXPECT_EQ(sha1_hex(std::string(56, 'a')), "c2db330f6083854c99d4b5bfb6e8f29f201be699");
  EXPECT_EQ(sha1_hex(std::string(64, 'a')), "0098ba824b5c16427bd7a1122a5a442a25ec644d");
}

// A port that nothing listens on: bound, then closed.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(RedisBackendNoServer, DoesNotConnectUntilUsedAndNamesTheEndpoint) {
  const int port = closed_port();
  dlock::RedisBackend redis(RedisOptions{.port = port, .password = "hunter2", .connect_timeout = 500ms});
  EXPECT_EQ(redis.kind(), "redis");
  EXPECT_EQ(redis.endpoint(), "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(redis.node().open_connections(), 0u);
  const auto owner = dlock::OwnerId::generate();
  try {
    (void)redis.try_acquire({"x", owner, 1000ms, std::chrono::steady_clock::now()});
    FAIL() << "expected ConnectionError";
  } catch (const dlock::ConnectionError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(redis.endpoint()), std::string::npos) << msg;
    EXPECT_NE(msg.find("redis-server is running"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("hunter2"), std::string::npos) << msg;
    EXPECT_EQ(e.code(), dlock::errc::connection);
  }
  EXPECT_EQ(redis.node().open_connections(), 0u);
}

}  // namespace
