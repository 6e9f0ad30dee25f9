// dlockctl with Redis URIs whose passwords hold URI delimiters ('/', '?',
// '#', '@', ':') unencoded, or that are malformed around them: no message on
// stdout or stderr shows the password or any 4-character piece of it, from
// --redis or DLOCK_REDIS, for redis and redlock commands. No server: every
// URI either fails to parse or points at a closed loopback port.
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"

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

std::string leaked_part(const std::string& text, const std::string& secret, std::size_t n = 4) {
  for (std::size_t len = secret.size(); len >= n && len > 0; --len)
    for (std::size_t i = 0; i + len <= secret.size(); ++i)
      if (text.find(secret.substr(i, len)) != std::string::npos) return secret.substr(i, len);
  return {};
}

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
        EXPECT_EQ(leaked_part(flag.err + flag.out, pw), "") << uri << " -> " << flag.err;
        std::vector<std::string> without(args.begin(), args.end() - (args[1] == "inspect" ? 3 : 2));
        if (args[1] == "inspect") without.push_back("x");
        const Result env = run(without, {{"DLOCK_REDIS", uri}});
        EXPECT_NE(env.rc, 0) << uri;
        EXPECT_EQ(leaked_part(env.err + env.out, pw), "") << uri << " (DLOCK_REDIS) -> " << env.err;
      }
    }
  }
  EXPECT_GT(runs, 250u);
}

}  // namespace
