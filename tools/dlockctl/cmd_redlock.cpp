// dlockctl redlock list|inspect|release: the same key layout on N independent
// Redis nodes, through dlock::RedlockAdmin (dlock/redis_admin.hpp), which asks
// every node in parallel so that unreachable nodes cost one timeout, not N.
#include <algorithm>
#include <map>
#include <ostream>
#include <set>

#include <fmt/format.h>

#include <dlock/error.hpp>
#include <dlock/redis_admin.hpp>

#include "analysis.hpp"
#include "cli.hpp"
#include "output.hpp"

namespace dlockctl {

namespace {

struct NodeResult {
  std::string endpoint;
  bool reachable = true;
  std::string error;
  std::vector<dlock::RedisLockInfo> locks;                     // list / inspect
  std::optional<std::optional<dlock::RedisReleased>> removed;  // release: engaged when attempted
};

// One NodeResult per node from RedlockAdmin's answers (`take` moves the value in).
template <class T, class Take>
std::vector<NodeResult> results_of(std::vector<dlock::RedlockNodeResult<T>> answers,
                                   const std::vector<std::string>& secrets, const Take& take) {
  std::vector<NodeResult> out(answers.size());
  for (std::size_t i = 0; i < answers.size(); ++i) {
    out[i].endpoint = answers[i].endpoint;
    if (!answers[i].value) {
      std::string m = answers[i].error;
      if (m.rfind("dlock: ", 0) == 0) m.erase(0, 7);
      out[i].reachable = false;
      out[i].error = sanitize(m, secrets);
    } else {
      take(out[i], std::move(*answers[i].value));
    }
  }
  return out;
}

std::vector<NodeResult> read_locks(dlock::RedlockAdmin& admin, const std::vector<std::string>& secrets,
                                   const std::optional<std::string>& only) {
  if (only)
    return results_of(admin.inspect_mutexes({*only}), secrets,
                      [](NodeResult& r, std::vector<dlock::RedisLockInfo> v) { r.locks = std::move(v); });
  return results_of(admin.list(), secrets, [](NodeResult& r, dlock::RedisLockList v) {
    for (auto& l : v.locks)
      if (l.kind == dlock::RedisLockKind::mutex) r.locks.push_back(std::move(l));
  });
}

std::vector<NodeLockState> states_for(const std::vector<NodeResult>& results, const std::string& name) {
  std::vector<NodeLockState> out;
  for (const auto& r : results) {
    NodeLockState s;
    s.endpoint = r.endpoint;
    s.reachable = r.reachable;
    s.error = r.error;
    const auto it =
        std::find_if(r.locks.begin(), r.locks.end(), [&](const dlock::RedisLockInfo& l) { return l.name == name; });
    if (it != r.locks.end() && it->owner) {
      s.owner = it->owner;
      s.pttl_ms = it->ttl_ms;
    }
    if (it != r.locks.end()) s.token = it->token;
    out.push_back(std::move(s));
  }
  return out;
}

void write_nodes_json(JsonWriter& j, const std::vector<NodeResult>& results) {
  j.key("nodes").begin_array();
  for (const auto& r : results) {
    j.begin_object().key("endpoint").value(r.endpoint).key("reachable").value(r.reachable);
    if (!r.reachable) j.key("error").value(r.error);
    j.end_object();
  }
  j.end_array();
}

void write_lock_json(JsonWriter& j, const std::string& name, const std::vector<NodeLockState>& states) {
  const QuorumView q = evaluate_quorum(states);
  j.begin_object().name("name", name).key("held").value(q.held);
  if (q.owner) {
    j.name("owner", *q.owner);
  } else {
    j.key("owner").null();
  }
  j.key("agreeing").value(q.agreeing).key("quorum").value(q.quorum).key("quorum_ttl_ms").value(q.quorum_pttl_ms);
  j.key("nodes").begin_array();
  for (const auto& s : states) {
    j.begin_object().key("endpoint").value(s.endpoint).key("reachable").value(s.reachable);
    if (!s.reachable) {
      j.key("error").value(s.error);
    } else {
      j.key("owner");
      if (s.owner) {
        j.value(*s.owner);
      } else {
        j.null();
      }
      j.key("ttl_ms").value(s.pttl_ms).key("token").token(s.token);
    }
    j.end_object();
  }
  j.end_array().end_object();
}

void print_lock_text(std::ostream& out, const std::string& name, const std::vector<NodeLockState>& states) {
  const QuorumView q = evaluate_quorum(states);
  if (q.held) {
    out << fmt::format("\"{}\": quorum held by {} on {} of {} nodes (need {}), for {}\n", escape_text(name),
                       escape_text(*q.owner), q.agreeing, q.nodes, q.quorum, format_ttl(q.quorum_pttl_ms));
  } else if (q.owner) {
    out << fmt::format("\"{}\": NO quorum: {} holds it on {} of {} nodes (need {})\n", escape_text(name),
                       escape_text(*q.owner), q.agreeing, q.nodes, q.quorum);
  } else {
    out << fmt::format("\"{}\": not held on any reachable node ({} of {} reachable)\n", escape_text(name), q.reachable,
                       q.nodes);
  }
  Table t({"  NODE", "OWNER", "TTL", "TOKEN"});
  for (const auto& s : states) {
    if (!s.reachable) {
      t.add({"  " + s.endpoint, "unreachable", "", ""});
    } else if (!s.owner) {
      t.add({"  " + s.endpoint, "-", "", s.token ? escape_text(*s.token) : "-"});
    } else {
      t.add({"  " + s.endpoint, escape_text(*s.owner), format_ttl(s.pttl_ms), s.token ? escape_text(*s.token) : "-"});
    }
  }
  out << t.render();
}

void print_unreachable(Context& ctx, const std::vector<NodeResult>& results) {
  for (const auto& r : results)
    if (!r.reachable) ctx.err << "dlockctl: node " << r.endpoint << " unreachable: " << r.error << "\n";
}

bool all_unreachable(const std::vector<NodeResult>& results) {
  return std::none_of(results.begin(), results.end(), [](const NodeResult& r) { return r.reachable; });
}

int list_or_inspect(Context& ctx, const std::optional<std::string>& only) {
  const auto nodes = redlock_node_options(ctx);
  const std::string prefix = nodes.front().key_prefix;
  const auto secrets = secrets_of(ctx);
  return guarded(ctx, secrets, [&]() -> int {
    dlock::RedlockAdmin admin(nodes);
    const auto results = read_locks(admin, secrets, only);
    std::set<std::string> names;
    for (const auto& r : results)
      for (const auto& l : r.locks)
        if (l.owner) names.insert(l.name);
    if (only) names = {*only};
    print_unreachable(ctx, results);
    const std::size_t quorum = nodes.size() / 2 + 1;
    bool any_held = false;
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().name("prefix", prefix).key("quorum").value(quorum);
      write_nodes_json(j, results);
      j.key("locks").begin_array();
      for (const auto& n : names) {
        const auto states = states_for(results, n);
        any_held = any_held || std::any_of(states.begin(), states.end(),
                                           [](const NodeLockState& s) { return s.owner.has_value(); });
        write_lock_json(j, n, states);
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
    } else {
      for (const auto& n : names) {
        const auto states = states_for(results, n);
        any_held = any_held || std::any_of(states.begin(), states.end(),
                                           [](const NodeLockState& s) { return s.owner.has_value(); });
        print_lock_text(ctx.out, n, states);
      }
      std::size_t reachable = 0;
      for (const auto& r : results) reachable += r.reachable ? 1 : 0;
      if (!only)
        ctx.out << fmt::format("{} lock{} under prefix \"{}\" on {} node(s), {} reachable, quorum {}\n", names.size(),
                               names.size() == 1 ? "" : "s", escape_text(prefix), nodes.size(), reachable, quorum);
    }
    if (all_unreachable(results)) return static_cast<int>(exit_connection);
    if (only && !any_held) return static_cast<int>(exit_not_found);
    return static_cast<int>(exit_ok);
  });
}

}  // namespace

int cmd_redlock_list(Context& ctx) { return list_or_inspect(ctx, std::nullopt); }

int cmd_redlock_inspect(Context& ctx) { return list_or_inspect(ctx, ctx.args.positionals().at(0)); }

int cmd_redlock_release(Context& ctx) {
  const auto owner = ctx.args.get("owner");
  const bool force = ctx.args.has("force");
  if (owner.has_value() == force)
    throw UsageError("give either --owner ID (owner-checked) or --force --yes (whoever holds it)");
  if (owner && owner->empty()) throw UsageError("--owner must not be empty");
  const auto nodes = redlock_node_options(ctx);
  const std::string prefix = nodes.front().key_prefix;
  const std::string name = ctx.args.positionals().at(0);
  const auto secrets = secrets_of(ctx);
  return guarded(ctx, secrets, [&]() -> int {
    if (force && !ctx.args.has("yes")) {
      dlock::RedlockAdmin admin(nodes);
      const auto results = read_locks(admin, secrets, name);
      print_unreachable(ctx, results);
      const auto states = states_for(results, name);
      const auto holding =
          std::count_if(states.begin(), states.end(), [](const NodeLockState& s) { return s.owner.has_value(); });
      if (holding == 0) {
        ctx.out << fmt::format("\"{}\" is not held on any reachable node\n", escape_text(name));
        return static_cast<int>(all_unreachable(results) ? exit_connection : exit_not_found);
      }
      print_lock_text(ctx.err, name, states);
      ctx.err << fmt::format(
          "dlockctl: would delete \"{}\" on {} node(s) whoever holds it, and wake its waiters. "
          "Rerun with --yes to do it.\n",
          escape_text(name), holding);
      return static_cast<int>(exit_usage);
    }
    dlock::RedlockAdmin admin(nodes);
    const auto results =
        results_of(admin.force_release(name, owner ? std::optional<std::string_view>(*owner) : std::nullopt), secrets,
                   [](NodeResult& r, std::optional<dlock::RedisReleased> v) { r.removed.emplace(std::move(v)); });
    print_unreachable(ctx, results);
    std::size_t deleted = 0;
    for (const auto& r : results) deleted += (r.removed && *r.removed) ? 1 : 0;
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().name("prefix", prefix).name("name", name).key("deleted_on").value(deleted);
      j.key("nodes").begin_array();
      for (const auto& r : results) {
        j.begin_object().key("endpoint").value(r.endpoint).key("reachable").value(r.reachable);
        if (!r.reachable) {
          j.key("error").value(r.error);
        } else {
          j.key("deleted").value(r.removed && *r.removed);
          if (r.removed && *r.removed) j.name("owner", (*r.removed)->owner).key("ttl_ms").value((*r.removed)->ttl_ms);
        }
        j.end_object();
      }
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
    } else {
      for (const auto& r : results) {
        if (!r.reachable) {
          ctx.out << fmt::format("  {}  unreachable (it may still hold the lock until its TTL ends)\n", r.endpoint);
        } else if (r.removed && *r.removed) {
          ctx.out << fmt::format("  {}  deleted (owner {}, {} left)\n", r.endpoint, escape_text((*r.removed)->owner),
                                 format_ttl((*r.removed)->ttl_ms));
        } else {
          ctx.out << fmt::format("  {}  {}\n", r.endpoint, owner ? "not held by that owner" : "not held");
        }
      }
      ctx.out << fmt::format("released \"{}\" on {} of {} node(s)\n", escape_text(name), deleted, nodes.size());
    }
    if (std::any_of(results.begin(), results.end(), [](const NodeResult& r) { return !r.reachable; }))
      return static_cast<int>(exit_connection);
    return static_cast<int>(deleted > 0 ? exit_ok : exit_not_found);
  });
}

}  // namespace dlockctl
