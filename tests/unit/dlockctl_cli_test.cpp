// dlockctl's dispatcher and settings, in-process and without servers: usage
// errors exit 2, help never shows secrets, settings precedence, masking, and
// no message shows any piece of a password from a hostile Redis URI.
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "leak_check.hpp"

namespace {

struct Result {
  int rc;
  std::string out, err;
};

Result run(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  std::ostringstream out, err;
  auto getenv = [env = std::move(env)](const char* n) -> const char* {
    const auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  const int rc = dlockctl::run(args, out, err, getenv, false);
  return {rc, out.str(), err.str()};
}

TEST(DlockctlCli, HelpAndUsage) {
  auto r = run({"--help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("deadlocks"), std::string::npos);
  EXPECT_EQ(run({}).rc, 2);
  EXPECT_EQ(run({"frobnicate"}).rc, 2);
  EXPECT_EQ(run({"redis"}).rc, 2);
  EXPECT_EQ(run({"redis", "--help"}).rc, 0);
  EXPECT_EQ(run({"redis", "frobnicate"}).rc, 2);
  for (const auto& c : dlockctl::commands()) {
    std::vector<std::string> words(c.path.begin(), c.path.end());
    words.push_back("--help");
    r = run(words);
    EXPECT_EQ(r.rc, 0) << words[0];
    EXPECT_NE(r.out.find("usage: dlockctl"), std::string::npos);
  }
  r = run({"redis", "inspect"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("missing operand"), std::string::npos);
  EXPECT_EQ(run({"redis", "inspect", "a", "b"}).rc, 2);
  EXPECT_EQ(run({"redis", "list", "--port", "0"}).rc, 2);
  EXPECT_EQ(run({"redis", "list", "--timeout", "soon"}).rc, 2);
  EXPECT_EQ(run({"redis", "release", "x", "--yes"}).rc, 2);  // no --force
  EXPECT_EQ(run({"redlock", "list"}).rc, 2);                 // no --nodes
  EXPECT_EQ(run({"redlock", "release", "x", "--nodes", "a:1"}).rc, 2);
  EXPECT_EQ(run({"redlock", "release", "x", "--nodes", "a:1", "--owner", "o", "--force"}).rc, 2);
  EXPECT_EQ(run({"redlock", "list", "--nodes", "nohost"}).rc, 2);
  EXPECT_EQ(run({"pg", "release", "--force", "--yes"}).rc, 2);  // neither NAME nor --key
  EXPECT_EQ(run({"pg", "release", "--force", "x", "--key", "1", "--yes"}).rc, 2);
  EXPECT_EQ(run({"watch", "mysql"}).rc, 2);
  EXPECT_EQ(run({"redis", "list", "--redis", "rediss://:6379"}).rc, 2);      // no host
  EXPECT_EQ(run({"redis", "list", "--tls-cert", "/tmp/client.pem"}).rc, 2);  // mutual TLS needs --tls-key too
  EXPECT_EQ(run({"redlock", "list", "--nodes", "a:1,b:2,c:3", "--tls-key", "/tmp/client.key"}).rc, 2);
}

TEST(DlockctlCli, PgKeyNeedsNoServer) {
  auto r = run({"pg", "key", "orders:42"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_EQ(r.out, "397916365248039175\n");  // docs/postgres-lock-ids.md golden vector
  r = run({"pg", "key", "--namespace", "billing", "orders:42"});
  EXPECT_EQ(r.out, "6356323626887764178\n");
  r = run({"pg", "key", "pg_advisory:-42"});
  EXPECT_EQ(r.out, "-42\n");
  r = run({"pg", "key", "pg_advisory:042"});
  EXPECT_EQ(r.rc, 2);  // malformed explicit key
}

TEST(DlockctlCli, PgUriWithAnUnencodedAtIsRefusedWithoutQuotingThePassword) {
  // libpq would take "xK7wLm@127.0.0.1" for the host: a DNS look-up and messages naming it.
  const std::string uri = "postgresql://u:Zq9@xK7wLm@127.0.0.1:1/db";
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"pg", "list", "--pg", uri, "--timeout", "0.5"},
           {"pg", "release", "--force", "--yes", "--key", "1", "--pg", uri, "--timeout", "0.5"}}) {
    const auto r = run(args);
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_NE(r.err.find("percent-encode"), std::string::npos) << r.err;
    for (const char* part : {"Zq9@", "xK7w", "K7wLm"}) {
      EXPECT_EQ(r.err.find(part), std::string::npos) << r.err;
      EXPECT_EQ(r.out.find(part), std::string::npos) << r.out;
    }
  }
}

TEST(DlockctlCli, HelpNeverShowsTheEnvironmentsSecrets) {
  const std::map<std::string, std::string> env{{"DLOCK_REDIS", "redis://u:hunter2-secret@127.0.0.1:1/0"},
                                               {"DLOCK_PG", "host=127.0.0.1 password=pg-secret-77"}};
  for (const auto& c : dlockctl::commands()) {
    std::vector<std::string> words(c.path.begin(), c.path.end());
    words.push_back("--help");
    const auto r = run(words, env);
    EXPECT_EQ(r.out.find("hunter2"), std::string::npos);
    EXPECT_EQ(r.out.find("pg-secret"), std::string::npos);
  }
}

TEST(DlockctlCli, RedisSettingsPrecedence) {
  std::ostringstream out, err;
  std::map<std::string, std::string> env{{"DLOCK_REDIS", "redis://:envpw@envhost:7000/3"}};
  dlockctl::Context ctx{{}, out, err, [&](const char* n) -> const char* {
                          const auto it = env.find(n);
                          return it == env.end() ? nullptr : it->second.c_str();
                        }};
  const std::vector<dlockctl::OptionSpec> specs{{"redis", "U", ""},    {"host", "H", ""},   {"port", "P", ""},
                                                {"password", "W", ""}, {"prefix", "X", ""}, {"timeout", "T", ""}};
  const std::vector<std::string> none;
  ctx.args = dlockctl::parse_args(none, specs);
  auto o = dlockctl::redis_options(ctx);
  EXPECT_EQ(o.host, "envhost");
  EXPECT_EQ(o.port, 7000);
  EXPECT_EQ(o.database, 3);
  EXPECT_EQ(o.password, "envpw");
  EXPECT_EQ(o.key_prefix, "dlock:");
  EXPECT_EQ(o.connect_timeout, std::chrono::milliseconds(2000));
  const std::vector<std::string> flags{"--redis", "flaghost:7001", "--port", "7002", "--prefix",
                                       "p:",      "--timeout",     "0.3"};
  ctx.args = dlockctl::parse_args(flags, specs);
  o = dlockctl::redis_options(ctx);
  EXPECT_EQ(o.host, "flaghost");
  EXPECT_EQ(o.port, 7002);
  EXPECT_EQ(o.password, "");  // --redis replaces DLOCK_REDIS entirely
  EXPECT_EQ(o.key_prefix, "p:");
  EXPECT_EQ(o.command_timeout, std::chrono::milliseconds(300));
  EXPECT_EQ(dlockctl::secrets_of(ctx), std::vector<std::string>{});
}

TEST(DlockctlCli, SanitizeMasksSecretsAndKeepsOneLine) {
  EXPECT_EQ(dlockctl::sanitize("auth pw1 failed\nfor pw1", {"pw1"}), "auth *** failed for ***");
  EXPECT_EQ(dlockctl::sanitize("nothing\n", {""}), "nothing");
  // A line break inside a secret with a space there: joining the lines re-forms it (dlockctl_args_fuzz).
  EXPECT_EQ(dlockctl::sanitize("auth Zq9\nxK7w failed", {"Zq9 xK7w"}), "auth *** failed");
  EXPECT_EQ(dlockctl::sanitize("auth Zq9\nxK7w failed", {"Zq9\nxK7w"}), "auth *** failed");
}

// Redis URIs whose passwords hold URI delimiters ('/', '?', '#', '@', ':')
// unencoded, or that are malformed around them: no message on stdout or
// stderr shows the password or any 4-character piece of it, from --redis or
// DLOCK_REDIS, for redis and redlock commands. No server: every URI either
// fails to parse or points at a closed loopback port.
const std::vector<std::string> passwords{"s3cr3t/Qx7v", "Jv9?Wk2pLm", "Zq8@Yb#Tn:Rr", "/Mz8Lq4",
                                         "Nh3@Gp6/Cx?", "Fq!w%zzK9",  "Ux:9/?@#Pw",   "Hk2 Lm5/Dd"};

std::vector<std::string> uris(const std::string& pw) {
  return {"redis://app:" + pw + "@127.0.0.1:1/0",  // parses: connection refused
          "redis://:" + pw + "@127.0.0.1:1",
          "app:" + pw + "@127.0.0.1:1",  // dlockctl adds redis://
          "redis://app:" + pw + "@127.0.0.1:0",
          "redis://app:" + pw + "@127.0.0.1:x/0",
          "redis://app:" + pw + "@127.0.0.1:1/db",
          "redis://app:" + pw + "@127.0.0.1:1?timeout=1",
          "redis://app:" + pw,  // "@host" forgotten
          "unix://app:" + pw + "@rel.sock",
          "rediss://app:" + pw + "@127.0.0.1:1",
          "http://app:" + pw + "@127.0.0.1:1"};
}

TEST(DlockctlRedisUri, NoMessageShowsAnyPartOfThePassword) {
  std::size_t runs = 0;
  for (const auto& pw : passwords) {
    for (const auto& uri : uris(pw)) {
      const std::vector<std::vector<std::string>> commands{
          {"redis", "list", "--timeout", "0.2", "--redis", uri},
          {"redis", "inspect", "--timeout", "0.2", "--redis", uri, "x"},
          {"redlock", "list", "--timeout", "0.2", "--nodes", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--redis", uri}};
      for (const auto& args : commands) {
        const Result flag = run(args);
        ++runs;
        EXPECT_NE(flag.rc, 0) << uri;
        EXPECT_FALSE(flag.err.empty()) << uri;
        EXPECT_EQ(dlock::test::leaked_part(flag.err + flag.out, pw), "") << uri << " -> " << flag.err;
        std::vector<std::string> without(args.begin(), args.end() - (args[1] == "inspect" ? 3 : 2));
        if (args[1] == "inspect") without.push_back("x");
        const Result env = run(without, {{"DLOCK_REDIS", uri}});
        EXPECT_NE(env.rc, 0) << uri;
        EXPECT_EQ(dlock::test::leaked_part(env.err + env.out, pw), "") << uri << " (DLOCK_REDIS) -> " << env.err;
      }
    }
  }
  EXPECT_GT(runs, 250u);
}

}  // namespace
