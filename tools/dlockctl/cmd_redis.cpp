// dlockctl redis list|inspect|release, deadlocks, watch.
#include <algorithm>
#include <chrono>
#include <map>
#include <ostream>
#include <thread>

#include <fmt/format.h>

#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_client.hpp>

#include "analysis.hpp"
#include "cli.hpp"
#include "output.hpp"
#include "redis_query.hpp"

namespace dlockctl {

namespace {

using dlock::detail::WaitInfo;

std::string quoted(std::string_view name) { return "\"" + escape_text(name) + "\""; }

std::string pid_of(std::string_view agent) {
  const auto pid = agent_pid(agent);
  return pid ? std::to_string(*pid) : "?";
}

void write_waiter_json(JsonWriter& j, const WaitInfo& w) {
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

std::string holds_text(const WaitInfo& w) {
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

}  // namespace

int cmd_redis_list(Context& ctx) {
  const auto o = redis_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::detail::RedisClient node(o);
    const auto names = scan_lock_names(node, o.key_prefix);
    const auto states = lock_states(node, o.key_prefix, names);
    const auto waits = wait_records(node, o.key_prefix);
    std::map<std::string, std::size_t> waiters;
    for (const auto& w : waits.records) ++waiters[w.lock];
    std::size_t shown = 0;
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(node.endpoint()).name("prefix", o.key_prefix).key("locks").begin_array();
      for (const auto& s : states) {
        if (!s.owner && s.wrong_type.empty()) continue;  // expired since the SCAN
        ++shown;
        j.begin_object().name("name", s.name);
        if (s.owner) {
          j.name("owner", *s.owner);
        } else {
          j.key("owner").null().key("wrong_type").value(s.wrong_type);
        }
        j.key("ttl_ms").value(s.pttl_ms).key("token").token(s.token);
        j.key("waiters").value(waiters[s.name]).end_object();
      }
      j.end_array().key("waiting").value(waits.records.size()).key("malformed_wait_records").value(waits.malformed);
      j.end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    Table t({"NAME", "OWNER", "TTL", "TOKEN", "WAITERS"});
    for (const auto& s : states) {
      if (!s.owner && s.wrong_type.empty()) continue;
      ++shown;
      t.add({escape_text(s.name), s.owner ? escape_text(*s.owner) : "(key holds a " + s.wrong_type + ", not a lock)",
             format_ttl(s.pttl_ms), s.token ? escape_text(*s.token) : "-", std::to_string(waiters[s.name])});
    }
    if (!t.empty()) ctx.out << t.render();
    ctx.out << fmt::format("{} lock{} under prefix {} on {}", shown, shown == 1 ? "" : "s", quoted(o.key_prefix),
                           node.endpoint());
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
    dlock::detail::RedisClient node(o);
    const std::vector<std::string> names{name};
    const LockState s = lock_states(node, o.key_prefix, names).at(0);
    const auto waits = wait_records(node, o.key_prefix);
    std::vector<WaitInfo> waiters;
    for (const auto& w : waits.records)
      if (w.lock == name) waiters.push_back(w);
    if (!s.owner) {
      if (!s.wrong_type.empty())
        throw dlock::ServerError(fmt::format("key {} on {} holds a {}, not a dlock lock",
                                             escape_text(dlock::detail::redis_keys(o.key_prefix, name).lock),
                                             node.endpoint(), s.wrong_type));
      print_not_held(ctx, o, name, node.endpoint());
      return exit_not_found;
    }
    const std::string key = dlock::detail::redis_keys(o.key_prefix, name).lock;
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(node.endpoint()).name("prefix", o.key_prefix).name("name", name);
      j.name("key", key).key("held").value(true).name("owner", *s.owner).key("ttl_ms").value(s.pttl_ms);
      j.key("token").token(s.token).key("waiters").begin_array();
      for (const auto& w : waiters) write_waiter_json(j, w);
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    ctx.out << "lock     " << quoted(name) << "\n"
            << "key      " << escape_text(key) << " on " << node.endpoint() << "\n"
            << "owner    " << escape_text(*s.owner) << "\n"
            << "ttl      " << format_ttl(s.pttl_ms) << "\n"
            << "token    " << (s.token ? escape_text(*s.token) : "- (no fencing counter)") << "\n"
            << "waiters  " << waiters.size() << (waiters.empty() ? "" : " (recorded by blocked acquirers)") << "\n";
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
  const auto o = redis_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::detail::RedisClient node(o);
    const std::string key = dlock::detail::redis_keys(o.key_prefix, name).lock;
    if (!ctx.args.has("yes")) {
      const std::vector<std::string> names{name};
      const LockState s = lock_states(node, o.key_prefix, names).at(0);
      if (!s.owner) {
        print_not_held(ctx, o, name, node.endpoint());
        return exit_not_found;
      }
      ctx.err << fmt::format(
          "dlockctl: would delete {} on {} (owner {}, {} left) and wake its waiters; the holder is not told and "
          "may still be working. Rerun with --yes to do it.\n",
          escape_text(key), node.endpoint(), escape_text(*s.owner), format_ttl(s.pttl_ms));
      return exit_usage;
    }
    const auto removed = force_release(node, o.key_prefix, name);
    if (!removed) {
      print_not_held(ctx, o, name, node.endpoint());
      return exit_not_found;
    }
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(node.endpoint()).name("prefix", o.key_prefix).name("name", name);
      j.name("key", key)
          .key("released")
          .value(true)
          .name("owner", removed->owner)
          .key("ttl_ms")
          .value(removed->pttl_ms);
      j.end_object();
      ctx.out << j.str() << "\n";
    } else {
      ctx.out << fmt::format("released {}: deleted {} on {} (owner {}, {} left); waiters notified\n", quoted(name),
                             escape_text(key), node.endpoint(), escape_text(removed->owner),
                             format_ttl(removed->pttl_ms));
    }
    return exit_ok;
  });
}

int cmd_deadlocks(Context& ctx) {
  const auto o = redis_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::detail::RedisClient node(o);
    const auto waits = wait_records(node, o.key_prefix);
    std::vector<std::string> names;
    for (const auto& w : waits.records) names.push_back(w.lock);
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    std::map<std::string, std::string> owners;
    for (auto& s : lock_states(node, o.key_prefix, names))
      if (s.owner) owners.emplace(s.name, *s.owner);
    const WaitGraph g = find_deadlocks(waits.records, owners);
    const bool found = !g.cycles.empty();
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(node.endpoint()).name("prefix", o.key_prefix);
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
                             waits.records.size(), g.edges.size(), node.endpoint(), quoted(o.key_prefix));
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
        g.cycles.size(), g.truncated ? " (more not shown)" : "", node.endpoint(), quoted(o.key_prefix));
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
