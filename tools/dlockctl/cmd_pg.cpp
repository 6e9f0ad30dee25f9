// dlockctl pg list|inspect|key|release.
#include <algorithm>
#include <map>
#include <memory>
#include <ostream>

#include <fmt/format.h>
#include <libpq-fe.h>

#include <dlock/error.hpp>
#include <dlock/postgres.hpp>

#include "cli.hpp"
#include "output.hpp"

namespace dlockctl {

namespace {

constexpr std::string_view name_note =
    "lock names are not recoverable from keys (64-bit hashes); match them with --name NAME or `dlockctl pg key NAME`";

std::string format_ms(std::chrono::milliseconds d) { return format_ttl(d.count()); }

// Terminates the sessions holding advisory key `key` in the conninfo's
// database, in one statement (the holder is checked when it is signalled).
struct Terminated {
  int pid = 0;
  std::string application_name;
  std::string client_addr;
  bool signalled = false;
};

std::vector<Terminated> terminate_holders(const dlock::PostgresOptions& o, std::string_view endpoint,
                                          std::int64_t key) {
  const std::string timeout_s = std::to_string(std::max<long long>(1, (o.connect_timeout.count() + 999) / 1000));
  const std::string options = fmt::format("-c statement_timeout={}", o.statement_timeout.count());
  const char* keywords[] = {"dbname", "connect_timeout", "application_name", "options", nullptr};
  const char* values[] = {o.conninfo.c_str(), timeout_s.c_str(), "dlockctl", options.c_str(), nullptr};
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn(PQconnectdbParams(keywords, values, 1), &PQfinish);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    // libpq quotes host, user and database names: dropped, as in the library (they may be parts of a password).
    const std::string why = conn ? dlock::detail::pg_redact(PQerrorMessage(conn.get())) : "out of memory";
    throw dlock::ConnectionError(fmt::format("cannot connect to PostgreSQL at {}: {}", endpoint, why));
  }
  const std::string key_text = std::to_string(key);
  const char* params[] = {key_text.c_str()};
  std::unique_ptr<PGresult, decltype(&PQclear)> r(
      PQexecParams(conn.get(),
                   "SELECT l.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''),\n"
                   "       pg_catalog.pg_terminate_backend(l.pid)\n"
                   "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid\n"
                   "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted\n"
                   "  AND ((l.classid::int8 << 32) | l.objid::int8) = $1::int8\n"
                   "  AND l.database = (SELECT oid FROM pg_catalog.pg_database\n"
                   "                    WHERE datname = pg_catalog.current_database())",
                   1, nullptr, params, nullptr, nullptr, 0),
      &PQclear);
  if (!r || PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
    const std::string why = dlock::detail::pg_redact(r ? PQresultErrorMessage(r.get()) : PQerrorMessage(conn.get()));
    if (PQstatus(conn.get()) != CONNECTION_OK)
      throw dlock::ConnectionError(fmt::format("PostgreSQL at {} dropped the connection: {}", endpoint, why));
    throw dlock::ServerError(fmt::format("PostgreSQL at {} refused pg_terminate_backend: {}", endpoint, why));
  }
  std::vector<Terminated> out;
  for (int i = 0; i < PQntuples(r.get()); ++i)
    out.push_back(Terminated{std::atoi(PQgetvalue(r.get(), i, 0)), PQgetvalue(r.get(), i, 1), PQgetvalue(r.get(), i, 2),
                             std::string_view(PQgetvalue(r.get(), i, 3)) == "t"});
  return out;
}

}  // namespace

/// Permit slots of a --name that pg list names (a semaphore with more permits shows the rest as "?").
constexpr std::uint32_t max_named_permit_slots = 64;

/// A name's keys, each with its role: its mutex's (bigint space) and its
/// primitives' (two-int4 space: the read-write lock, the election, each permit slot).
using PgKeyRoles = std::map<std::pair<bool, std::int64_t>, std::vector<std::pair<std::string, std::string>>>;
void add_key_roles(PgKeyRoles& out, const dlock::PostgresBackend& pg, const std::string& n) {
  out[{false, pg.advisory_key(n)}].emplace_back(n, "mutex");
  out[{true, pg.primitive_key(n, dlock::detail::PgPrimitive::rw)}].emplace_back(n, "rw");
  out[{true, pg.primitive_key(n, dlock::detail::PgPrimitive::leader)}].emplace_back(n, "leader");
  const std::int64_t base = pg.primitive_key(n, dlock::detail::PgPrimitive::permit);
  for (std::uint32_t slot = 0; slot < max_named_permit_slots; ++slot)
    out[{true, dlock::detail::pg_permit_slot_key(base, slot)}].emplace_back(n, fmt::format("permit {}", slot));
}

int cmd_pg_list(Context& ctx) {
  const auto o = pg_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::PostgresBackend pg(o);
    PgKeyRoles roles;
    for (const auto& n : ctx.args.all("name")) add_key_roles(roles, pg, n);
    std::map<std::pair<bool, std::int64_t>, std::vector<std::string>> named;
    for (const auto& [k, rs] : roles)
      for (const auto& [n, role] : rs) named[k].push_back(role == "mutex" ? n : n + " (" + role + ")");
    const auto rows = pg.monitor();
    const auto name_of = [&](const dlock::PgAdvisoryLockInfo& r) -> std::string {
      const auto it = named.find({r.primitive, r.key});
      if (it == named.end()) return {};
      std::string s;
      for (const auto& n : it->second) s += (s.empty() ? "" : ",") + n;
      return s;
    };
    if (ctx.json) {
      JsonWriter j;
      j.begin_object()
          .key("endpoint")
          .value(pg.endpoint())
          .name("namespace", o.lock_namespace)
          .key("locks")
          .begin_array();
      for (const auto& r : rows) {
        j.begin_object().key("key").value(static_cast<long long>(r.key));
        const std::string n = name_of(r);
        if (n.empty()) {
          j.key("name").null();
        } else {
          j.name("name", n);
        }
        j.key("granted").value(r.granted).key("pid").value(r.pid).name("application_name", r.application_name);
        j.key("client_addr").value(r.client_addr).key("state").value(r.state).key("wait_start");
        if (r.wait_start) {
          j.value(format_utc(*r.wait_start));
        } else {
          j.null();
        }
        j.key("in_state_ms").value(static_cast<long long>(r.in_state_for.count()));
        if (r.primitive) j.key("primitive").value(true).key("shared").value(r.shared);
        j.end_object();
      }
      j.end_array().key("note").value(name_note).end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    Table t({"KEY", "NAME", "STATE", "PID", "APPLICATION", "CLIENT", "SESSION", "WAITING SINCE", "IN STATE"});
    std::size_t held = 0;
    for (const auto& r : rows) {
      held += r.granted ? 1 : 0;
      const std::string n = name_of(r);
      t.add({std::to_string(r.key), n.empty() ? (r.primitive ? "? (primitive)" : "?") : escape_text(n),
             r.granted ? (r.shared ? "held shared" : "held") : "waiting", std::to_string(r.pid),
             escape_text(r.application_name), r.client_addr.empty() ? "(unix socket)" : r.client_addr,
             escape_text(r.state), r.wait_start ? format_utc(*r.wait_start) : "-", format_ms(r.in_state_for)});
    }
    if (!t.empty()) ctx.out << t.render();
    ctx.out << fmt::format("{} advisory lock(s) held, {} waiting, in {}\nnote: {}\n", held, rows.size() - held,
                           pg.endpoint(), name_note);
    return exit_ok;
  });
}

int cmd_pg_inspect(Context& ctx) {
  const auto o = pg_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::PostgresBackend pg(o);
    PgKeyRoles roles;
    add_key_roles(roles, pg, name);
    std::vector<std::pair<std::string, dlock::PgAdvisoryLockInfo>> rows;
    for (auto& r : pg.monitor())
      if (const auto it = roles.find({r.primitive, r.key}); it != roles.end())
        rows.emplace_back(it->second.front().second, std::move(r));
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(pg.endpoint()).name("namespace", o.lock_namespace).name("name", name);
      j.key("held").value(std::any_of(rows.begin(), rows.end(), [](const auto& r) { return r.second.granted; }));
      j.key("locks").begin_array();
      for (const auto& [role, r] : rows) {
        j.begin_object().key("role").value(role).key("key").value(static_cast<long long>(r.key));
        j.key("granted").value(r.granted).key("shared").value(r.shared).key("pid").value(r.pid);
        j.name("application_name", r.application_name).key("client_addr").value(r.client_addr);
        j.key("state").value(r.state).key("wait_start");
        if (r.wait_start) {
          j.value(format_utc(*r.wait_start));
        } else {
          j.null();
        }
        j.key("in_state_ms").value(static_cast<long long>(r.in_state_for.count())).end_object();
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return rows.empty() ? exit_not_found : exit_ok;
    }
    if (rows.empty()) {
      ctx.out << fmt::format("\"{}\" is neither held nor awaited in {} (mutex key {})\n", escape_text(name),
                             pg.endpoint(), pg.advisory_key(name));
      return exit_not_found;
    }
    Table t({"ROLE", "KEY", "STATE", "PID", "APPLICATION", "CLIENT", "SESSION", "WAITING SINCE", "IN STATE"});
    for (const auto& [role, r] : rows)
      t.add({role, std::to_string(r.key), r.granted ? (r.shared ? "held shared" : "held") : "waiting",
             std::to_string(r.pid), escape_text(r.application_name),
             r.client_addr.empty() ? "(unix socket)" : r.client_addr, escape_text(r.state),
             r.wait_start ? format_utc(*r.wait_start) : "-", format_ms(r.in_state_for)});
    ctx.out << fmt::format("\"{}\" in {}\n", escape_text(name), pg.endpoint()) << t.render();
    return exit_ok;
  });
}

int cmd_pg_key(Context& ctx) {
  const std::string name = ctx.args.positionals().at(0);
  dlock::PostgresOptions o;
  if (const auto v = ctx.args.get("namespace")) o.lock_namespace = *v;
  return guarded(ctx, {}, [&]() -> int {
    const dlock::PostgresBackend pg(o);  // validates the namespace; never connects
    const std::int64_t key = pg.advisory_key(name);
    bool malformed = false;
    const bool explicit_key = dlock::detail::pg_parse_explicit_key(name, malformed).has_value();
    if (ctx.json) {
      JsonWriter j;
      j.begin_object()
          .name("name", name)
          .name("namespace", o.lock_namespace)
          .key("key")
          .value(static_cast<long long>(key));
      j.key("explicit").value(explicit_key).end_object();
      ctx.out << j.str() << "\n";
    } else {
      ctx.out << key << "\n";
    }
    return exit_ok;
  });
}

int cmd_pg_release(Context& ctx) {
  if (!ctx.args.has("force"))
    throw UsageError("release ends the holder's database session: give --force (and --yes to do it)");
  const auto key_opt = ctx.args.get("key");
  if (key_opt.has_value() == !ctx.args.positionals().empty()) throw UsageError("give either NAME or --key K");
  const auto o = pg_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::PostgresBackend pg(o);
    const std::string what = key_opt ? fmt::format("key {}", *key_opt)
                                     : fmt::format("\"{}\" (key {})", escape_text(ctx.args.positionals()[0]),
                                                   pg.advisory_key(ctx.args.positionals()[0]));
    const std::int64_t key = key_opt ? parse_int64(*key_opt, "key") : pg.advisory_key(ctx.args.positionals()[0]);
    if (!ctx.args.has("yes")) {
      std::size_t holders = 0;
      for (const auto& r : pg.monitor()) {
        if (r.key != key || !r.granted) continue;
        ++holders;
        ctx.err << fmt::format("dlockctl: would terminate pid {} (application \"{}\", client {}, {} for {})\n", r.pid,
                               escape_text(r.application_name), r.client_addr.empty() ? "unix socket" : r.client_addr,
                               escape_text(r.state), format_ms(r.in_state_for));
      }
      if (holders == 0) {
        ctx.out << fmt::format("no session holds {} in {}\n", what, pg.endpoint());
        return exit_not_found;
      }
      ctx.err << "dlockctl: that ends the whole session: every lock and open transaction of it. Rerun with --yes "
                 "to do it.\n";
      return exit_usage;
    }
    const auto done = terminate_holders(o, pg.endpoint(), key);
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(pg.endpoint()).key("key").value(static_cast<long long>(key));
      j.key("terminated").begin_array();
      for (const auto& t : done)
        j.begin_object()
            .key("pid")
            .value(t.pid)
            .name("application_name", t.application_name)
            .key("client_addr")
            .value(t.client_addr)
            .key("signalled")
            .value(t.signalled)
            .end_object();
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
    } else if (done.empty()) {
      ctx.out << fmt::format("no session holds {} in {}\n", what, pg.endpoint());
    } else {
      for (const auto& t : done)
        ctx.out << fmt::format("{} pid {} (application \"{}\", client {}) holding {}\n",
                               t.signalled ? "terminated" : "could not terminate", t.pid,
                               escape_text(t.application_name), t.client_addr.empty() ? "unix socket" : t.client_addr,
                               what);
    }
    if (done.empty()) return static_cast<int>(exit_not_found);
    for (const auto& t : done)
      if (!t.signalled) return static_cast<int>(exit_server);
    return static_cast<int>(exit_ok);
  });
}

}  // namespace dlockctl
