// dlockctl redis list|inspect|release, deadlocks, watch: on the public
// administration API (dlock/redis_admin.hpp).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <thread>

#include <fmt/format.h>

#include <dlock/error.hpp>
#include <dlock/redis_admin.hpp>

#include "analysis.hpp"
#include "cli.hpp"
#include "output.hpp"

namespace dlockctl {

namespace {

using dlock::RedisLeaseInfo;
using dlock::RedisLockInfo;
using dlock::RedisLockKind;
using dlock::RedisWaitInfo;

std::string quoted(std::string_view name) { return "\"" + escape_text(name) + "\""; }

std::string pid_of(std::string_view agent) {
  const auto pid = agent_pid(agent);
  return pid ? std::to_string(*pid) : "?";
}

void write_waiter_json(JsonWriter& j, const RedisWaitInfo& w) {
  j.begin_object().name("agent", w.agent);
  if (const auto pid = agent_pid(w.agent)) {
    j.key("pid").value(static_cast<long long>(*pid));
  } else {
    j.key("pid").null();
  }
  j.name("waiter", w.waiter).name("lock", w.lock).key("holds").begin_array();
  for (const auto& h : w.holds) j.begin_object().name("name", h.name).name("owner", h.owner).end_object();
  j.end_array().end_object();
}

std::string holds_text(const RedisWaitInfo& w) {
  if (w.holds.empty()) return "nothing";
  std::string s;
  for (const auto& h : w.holds) s += (s.empty() ? "" : ", ") + quoted(h.name);
  return s;
}

void print_not_held(Context& ctx, const dlock::RedisOptions& o, std::string_view name, std::string_view endpoint) {
  if (ctx.json) {
    JsonWriter j;
    j.begin_object().key("endpoint").value(endpoint).name("prefix", o.key_prefix).name("name", name);
    j.key("held").value(false).end_object();
    ctx.out << j.str() << "\n";
  } else {
    ctx.out << "lock " << quoted(name) << " is not held on " << endpoint << " (prefix " << quoted(o.key_prefix)
            << ")\n";
  }
}

// Leases as {"owner", "ttl_ms"} (with `tokens`, a reader's or permit's, also "token").
void write_leases_json(JsonWriter& j, std::string_view key, const std::vector<RedisLeaseInfo>& leases,
                       bool tokens = false) {
  j.key(key).begin_array();
  for (const auto& l : leases) {
    j.begin_object().name("owner", l.owner).key("ttl_ms").value(l.ttl_ms);
    if (tokens) j.key("token").token(l.token);
    j.end_object();
  }
  j.end_array();
}

// The fields of one lock beyond name/owner/ttl/token, per kind.
void write_kind_json(JsonWriter& j, const RedisLockInfo& l) {
  switch (l.kind) {
    case RedisLockKind::mutex:
      break;
    case RedisLockKind::fair_queue:
      write_leases_json(j, "queue", l.queue);
      break;
    case RedisLockKind::rw:
      write_leases_json(j, "readers", l.readers, true);
      j.key("waiting_writer");
      if (l.waiting_writer) {
        j.begin_object().name("owner", l.waiting_writer->owner).key("ttl_ms").value(l.waiting_writer->ttl_ms);
        j.end_object();
      } else {
        j.null();
      }
      break;
    case RedisLockKind::semaphore:
      write_leases_json(j, "permits", l.permits, true);
      j.key("permit_count").token(l.permit_count);
      break;
    case RedisLockKind::election:
      j.key("candidate").value_or_null(l.candidate).key("term").token(l.term);
      break;
  }
}

// The OWNER column: the holder, or what holds it for kinds with many holders.
std::string owner_text(const RedisLockInfo& l) {
  if (!l.wrong_type.empty()) return "(key holds a " + l.wrong_type + ", not a lock)";
  if (l.owner) return escape_text(*l.owner);
  if (l.kind == RedisLockKind::rw && !l.readers.empty())
    return fmt::format("{} reader{}", l.readers.size(), l.readers.size() == 1 ? "" : "s");
  if (l.kind == RedisLockKind::semaphore)
    return fmt::format("{}{} permit(s)", l.permits.size(), l.permit_count ? "/" + escape_text(*l.permit_count) : "");
  return "-";
}

// Blocked acquirers of one lock: wait records, plus fair-queue waiters and a waiting writer.
std::size_t waiting_on(const RedisLockInfo& l, std::size_t records) {
  return records + l.queue.size() + (l.waiting_writer ? 1 : 0);
}

// Where a lock lives: the admin's reached(), or on a cluster the shard's
// primary that answered for it, with the deployment in parentheses.
std::string where(const dlock::RedisAdmin& admin, const RedisLockInfo& l) {
  std::string reached = admin.reached();
  if (l.node.empty() || reached.starts_with(l.node)) return reached;
  return fmt::format("{} ({})", l.node, admin.endpoint());
}

std::string token_text(const std::optional<std::string>& token) { return token ? escape_text(*token) : "-"; }

// One line per lease (with `tokens`, a reader's or permit's, a TOKEN column).
void print_leases(std::ostream& out, std::string_view title, const std::vector<RedisLeaseInfo>& leases,
                  bool tokens = false) {
  out << title << leases.size() << "\n";
  if (leases.empty()) return;
  Table t(tokens ? std::vector<std::string>{"  OWNER", "TTL", "TOKEN"} : std::vector<std::string>{"  OWNER", "TTL"});
  for (const auto& l : leases) {
    std::vector<std::string> row{"  " + escape_text(l.owner), format_ttl(l.ttl_ms)};
    if (tokens) row.push_back(token_text(l.token));
    t.add(std::move(row));
  }
  out << t.render();
}

// `--kind` of release: mutex (default), rw or semaphore, by their kind_name().
RedisLockKind release_kind(const std::optional<std::string>& arg) {
  if (!arg) return RedisLockKind::mutex;
  for (const RedisLockKind k : {RedisLockKind::mutex, RedisLockKind::rw, RedisLockKind::semaphore})
    if (dlock::kind_name(k) == *arg) return k;
  throw UsageError("--kind takes mutex, rw or semaphore (got '" + escape_text(*arg) + "')");
}

// The leases of `kind` (rw or semaphore) that release --kind would break: the
// writer and the readers, or the permits; with `owner`, only its lease.
std::vector<RedisLeaseInfo> breakable(const std::vector<RedisLockInfo>& found, RedisLockKind kind,
                                      const std::optional<std::string>& owner) {
  std::vector<RedisLeaseInfo> out;
  const auto mine = [&](const std::string& o) { return !owner || o == *owner; };
  for (const auto& l : found) {
    if (l.kind != kind) continue;
    if (l.owner && mine(*l.owner))
      out.push_back(RedisLeaseInfo{.owner = *l.owner, .ttl_ms = l.ttl_ms, .token = std::nullopt});
    for (const auto& r : kind == RedisLockKind::rw ? l.readers : l.permits)
      if (mine(r.owner)) out.push_back(r);
  }
  return out;
}

// release --force --kind rw|semaphore: RedisAdmin::force_release_leases.
int release_leases(Context& ctx, const dlock::RedisOptions& o, const std::string& name, RedisLockKind kind,
                   const std::optional<std::string>& owner) {
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    if (!ctx.args.has("yes")) {
      const auto leases = breakable(admin.inspect(name), kind, owner);
      if (leases.empty()) {
        print_not_held(ctx, o, name, admin.reached());
        return exit_not_found;
      }
      std::string owners;
      for (const auto& l : leases) owners += (owners.empty() ? "" : ", ") + escape_text(l.owner);
      ctx.err << fmt::format(
          "dlockctl: would release {} lease(s) of {} {} on {} ({}) and wake its waiters; the holders are not told "
          "and may still be working. Rerun with --yes to do it.\n",
          leases.size(), dlock::kind_name(kind), quoted(name), admin.reached(), owners);
      return exit_usage;
    }
    const auto removed = admin.force_release_leases(name, kind, owner);
    if (removed.empty()) {
      print_not_held(ctx, o, name, admin.reached());
      return exit_not_found;
    }
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix).name("name", name);
      j.key("kind").value(dlock::kind_name(kind)).key("released").value(true).key("leases").begin_array();
      for (const auto& r : removed) {
        j.begin_object().name("owner", r.owner).name("key", r.key).key("ttl_ms").value(r.ttl_ms);
        j.key("token").token(r.token).end_object();
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    for (const auto& r : removed)
      ctx.out << fmt::format("released {} ({}): removed owner {} from {} on {} ({} left, token {})\n", quoted(name),
                             dlock::kind_name(kind), escape_text(r.owner), escape_text(r.key), admin.reached(),
                             format_ttl(r.ttl_ms), token_text(r.token));
    ctx.out << "waiters notified\n";
    return exit_ok;
  });
}

}  // namespace

int cmd_redis_list(Context& ctx) {
  const auto o = redis_options(ctx);
  dlock::RedisListOptions lo;
  if (const auto m = ctx.args.get("match")) lo.match = *m;
  if (const auto n = ctx.args.get("limit"))
    lo.limit = static_cast<std::size_t>(parse_integer(*n, "limit", 0, 1'000'000'000));
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    const auto list = admin.list(lo);
    const auto waits = admin.wait_records();
    std::map<std::string, std::size_t> waiters;
    for (const auto& w : waits.records) ++waiters[w.lock];
    const std::size_t shown = list.locks.size();
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix).key("locks").begin_array();
      for (const auto& s : list.locks) {
        j.begin_object().name("name", s.name).key("kind").value(dlock::kind_name(s.kind));
        if (s.owner) {
          j.name("owner", *s.owner);
        } else {
          j.key("owner").null();
        }
        if (!s.wrong_type.empty()) j.key("wrong_type").value(s.wrong_type);
        j.key("ttl_ms").value(s.ttl_ms).key("token").token(s.token).name("node", s.node);
        j.key("waiters").value(waiting_on(s, waiters[s.name]));
        write_kind_json(j, s);
        j.end_object();
      }
      j.end_array().key("truncated").value(list.truncated).key("waiting").value(waits.records.size());
      j.key("malformed_wait_records").value(waits.malformed);
      j.end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    Table t({"NAME", "KIND", "OWNER", "TTL", "TOKEN", "WAITERS"});
    for (const auto& s : list.locks)
      t.add({escape_text(s.name), std::string(dlock::kind_name(s.kind)), owner_text(s), format_ttl(s.ttl_ms),
             s.token ? escape_text(*s.token) : "-", std::to_string(waiting_on(s, waiters[s.name]))});
    if (!t.empty()) ctx.out << t.render();
    ctx.out << fmt::format("{} lock{} under prefix {} on {}", shown, shown == 1 ? "" : "s", quoted(o.key_prefix),
                           admin.reached());
    if (list.truncated) ctx.out << fmt::format(" (stopped at --limit {}; more exist)", lo.limit);
    if (!waits.records.empty()) ctx.out << fmt::format("; {} blocked acquirer(s) recorded", waits.records.size());
    if (waits.malformed) ctx.out << fmt::format("; {} malformed wait record(s) ignored", waits.malformed);
    ctx.out << "\n";
    return exit_ok;
  });
}

int cmd_redis_inspect(Context& ctx) {
  const auto o = redis_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    const auto found = admin.inspect(name);
    const auto waits = admin.wait_records();
    std::vector<RedisWaitInfo> waiters;
    for (const auto& w : waits.records)
      if (w.lock == name) waiters.push_back(w);
    for (const auto& s : found)
      if (!s.wrong_type.empty())
        throw dlock::ServerError(fmt::format("key {} on {} holds a {}, not a dlock lock", escape_text(s.key),
                                             where(admin, s), s.wrong_type));
    if (found.empty()) {
      print_not_held(ctx, o, name, admin.reached());
      return exit_not_found;
    }
    if (ctx.json) {
      // The first kind's fields at the top (a plain mutex reads as before), every kind in "kinds".
      const RedisLockInfo& s = found.front();
      const auto fields = [&](JsonWriter& j, const RedisLockInfo& l) {
        j.key("kind").value(dlock::kind_name(l.kind)).name("key", l.key).key("held").value(l.held());
        j.key("owner").value_or_null(l.owner).key("ttl_ms").value(l.ttl_ms).key("token").token(l.token);
        j.name("node", l.node);
        write_kind_json(j, l);
      };
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix).name("name", name);
      fields(j, s);
      j.key("waiters").begin_array();
      for (const auto& w : waiters) write_waiter_json(j, w);
      j.end_array().key("kinds").begin_array();
      for (const auto& l : found) {
        j.begin_object();
        fields(j, l);
        j.end_object();
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    for (const auto& s : found) {
      ctx.out << "lock     " << quoted(name) << "\n"
              << "kind     " << dlock::kind_name(s.kind) << "\n"
              << "key      " << escape_text(s.key) << " on " << where(admin, s) << "\n"
              << "owner    " << (s.owner ? escape_text(*s.owner) : "-") << "\n"
              << "ttl      " << format_ttl(s.ttl_ms) << "\n"
              << "token    " << (s.token ? escape_text(*s.token) : "- (no fencing counter)") << "\n";
      switch (s.kind) {
        case RedisLockKind::mutex:
          break;
        case RedisLockKind::fair_queue:
          print_leases(ctx.out, "queue    ", s.queue);
          break;
        case RedisLockKind::rw:
          print_leases(ctx.out, "readers  ", s.readers, true);
          if (s.waiting_writer)
            ctx.out << "writer waiting: " << escape_text(s.waiting_writer->owner) << " (mark expires in "
                    << format_ttl(s.waiting_writer->ttl_ms) << "; no new reader gets in)\n";
          break;
        case RedisLockKind::semaphore:
          ctx.out << "count    "
                  << (s.permit_count ? escape_text(*s.permit_count) + " (set by an operator)"
                                     : std::string("(each caller's own)"))
                  << "\n";
          print_leases(ctx.out, "permits  ", s.permits, true);
          break;
        case RedisLockKind::election:
          ctx.out << "leader   " << (s.candidate ? escape_text(*s.candidate) : "-") << ", term "
                  << (s.term ? escape_text(*s.term) : "-") << "\n";
          break;
      }
    }
    ctx.out << "waiters  " << waiters.size() << (waiters.empty() ? "" : " (recorded by blocked acquirers)") << "\n";
    if (!waiters.empty()) {
      Table t({"  AGENT", "PID", "WAITER", "HOLDS"});
      for (const auto& w : waiters)
        t.add({"  " + escape_text(w.agent), pid_of(w.agent), escape_text(w.waiter), holds_text(w)});
      ctx.out << t.render();
    }
    return exit_ok;
  });
}

int cmd_redis_release(Context& ctx) {
  if (!ctx.args.has("force"))
    throw UsageError("release breaks a lock that someone may still hold: give --force (and --yes to do it)");
  const auto owner = ctx.args.get("owner");
  if (owner && owner->empty()) throw UsageError("--owner must not be empty");
  const RedisLockKind kind = release_kind(ctx.args.get("kind"));
  const auto o = redis_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  if (kind != RedisLockKind::mutex) return release_leases(ctx, o, name, kind, owner);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    const RedisLockInfo s = admin.inspect_mutexes({name}).at(0);
    if (!ctx.args.has("yes")) {
      if (!s.owner || (owner && *s.owner != *owner)) {
        print_not_held(ctx, o, name, admin.reached());
        return exit_not_found;
      }
      ctx.err << fmt::format(
          "dlockctl: would delete {} on {} (owner {}, {} left) and wake its waiters; the holder is not told and "
          "may still be working. Rerun with --yes to do it.\n",
          escape_text(s.key), admin.reached(), escape_text(*s.owner), format_ttl(s.ttl_ms));
      return exit_usage;
    }
    const auto removed = admin.force_release(name, owner);
    if (!removed) {
      print_not_held(ctx, o, name, admin.reached());
      return exit_not_found;
    }
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix).name("name", name);
      j.name("key", s.key)
          .key("released")
          .value(true)
          .name("owner", removed->owner)
          .key("ttl_ms")
          .value(removed->ttl_ms);
      j.end_object();
      ctx.out << j.str() << "\n";
    } else {
      ctx.out << fmt::format("released {}: deleted {} on {} (owner {}, {} left); waiters notified\n", quoted(name),
                             escape_text(s.key), admin.reached(), escape_text(removed->owner),
                             format_ttl(removed->ttl_ms));
    }
    return exit_ok;
  });
}

int cmd_redis_permits(Context& ctx) {
  const auto set = ctx.args.get("set");
  const bool clear = ctx.args.has("clear");
  if (set && clear) throw UsageError("give --set N or --clear, not both");
  const auto count =
      set ? std::optional<std::uint64_t>(static_cast<std::uint64_t>(parse_integer(*set, "set", 0, 1'000'000'000)))
          : std::nullopt;
  const auto o = redis_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    std::optional<std::optional<std::string>> previous;  // engaged when changed
    if (set || clear) previous = admin.set_permit_count(name, count);
    std::optional<RedisLockInfo> sem;
    for (auto& l : admin.inspect(name))
      if (l.kind == RedisLockKind::semaphore) sem = std::move(l);
    const std::vector<RedisLeaseInfo> none;
    const auto& permits = sem ? sem->permits : none;
    const std::optional<std::string> current = sem ? sem->permit_count : std::nullopt;
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix).name("name", name);
      j.key("permit_count").token(current);
      if (previous) j.key("previous_count").token(*previous);
      write_leases_json(j, "permits", permits, true);
      j.end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    const auto text = [](const std::optional<std::string>& c) {
      return c ? escape_text(*c) : std::string("not set (each caller's own count applies)");
    };
    if (previous) ctx.out << "was      " << text(*previous) << "\n";
    ctx.out << "semaphore " << quoted(name) << " on " << admin.reached() << "\n"
            << "count    " << text(current) << "\n";
    print_leases(ctx.out, "permits  ", permits, true);
    return exit_ok;
  });
}

int cmd_deadlocks(Context& ctx) {
  const auto o = redis_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::RedisAdmin admin(o);
    const auto waits = admin.wait_records();
    std::vector<std::string> names;
    for (const auto& w : waits.records) names.push_back(w.lock);
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    std::map<std::string, std::string> owners;
    for (auto& s : admin.inspect_mutexes(names))
      if (s.owner) owners.emplace(s.name, *s.owner);
    const WaitGraph g = find_deadlocks(waits.records, owners);
    const bool found = !g.cycles.empty();
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(admin.reached()).name("prefix", o.key_prefix);
      j.key("deadlock").value(found).key("waiting").value(waits.records.size());
      j.key("malformed_wait_records").value(waits.malformed).key("edges").value(g.edges.size());
      j.key("truncated").value(g.truncated).key("cycles").begin_array();
      for (const auto& cycle : g.cycles) {
        j.begin_array();
        for (const auto& e : cycle) {
          j.begin_object().name("agent", e.from_agent);
          if (const auto pid = agent_pid(e.from_agent)) j.key("pid").value(static_cast<long long>(*pid));
          j.name("waits_for", e.lock).name("held_by", e.to_agent);
          if (const auto pid = agent_pid(e.to_agent)) j.key("held_by_pid").value(static_cast<long long>(*pid));
          j.name("waiter", e.waiter).name("holder_owner", e.holder_owner).end_object();
        }
        j.end_array();
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return found ? exit_not_found : exit_ok;
    }
    if (!found) {
      ctx.out << fmt::format("no deadlock: {} blocked acquirer(s) recorded, {} wait-for edge(s), on {} (prefix {})\n",
                             waits.records.size(), g.edges.size(), admin.reached(), quoted(o.key_prefix));
      return exit_ok;
    }
    for (std::size_t i = 0; i < g.cycles.size(); ++i) {
      const auto& cycle = g.cycles[i];
      ctx.out << fmt::format("deadlock {}: {} thread(s) wait for each other\n", i + 1, cycle.size());
      for (const auto& e : cycle)
        ctx.out << fmt::format("  {} (pid {}) waits for {}, held by {} (pid {})\n", escape_text(e.from_agent),
                               pid_of(e.from_agent), quoted(e.lock), escape_text(e.to_agent), pid_of(e.to_agent));
    }
    ctx.out << fmt::format(
        "{} deadlock(s){} on {} (prefix {}). Each waits until its acquire timeout (or forever); to break one, end one "
        "of these processes or release one of its locks (dlockctl redis release --force NAME --yes).\n",
        g.cycles.size(), g.truncated ? " (more not shown)" : "", admin.reached(), quoted(o.key_prefix));
    return exit_not_found;
  });
}

int cmd_watch(Context& ctx) {
  const std::string kind = ctx.args.positionals().empty() ? "redis" : ctx.args.positionals()[0];
  if (kind != "redis" && kind != "pg") throw UsageError("watch takes 'redis' or 'pg' (got '" + kind + "')");
  const auto interval = parse_duration(ctx.args.get("interval").value_or("2"), "interval");
  const auto count = ctx.args.get("count") ? parse_integer(*ctx.args.get("count"), "count", 1, 1'000'000'000) : 0;
  if (kind == "redis") {
    (void)redis_options(ctx);  // usage errors before the first refresh
  } else {
    (void)pg_options(ctx);
  }
  int rc = exit_ok;
  for (long long i = 0; count == 0 || i < count; ++i) {
    if (i > 0) std::this_thread::sleep_for(interval);
    if (!ctx.json) {
      if (ctx.tty) ctx.out << "\x1b[H\x1b[2J";
      ctx.out << fmt::format("dlockctl watch {}: refresh {} every {}, {}\n\n", kind, i + 1,
                             format_ttl(interval.count()), format_utc(std::chrono::system_clock::now()));
    }
    rc = kind == "redis" ? cmd_redis_list(ctx) : cmd_pg_list(ctx);
    ctx.out.flush();
    ctx.err.flush();
  }
  return rc;
}

}  // namespace dlockctl
