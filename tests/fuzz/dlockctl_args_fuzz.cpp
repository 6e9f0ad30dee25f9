// libFuzzer target for dlockctl's command line (issue 15 item 5): the words
// are NUL-separated fields, DLOCK_REDIS and DLOCK_PG may be set from fields,
// and a marker password (in --password, a Redis URI or a conninfo) may be
// put right after the command path. No other word contains the marker.
//  - Command lines that stop before any server is needed (no command, help,
//    a usage error, `pg key`) go through run(): exit 0, 1 or 2, and the
//    marker in nothing printed.
//  - Others: the connection settings are computed as the commands do
//    (redis_options, redlock_node_options, pg_options, timeout_of, the
//    PostgresBackend constructor, which does not connect): each succeeds or
//    throws UsageError / InvalidArgument, and the message, masked as
//    guarded() masks it, holds neither the marker nor any secret.
// Every word also goes through the value parsers, whose results are checked
// against their contracts, and through sanitize() with every other word as
// the secret.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <dlock/error.hpp>
#include <dlock/postgres.hpp>

#include "args.hpp"
#include "cli.hpp"
#include "fuzz_input.hpp"

namespace {

using dlock_fuzz::require;

using dlock_fuzz::contains;
using dlock_fuzz::marker;

void check_value_parsers(const std::string& w) {
  for (const bool zero : {false, true}) {
    try {
      const auto d = dlockctl::parse_duration(w, "t", zero);
      require(d.count() >= (zero ? 0 : 1) && d.count() <= 1'000'000'000'000, "parse_duration out of range", w);
    } catch (const dlockctl::UsageError&) {
    }
  }
  try {
    const long long v = dlockctl::parse_integer(w, "n", -5, 1000);
    require(v >= -5 && v <= 1000, "parse_integer out of range", w);
  } catch (const dlockctl::UsageError&) {
  }
  try {
    (void)dlockctl::parse_int64(w, "k");
    require(!w.empty() && w.find_first_not_of("-0123456789") == std::string::npos, "parse_int64 took a non-number", w);
  } catch (const dlockctl::UsageError&) {
  }
  for (const auto& item : dlockctl::split_list(w))
    require(!item.empty() && !contains(item, ",") && item.front() != ' ' && item.back() != ' ', "split_list item",
            item);
}

void check_sanitize(const std::string& message, const std::string& secret) {
  const std::string s = dlockctl::sanitize(message, {secret});
  require(!contains(s, "\n"), "sanitize left a line break", s);
  // A secret with a '*' may be re-formed by the "***" that masks it.
  if (!secret.empty() && !contains(secret, "*")) require(!contains(s, secret), "sanitize left the secret", s);
}

const dlockctl::Command* find_command(const std::vector<std::string>& argv) {
  const dlockctl::Command* cmd = nullptr;
  for (const auto& c : dlockctl::commands()) {
    if (c.path.size() > argv.size() || !std::equal(c.path.begin(), c.path.end(), argv.begin())) continue;
    if (!cmd || c.path.size() > cmd->path.size()) cmd = &c;
  }
  return cmd;
}

// The settings the commands compute, each as guarded() reports its errors.
void check_settings(dlockctl::Context& ctx) {
  const std::vector<std::string> secrets = dlockctl::secrets_of(ctx);
  const auto check_message = [&](const char* what) {
    const std::string m = dlockctl::sanitize(what, secrets);
    require(!contains(m, marker), "the password in a message", m);
    for (const auto& s : secrets)
      if (!s.empty() && !contains(s, "*")) require(!contains(m, s), "a secret in a message", m);
  };
  const auto attempt = [&](auto&& body) {
    try {
      body();
    } catch (const dlockctl::UsageError& e) {
      check_message(e.what());
    } catch (const dlock::InvalidArgument& e) {
      check_message(e.what());
    }
  };
  attempt([&] { (void)dlockctl::timeout_of(ctx); });
  attempt([&] {
    const auto o = dlockctl::redis_options(ctx);
    require(!contains(dlock::detail::redis_endpoint(o), marker), "the password in a Redis endpoint");
  });
  if (ctx.args.has("nodes")) attempt([&] { (void)dlockctl::redlock_node_options(ctx); });
  attempt([&] {
    const dlock::PostgresBackend pg(dlockctl::pg_options(ctx));
    require(!contains(pg.endpoint(), marker), "the password in a PostgreSQL endpoint", pg.endpoint());
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dlock_fuzz::FuzzInput in(data, size);
  const std::uint8_t shape = in.byte();
  const std::string password = dlock_fuzz::marked(in);
  std::optional<std::string> env_redis, env_pg;
  if (shape & 0x10) env_redis = dlock_fuzz::without(in.field(), "\x7f");
  if (shape & 0x20) env_pg = dlock_fuzz::without(in.field(), "\x7f");
  std::vector<std::string> argv;
  while (!in.rest().empty()) argv.push_back(dlock_fuzz::without(in.field(), "\x7f"));

  for (const auto& w : argv) check_value_parsers(w);
  for (std::size_t i = 0; i + 1 < argv.size() && i < 4; ++i) check_sanitize(argv[i], argv[i + 1]);

  // Where the password goes, right after the command path (so it is read as an option).
  const dlockctl::Command* cmd = find_command(argv);
  const auto at = argv.begin() + static_cast<std::ptrdiff_t>(cmd ? cmd->path.size() : 0);
  const std::string redis_uri = "redis://:" + dlock_fuzz::percent_encode(password, ":@/?#%[]") + "@127.0.0.1";
  switch (shape % 5) {
    case 1:
      argv.insert(at, {"--password", password});
      break;
    case 2:
      argv.insert(at, {"--redis", redis_uri});
      break;
    case 3:
      env_redis = redis_uri;
      break;
    case 4:
      argv.insert(at, {"--pg", "host=127.0.0.1 password=" + dlock_fuzz::pg_quoted(password)});
      break;
    default:
      break;
  }
  const dlockctl::Getenv getenv = [&](const char* name) -> const char* {
    const std::string_view n = name;
    if (n == "DLOCK_REDIS" && env_redis) return env_redis->c_str();
    if (n == "DLOCK_PG" && env_pg) return env_pg->c_str();
    return nullptr;
  };

  // Does the command line stop before a server is needed?
  std::optional<dlockctl::Args> args;
  if (cmd) {
    try {
      args = dlockctl::parse_args(std::span<const std::string>(argv).subspan(cmd->path.size()), cmd->options);
      const auto n = args->positionals().size();
      if (args->help() || n < cmd->min_operands || n > cmd->max_operands) args.reset();
    } catch (const dlockctl::UsageError&) {
    }
  }
  const bool offline = !args || (cmd->path.size() == 2 && cmd->path[0] == "pg" && cmd->path[1] == "key");
  if (offline) {
    std::ostringstream out, err;
    const int code = dlockctl::run(argv, out, err, getenv, false);
    require(code >= 0 && code <= 2, "run() exit code", err.str());
    require(!contains(out.str(), marker) && !contains(err.str(), marker), "the password printed", err.str());
    return 0;
  }
  std::ostringstream out, err;
  dlockctl::Context ctx{*args, out, err, getenv};
  check_settings(ctx);
  return 0;
}
