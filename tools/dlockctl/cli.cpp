#include "cli.hpp"

#include <algorithm>
#include <ostream>

#include <fmt/format.h>
#include <libpq-fe.h>

#include <dlock/error.hpp>
#include <dlock/version.hpp>

namespace dlockctl {

namespace {

const OptionSpec opt_json{"json", "", "print one JSON document instead of text"};
const OptionSpec opt_timeout{"timeout", "SECONDS", "connect and command timeout per server (default 2)"};
const OptionSpec opt_redis{"redis", "URI",
                           "redis[s]://[[user]:password@]host[:port][/db] or unix://... (env DLOCK_REDIS)"};
const OptionSpec opt_tls_ca{"tls-ca", "FILE", "TLS: trusted CA certificates (PEM); turns TLS on"};
const OptionSpec opt_tls_cert{"tls-cert", "FILE", "TLS: client certificate for mutual TLS (with --tls-key)"};
const OptionSpec opt_tls_key{"tls-key", "FILE", "TLS: the client certificate's private key"};
const OptionSpec opt_host{"host", "HOST", "Redis host (default 127.0.0.1)"};
const OptionSpec opt_port{"port", "PORT", "Redis port (default 6379)"};
const OptionSpec opt_user{"user", "USER", "Redis ACL user"};
const OptionSpec opt_password{"password", "PASSWORD",
                              "Redis password (prefer DLOCK_REDIS: command lines are visible to other users)"};
const OptionSpec opt_db{"db", "N", "Redis database index"};
const OptionSpec opt_prefix{"prefix", "PREFIX", "key prefix of the locks (default dlock:)"};
const OptionSpec opt_nodes{"nodes", "HOST:PORT,...", "the Redlock nodes (all of them: the quorum is N/2+1)"};
const OptionSpec opt_pg{"pg", "CONNINFO", "libpq connection string or URI (env DLOCK_PG)"};
const OptionSpec opt_namespace{"namespace", "NS", "lock_namespace the application uses (default empty)"};
const OptionSpec opt_yes{"yes", "", "really do it (without it: say what would be done, exit 2)"};
const OptionSpec opt_force{"force", "", "required: break a lock someone else holds"};

#ifdef DLOCKCTL_WITH_ETCD
std::vector<OptionSpec> etcd_conn() {
  return {{"etcd", "URLS", "client URLs, comma-separated: http[s]://host:port,... (env DLOCK_ETCD)"},
          {"user", "USER", "etcd user (auth enabled)"},
          {"password", "PASSWORD", "etcd password (prefer DLOCK_ETCD_PASSWORD: command lines are visible)"},
          {"prefix", "PREFIX", "key prefix of the locks (default dlock/)"},
          {"cacert", "FILE", "CA certificates (PEM) for https:// endpoints"},
          {"cert", "FILE", "client certificate (PEM) for --client-cert-auth"},
          {"key", "FILE", "private key (PEM) of --cert"},
          opt_timeout,
          opt_json};
}
#endif

std::vector<OptionSpec> redis_conn() {
  return {opt_redis,  opt_host,   opt_port,     opt_user,    opt_password, opt_db,
          opt_prefix, opt_tls_ca, opt_tls_cert, opt_tls_key, opt_timeout,  opt_json};
}
std::vector<OptionSpec> redlock_conn() {
  return {opt_nodes,  opt_redis,    opt_user,    opt_password, opt_db,  opt_prefix,
          opt_tls_ca, opt_tls_cert, opt_tls_key, opt_timeout,  opt_json};
}
std::vector<OptionSpec> pg_conn() { return {opt_pg, opt_namespace, opt_timeout, opt_json}; }
std::vector<OptionSpec> with(std::vector<OptionSpec> base, std::initializer_list<OptionSpec> more) {
  base.insert(base.begin(), more.begin(), more.end());
  return base;
}

std::string path_of(const Command& c) {
  std::string p;
  for (auto w : c.path) p += (p.empty() ? "" : " ") + std::string(w);
  return p;
}

std::string usage_line(const Command& c) {
  return fmt::format("usage: dlockctl {} [options]{}{}", path_of(c), c.operands.empty() ? "" : " ", c.operands);
}

void print_command_help(std::ostream& out, const Command& c) {
  out << usage_line(c) << "\n\n" << c.summary << "\n";
  if (!c.details.empty()) out << "\n" << c.details << "\n";
  std::vector<OptionSpec> all = c.options;
  all.push_back({"help", "", "this help (also -h)"});
  out << "\noptions:\n" << format_options(all);
}

void print_help(std::ostream& out, std::string_view group) {
  out << "usage: dlockctl COMMAND [options]    (dlockctl COMMAND --help for details)\n\n"
         "Inspect and manage dlock's distributed locks.\n\ncommands:\n";
  std::size_t width = 0;
  for (const auto& c : commands()) width = std::max(width, path_of(c).size() + 1 + c.operands.size());
  for (const auto& c : commands()) {
    if (!group.empty() && c.path.front() != group) continue;
    const std::string head = path_of(c) + (c.operands.empty() ? "" : " " + std::string(c.operands));
    out << fmt::format("  {:<{}}  {}\n", head, width, c.summary);
  }
  out << "\nexit codes: 0 ok (deadlocks: none found), 1 not held / no holder (deadlocks: cycle found),\n"
         "            2 usage or refused without --yes, 3 connection error, 4 server error\n"
         "environment: DLOCK_REDIS (Redis URI), DLOCK_PG (libpq conninfo)"
#ifdef DLOCKCTL_WITH_ETCD
         ", DLOCK_ETCD (etcd URLs), DLOCK_ETCD_PASSWORD"
#endif
         "\n";
}

}  // namespace

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {{"redis", "list"},
       "",
       0,
       0,
       "list the locks on a Redis server: name, kind, owner, remaining TTL, fencing token",
       "SCANs for keys <prefix>{name}... (never KEYS); counters (:fence) and wait records are not locks.\n"
       "KIND: mutex, fair-queue (a fair-mode mutex with queued waiters), rw, semaphore, election.",
       with(redis_conn(), {{"match", "GLOB", "only names matching GLOB (SCAN MATCH syntax; default *)"},
                           {"limit", "N", "read at most N locks (default 100000; 0: no limit)"}}),
       cmd_redis_list},
      {{"redis", "inspect"},
       "NAME",
       1,
       1,
       "one lock: owner, remaining TTL, fencing token and its recorded waiters",
       "Every primitive stored under NAME: the mutex, and the read-write lock's readers, the\n"
       "semaphore's permits, the fair queue and the election's leader. Exit 1 if nothing is held.",
       redis_conn(),
       cmd_redis_inspect},
      {{"redis", "release"},
       "--force NAME --yes",
       1,
       1,
       "break-glass: delete a lock whoever holds it, and wake its waiters",
       "Deletes <prefix>{NAME} atomically and publishes on its release channel, so blocked acquirers\n"
       "retry at once. The holder is NOT told: it keeps running its critical section until its\n"
       "next extend() fails. Use only when the holder is known to be gone or stuck.\n"
       "Without --yes: shows what would be deleted and exits 2. Exit 1 if the lock is not held.\n"
       "With --owner ID: only if ID holds it. Exit 1 too if it changed hands after it was read.\n"
       "--kind rw|semaphore: releases the read-write lock's writer and readers, or the semaphore's\n"
       "permits (with --owner ID: only ID's lease), each with the library's release script: its\n"
       "token's entry goes with it, and waiters wake.",
       with(redis_conn(), {{"owner", "ID", "release only if this owner id holds it"},
                           {"kind", "KIND", "mutex (default), rw or semaphore"},
                           opt_force,
                           opt_yes}),
       cmd_redis_release},
      {{"redis", "permits"},
       "NAME [--set N | --clear]",
       1,
       1,
       "a semaphore's permit count for every client, and the permits held",
       "--set N stores N in <prefix>{NAME}:sem:count: every client's Semaphore then allows N permits\n"
       "(holders keep theirs; a lower count holds new acquires back until enough are released).\n"
       "--clear removes it: each client's own count applies again. Without either: shows it.",
       with(redis_conn(), {{"set", "N", "set the permit count to N"}, {"clear", "", "remove the operator's count"}}),
       cmd_redis_permits},
      {{"redlock", "list"},
       "",
       0,
       0,
       "locks on every Redlock node, per node state, and whether a quorum holds them",
       "A lock is held when N/2+1 of the N nodes given hold it for the same owner.",
       redlock_conn(),
       cmd_redlock_list},
      {{"redlock", "inspect"},
       "NAME",
       1,
       1,
       "one lock on every Redlock node and its quorum state",
       "Exit 1 if no node holds it.",
       redlock_conn(),
       cmd_redlock_inspect},
      {{"redlock", "release"},
       "(--owner ID | --force --yes) NAME",
       1,
       1,
       "delete a lock on every reachable node: only for owner ID, or whoever holds it",
       "With --owner: deletes where ID holds it (the owner-checked release script).\n"
       "With --force --yes: deletes it on every node whoever holds it (break-glass).\n"
       "Exit 1 if no node held it; 3 if a node was unreachable (it may still hold it).",
       with(redlock_conn(), {{"owner", "ID", "release only where this owner id holds it"}, opt_force, opt_yes}),
       cmd_redlock_release},
      {{"pg", "list"},
       "",
       0,
       0,
       "PostgreSQL advisory locks held and awaited (pg_locks + pg_stat_activity)",
       "Keys are 64-bit hashes of the names: a name cannot be recovered from its key. Give the\n"
       "names you expect with --name to have them matched (or compute one with `dlockctl pg key`).",
       with(pg_conn(), {{"name", "NAME", "label the key of NAME (repeatable)"}}),
       cmd_pg_list},
      {{"pg", "inspect"},
       "NAME",
       1,
       1,
       "one name's advisory locks: its mutex, read-write lock, election and permit slots",
       "The sessions holding or awaiting each key of NAME (ROLE: mutex, rw, leader, permit N; the\n"
       "first 64 permit slots), from pg_locks + pg_stat_activity. Exit 1 if none is held or awaited.",
       pg_conn(),
       cmd_pg_inspect},
      {{"pg", "key"},
       "NAME",
       1,
       1,
       "the 64-bit advisory key of a lock name (no server needed)",
       "SipHash-2-4 of the namespace and the name (docs/postgres-lock-ids.md); for\n"
       "pg_advisory:<int64> names, the number itself.",
       {opt_namespace, opt_json},
       cmd_pg_key},
      {{"pg", "release"},
       "--force (NAME | --key K) --yes",
       0,
       1,
       "break-glass: terminate the session(s) holding an advisory lock",
       "pg_terminate_backend() of the holder's pid: its session ends, and with it every lock and\n"
       "transaction of that session. Without --yes: shows the holders and exits 2. Exit 1 if no holder.",
       with(pg_conn(), {{"key", "K", "the advisory key instead of a name"}, opt_force, opt_yes}),
       cmd_pg_release},
#ifdef DLOCKCTL_WITH_ETCD
      {{"etcd", "list"},
       "",
       0,
       0,
       "list the locks in an etcd cluster: name, owner, remaining lease TTL, token (create revision)",
       "One range read of the keys under <prefix>, then one lease time-to-live per lock.",
       etcd_conn(),
       cmd_etcd_list},
      {{"etcd", "inspect"},
       "NAME",
       1,
       1,
       "one lock: key, owner, lease and its remaining TTL, token",
       "Exit 1 if the lock is not held.",
       etcd_conn(),
       cmd_etcd_inspect},
      {{"etcd", "release"},
       "--force NAME --yes",
       1,
       1,
       "break-glass: delete a lock whoever holds it; waiters watching it wake up",
       "Deletes <prefix>NAME if it is still the incarnation shown (same owner and create revision).\n"
       "The holder is NOT told at once: it learns it at its next extension (the owner check fails).\n"
       "Its lease is left to expire. Without --yes: shows what would be deleted and exits 2.\n"
       "Exit 1 if the lock is not held.",
       with(etcd_conn(), {opt_force, opt_yes}),
       cmd_etcd_release},
#endif
      {{"deadlocks"},
       "",
       0,
       0,
       "find cross-process deadlocks among blocked Redis acquirers (wait records)",
       "Builds the wait-for graph from <prefix>waiting:* records and the lock keys, and prints every\n"
       "cycle. Exit 0: no deadlock; 1: a deadlock was found.",
       redis_conn(),
       cmd_deadlocks},
      {{"watch"},
       "[redis|pg]",
       0,
       1,
       "refresh `redis list` (default) or `pg list` every interval",
       "Clears the screen between refreshes when stdout is a terminal. With --json: one JSON\n"
       "document per line per refresh.",
       [] {
         std::vector<OptionSpec> o{{"interval", "SECONDS", "time between refreshes (default 2)"},
                                   {"count", "N", "stop after N refreshes"}};
         for (const auto& s : redis_conn()) o.push_back(s);
         o.push_back(opt_pg);
         o.push_back(opt_namespace);
         return o;
       }(),
       cmd_watch},
  };
  return all;
}

int run(std::span<const std::string> argv, std::ostream& out, std::ostream& err, Getenv getenv, bool stdout_tty) {
  if (argv.empty()) {
    print_help(err, "");
    return exit_usage;
  }
  if (argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    print_help(out, "");
    return exit_ok;
  }
  if (argv[0] == "--version") {
    out << "dlockctl " << DLOCK_VERSION_MAJOR << "." << DLOCK_VERSION_MINOR << "." << DLOCK_VERSION_PATCH << "\n";
    return exit_ok;
  }
  // The longest command path that argv starts with.
  const Command* cmd = nullptr;
  for (const auto& c : commands()) {
    if (c.path.size() > argv.size()) continue;
    if (!std::equal(c.path.begin(), c.path.end(), argv.begin())) continue;
    if (!cmd || c.path.size() > cmd->path.size()) cmd = &c;
  }
  if (!cmd) {
    const bool group = std::any_of(commands().begin(), commands().end(),
                                   [&](const Command& c) { return c.path.size() > 1 && c.path.front() == argv[0]; });
    if (group && (argv.size() == 1 || argv[1] == "--help" || argv[1] == "-h")) {
      print_help(argv.size() == 1 ? err : out, argv[0]);
      return argv.size() == 1 ? exit_usage : exit_ok;
    }
    err << "dlockctl: unknown command '" << argv[0] << (group ? " " + argv[1] : std::string()) << "'\n";
    print_help(err, group ? argv[0] : std::string_view());
    return exit_usage;
  }
  Context ctx{{}, out, err, std::move(getenv)};
  ctx.tty = stdout_tty;
  try {
    ctx.args = parse_args(argv.subspan(cmd->path.size()), cmd->options);
    if (ctx.args.help()) {
      print_command_help(out, *cmd);
      return exit_ok;
    }
    const auto n = ctx.args.positionals().size();
    if (n < cmd->min_operands || n > cmd->max_operands)
      throw UsageError(n < cmd->min_operands ? "missing operand"
                                             : "unexpected operand '" + ctx.args.positionals().back() + "'");
  } catch (const UsageError& e) {
    err << "dlockctl: " << e.what() << "\n"
        << usage_line(*cmd) << "\n(dlockctl " << path_of(*cmd) << " --help for details)\n";
    return exit_usage;
  }
  ctx.json = ctx.args.has("json");
  try {
    return cmd->run(ctx);
  } catch (const UsageError& e) {
    err << "dlockctl: " << sanitize(e.what(), secrets_of(ctx)) << "\n" << usage_line(*cmd) << "\n";
    return exit_usage;
  }
}

// ---- connection settings ----

std::chrono::milliseconds timeout_of(const Context& ctx) {
  const auto t = ctx.args.get("timeout");
  return t ? parse_duration(*t, "timeout") : std::chrono::milliseconds(2000);
}

namespace {
dlock::RedisOptions parse_uri_option(const std::string& text, const char* source) {
  try {
    return text.find("://") == std::string::npos ? dlock::parse_redis_uri("redis://" + text)
                                                 : dlock::parse_redis_uri(text);
  } catch (const dlock::InvalidArgument& e) {
    throw UsageError(fmt::format("{}: {}", source, e.what()));
  }
}
}  // namespace

dlock::RedisOptions redis_options(const Context& ctx) {
  dlock::RedisOptions o;
  if (const auto uri = ctx.args.get("redis")) {
    o = parse_uri_option(*uri, "--redis");
  } else if (const char* env = ctx.getenv("DLOCK_REDIS"); env && *env) {
    o = parse_uri_option(env, "DLOCK_REDIS");
  }
  if (const auto v = ctx.args.get("host")) {
    o.host = *v;
    o.unix_socket.clear();
  }
  if (const auto v = ctx.args.get("port")) o.port = static_cast<int>(parse_integer(*v, "port", 1, 65535));
  if (const auto v = ctx.args.get("user")) o.username = *v;
  if (const auto v = ctx.args.get("password")) o.password = *v;
  if (const auto v = ctx.args.get("db")) o.database = static_cast<int>(parse_integer(*v, "db", 0, 1'000'000));
  if (const auto v = ctx.args.get("prefix")) o.key_prefix = *v;
  // TLS: rediss:// or any --tls-* flag; the flags add to the URI's settings.
  const auto ca = ctx.args.get("tls-ca"), cert = ctx.args.get("tls-cert"), key = ctx.args.get("tls-key");
  if (ca || cert || key) {
    if (!o.tls) o.tls = dlock::TlsOptions{};
    if (ca) o.tls->ca_file = *ca;
    if (cert) o.tls->cert_file = *cert;
    if (key) o.tls->key_file = *key;
  }
  o.connect_timeout = o.command_timeout = timeout_of(ctx);
  o.pool_size = 2;
  o.eviction_check = dlock::EvictionCheck::off;  // inspecting any server is fine; the applications check
  try {
    dlock::detail::validate(o);
  } catch (const dlock::InvalidArgument& e) {
    throw UsageError(e.what());
  }
  return o;
}

std::vector<dlock::RedisOptions> redlock_node_options(const Context& ctx) {
  const auto nodes = ctx.args.get("nodes");
  if (!nodes) throw UsageError("--nodes host:port,host:port,... is required");
  const dlock::RedisOptions base = redis_options(ctx);
  std::vector<dlock::RedisOptions> out;
  for (const auto& n : split_list(*nodes)) {
    dlock::RedisOptions o = base;
    const auto colon = n.rfind(':');
    if (colon == std::string::npos || colon == 0) throw UsageError(fmt::format("--nodes: '{}' is not host:port", n));
    o.unix_socket.clear();
    o.host = n.substr(0, colon);
    if (o.host.size() > 2 && o.host.front() == '[' && o.host.back() == ']')
      o.host = o.host.substr(1, o.host.size() - 2);
    o.port = static_cast<int>(parse_integer(std::string_view(n).substr(colon + 1), "nodes port", 1, 65535));
    out.push_back(std::move(o));
  }
  if (out.empty()) throw UsageError("--nodes lists no node");
  return out;
}

dlock::PostgresOptions pg_options(const Context& ctx) {
  dlock::PostgresOptions o;
  if (const auto v = ctx.args.get("pg")) {
    o.conninfo = *v;
  } else if (const char* env = ctx.getenv("DLOCK_PG"); env && *env) {
    o.conninfo = env;
  }
  if (const auto v = ctx.args.get("namespace")) o.lock_namespace = *v;
  o.connect_timeout = o.statement_timeout = timeout_of(ctx);
  o.pool_size = 2;
  o.application_name = "dlockctl";
  try {
    dlock::detail::validate_fields(o);
  } catch (const dlock::InvalidArgument& e) {
    throw UsageError(e.what());
  }
  return o;
}

std::vector<std::string> secrets_of(const Context& ctx) {
  std::vector<std::string> s;
  // The raw credentials of the Redis URI in effect (as in redis_options()),
  // also when it does not parse.
  std::vector<std::string> uris = ctx.args.all("redis");
  if (const char* env = ctx.getenv("DLOCK_REDIS"); uris.empty() && env && *env) uris.emplace_back(env);
  for (const auto& uri : uris) {
    const std::string_view userinfo = dlock::detail::redis_uri_userinfo(uri);
    if (userinfo.empty()) continue;
    const auto colon = userinfo.find(':');
    if (colon != std::string_view::npos && colon + 1 < userinfo.size()) s.emplace_back(userinfo.substr(colon + 1));
    s.emplace_back(userinfo);
  }
  try {
    if (ctx.args.get("redis") || ctx.getenv("DLOCK_REDIS") || ctx.args.get("password")) {
      const auto o = redis_options(ctx);
      if (!o.password.empty()) s.push_back(o.password);
    }
  } catch (...) {  // unparsable: then nothing parsed to leak either
  }
  if (const auto p = ctx.args.get("password"); p && !p->empty()) s.push_back(*p);
  if (const char* env = ctx.getenv("DLOCK_ETCD_PASSWORD"); env && *env) s.emplace_back(env);
  std::vector<std::string> conninfos = ctx.args.all("pg");
  if (const char* env = ctx.getenv("DLOCK_PG"); env && *env) conninfos.emplace_back(env);
  for (const auto& ci : conninfos) {
    char* error = nullptr;
    PQconninfoOption* opts = PQconninfoParse(ci.c_str(), &error);
    if (error) PQfreemem(error);
    if (!opts) continue;
    for (PQconninfoOption* o = opts; o->keyword; ++o)
      if (std::string_view(o->keyword) == "password" && o->val && *o->val) s.emplace_back(o->val);
    PQconninfoFree(opts);
  }
  return s;
}

namespace {
void mask(std::string& message, std::string secret, bool joined) {
  if (joined) std::replace(secret.begin(), secret.end(), '\n', ' ');
  if (secret.empty()) return;
  for (auto pos = message.find(secret); pos != std::string::npos; pos = message.find(secret, pos + 3))
    message.replace(pos, secret.size(), "***");
}
}  // namespace

std::string sanitize(std::string message, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) mask(message, secret, false);
  std::replace(message.begin(), message.end(), '\n', ' ');
  // Joining the lines may have re-formed a secret with a space where the message broke its line.
  for (const auto& secret : secrets) mask(message, secret, true);
  while (!message.empty() && message.back() == ' ') message.pop_back();
  return message;
}

int guarded(Context& ctx, const std::vector<std::string>& secrets, const std::function<int()>& body) {
  const auto fail = [&](int code, std::string_view what) {
    std::string m(what);
    if (m.rfind("dlock: ", 0) == 0) m.erase(0, 7);
    if (m.rfind("dlockctl: ", 0) == 0) m.erase(0, 10);
    ctx.err << "dlockctl: " << sanitize(m, secrets) << "\n";
    return code;
  };
  try {
    return body();
  } catch (const UsageError&) {
    throw;
  } catch (const dlock::InvalidArgument& e) {
    return fail(exit_usage, e.what());
  } catch (const dlock::Error& e) {
    const auto c = e.code();
    if (c == dlock::errc::connection || c == dlock::errc::timeout || c == dlock::errc::auth)
      return fail(exit_connection, e.what());
    return fail(exit_server, e.what());
  } catch (const std::exception& e) {
    return fail(exit_server, e.what());
  }
}

}  // namespace dlockctl
