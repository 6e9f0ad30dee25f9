#include "analysis.hpp"

#include <algorithm>
#include <charconv>
#include <functional>
#include <limits>
#include <set>
#include <tuple>

namespace dlockctl {

WaitGraph find_deadlocks(std::span<const dlock::RedisWaitInfo> records,
                         const std::map<std::string, std::string>& lock_owners, std::size_t max_cycles) {
  WaitGraph g;
  // Who holds (lock, owner): the agents of the records that list it.
  std::map<std::pair<std::string, std::string>, std::set<std::string>> holders;
  for (const auto& r : records)
    for (const auto& h : r.holds) holders[{h.name, h.owner}].insert(r.agent);

  std::set<std::tuple<std::string, std::string, std::string>> seen;  // (from, to, lock)
  for (const auto& w : records) {
    const auto owner = lock_owners.find(w.lock);
    if (owner == lock_owners.end()) continue;  // not held now
    const auto h = holders.find({w.lock, owner->second});
    if (h == holders.end()) continue;  // the holder is not blocked (or its record is stale)
    for (const auto& agent : h->second) {
      if (!seen.insert({w.agent, agent, w.lock}).second) continue;
      g.edges.push_back(WaitEdge{w.agent, agent, w.lock, w.waiter, owner->second});
    }
  }

  // Elementary cycles: from each start agent s (in order), a depth-first
  // search through agents greater than s; an edge back to s closes a cycle.
  std::vector<std::string> agents;
  for (const auto& e : g.edges) {
    agents.push_back(e.from_agent);
    agents.push_back(e.to_agent);
  }
  std::sort(agents.begin(), agents.end());
  agents.erase(std::unique(agents.begin(), agents.end()), agents.end());
  const auto index = [&](const std::string& a) {
    return static_cast<std::size_t>(std::lower_bound(agents.begin(), agents.end(), a) - agents.begin());
  };
  std::vector<std::vector<const WaitEdge*>> out(agents.size());
  for (const auto& e : g.edges) out[index(e.from_agent)].push_back(&e);

  std::vector<const WaitEdge*> path;
  std::vector<bool> on_path(agents.size(), false);
  std::function<void(std::size_t, std::size_t)> dfs = [&](std::size_t start, std::size_t v) {
    for (const WaitEdge* e : out[v]) {
      if (g.truncated) return;
      const std::size_t t = index(e->to_agent);
      if (t == start) {
        if (g.cycles.size() == max_cycles) {
          g.truncated = true;
          return;
        }
        std::vector<WaitEdge> cycle;
        for (const WaitEdge* p : path) cycle.push_back(*p);
        cycle.push_back(*e);
        g.cycles.push_back(std::move(cycle));
      } else if (t > start && !on_path[t]) {
        on_path[t] = true;
        path.push_back(e);
        dfs(start, t);
        path.pop_back();
        on_path[t] = false;
      }
    }
  };
  for (std::size_t s = 0; s < agents.size() && !g.truncated; ++s) {
    on_path[s] = true;
    dfs(s, s);
    on_path[s] = false;
  }
  return g;
}

std::optional<long> agent_pid(std::string_view agent) {
  const auto last = agent.rfind(':');
  if (last == std::string_view::npos || last == 0) return std::nullopt;
  const auto before = agent.rfind(':', last - 1);
  if (before == std::string_view::npos) return std::nullopt;
  const std::string_view digits = agent.substr(before + 1, last - before - 1);
  long pid = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc{} || end != digits.data() + digits.size() || digits.empty() || pid <= 0) return std::nullopt;
  return pid;
}

QuorumView evaluate_quorum(std::span<const NodeLockState> nodes) {
  QuorumView v;
  v.nodes = nodes.size();
  v.quorum = nodes.size() / 2 + 1;
  std::map<std::string, std::vector<long long>> by_owner;
  for (const auto& n : nodes) {
    if (!n.reachable) continue;
    ++v.reachable;
    if (n.owner) by_owner[*n.owner].push_back(n.pttl_ms);
  }
  for (const auto& [owner, ttls] : by_owner) {  // map order: ties go to the smallest id
    if (ttls.size() > v.agreeing) {
      v.owner = owner;
      v.agreeing = ttls.size();
    }
  }
  v.held = v.agreeing >= v.quorum && v.agreeing > 0;
  if (v.held) {
    std::vector<long long> ttls = by_owner[*v.owner];
    // -1 (no TTL) lasts longest.
    std::sort(ttls.begin(), ttls.end(), [](long long a, long long b) {
      const auto key = [](long long x) { return x == -1 ? std::numeric_limits<long long>::max() : x; };
      return key(a) < key(b);
    });
    v.quorum_pttl_ms = ttls[v.agreeing - v.quorum];
  }
  return v;
}

}  // namespace dlockctl
