// dlockctl: commands, their context and the connection settings shared by
// them. run() is the whole program minus the process: testable in-process.
#pragma once

#include <chrono>
#include <functional>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <dlock/redis_options.hpp>
#include <dlock/postgres.hpp>
#ifdef DLOCKCTL_WITH_ETCD
#include <dlock/etcd.hpp>
#endif

#include "args.hpp"

namespace dlockctl {

/// Reads an environment variable (nullptr when unset); injectable for tests.
using Getenv = std::function<const char*(const char*)>;

struct Context {
  Args args;
  std::ostream& out;
  std::ostream& err;
  Getenv getenv;
  bool json = false;
  bool tty = false;  ///< stdout is a terminal
};

struct Command {
  std::vector<std::string_view> path;  ///< {"redis", "list"}
  std::string_view operands;           ///< usage of the positionals ("NAME"), may be empty
  std::size_t min_operands = 0;
  std::size_t max_operands = 0;
  std::string_view summary;  ///< one line for the command list
  std::string_view details;  ///< more text for --help (may be empty)
  std::vector<OptionSpec> options;
  int (*run)(Context&) = nullptr;
};

/// Every command, in the order of `dlockctl --help`.
[[nodiscard]] const std::vector<Command>& commands();

/// The program: dispatches argv (without argv[0]) and returns the exit code.
int run(std::span<const std::string> argv, std::ostream& out, std::ostream& err, Getenv getenv, bool stdout_tty);

// ---- connection settings ----

/// Redis options from DLOCK_REDIS, then --redis, then --host/--port/--user/
/// --password/--db/--prefix; both timeouts from --timeout (default 2 s).
[[nodiscard]] dlock::RedisOptions redis_options(const Context& ctx);
/// Options for each node of --nodes (host:port,...), with the auth, db,
/// prefix and timeouts of redis_options().
[[nodiscard]] std::vector<dlock::RedisOptions> redlock_node_options(const Context& ctx);
/// PostgreSQL options from DLOCK_PG, then --pg; --namespace; --timeout.
[[nodiscard]] dlock::PostgresOptions pg_options(const Context& ctx);
[[nodiscard]] std::chrono::milliseconds timeout_of(const Context& ctx);
#ifdef DLOCKCTL_WITH_ETCD
/// etcd options from DLOCK_ETCD, then --etcd; --user, --password (or
/// DLOCK_ETCD_PASSWORD), --prefix, --cacert/--cert/--key; --timeout.
[[nodiscard]] dlock::EtcdOptions etcd_options(const Context& ctx);
#endif

/// Runs `body`, mapping exceptions to a one-line message on ctx.err and an
/// exit code (ConnectionError/TimeoutError/auth: 3, other server errors: 4,
/// InvalidArgument/UsageError: 2). `secrets` are masked in every message.
int guarded(Context& ctx, const std::vector<std::string>& secrets, const std::function<int()>& body);

/// The passwords of the current settings (to mask them in messages).
[[nodiscard]] std::vector<std::string> secrets_of(const Context& ctx);

/// Replaces every occurrence of each secret by "***" and newlines by spaces.
[[nodiscard]] std::string sanitize(std::string message, const std::vector<std::string>& secrets);

// ---- commands (cmd_*.cpp) ----
int cmd_redis_list(Context&);
int cmd_redis_inspect(Context&);
int cmd_redis_release(Context&);
int cmd_redis_permits(Context&);
int cmd_redlock_list(Context&);
int cmd_redlock_inspect(Context&);
int cmd_redlock_release(Context&);
int cmd_pg_list(Context&);
int cmd_pg_inspect(Context&);
int cmd_pg_key(Context&);
int cmd_pg_release(Context&);
#ifdef DLOCKCTL_WITH_ETCD
int cmd_etcd_list(Context&);
int cmd_etcd_inspect(Context&);
int cmd_etcd_release(Context&);
#endif
int cmd_deadlocks(Context&);
int cmd_watch(Context&);

}  // namespace dlockctl
