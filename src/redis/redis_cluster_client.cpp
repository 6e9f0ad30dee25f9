// ClusterClient: Redis Cluster routing over one RedisClient per node
// (redis_cluster_client.hpp).
#include <dlock/detail/redis_cluster_client.hpp>

#include <exception>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/redis_client.hpp>
#include <dlock/detail/redis_sentinel_client.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

using redis_proto::HaStep;

std::string_view cluster_route_key(const redis_proto::ScriptCall& call) noexcept {
  return call.keys.empty() ? std::string_view() : std::string_view(call.keys.front());
}

std::string_view cluster_route_key(std::span<const std::string_view> args) noexcept {
  return args.size() > 1 ? args[1] : std::string_view();
}

ClusterClient::ClusterClient(RedisOptions options, RedisLinkSetup setup)
    : options_(std::move(options)), setup_(setup) {}

ClusterClient::~ClusterClient() = default;

RedisOptions ClusterClient::node_options(const std::string& host, std::uint16_t port) const {
  RedisOptions o = options_;
  o.cluster.reset();
  o.host = host;
  o.port = port;
  return o;
}

RedisClient& ClusterClient::node(const std::string& host, std::uint16_t port) {
  const std::string key = redis_proto::ClusterNode{.host = host, .port = port, .id = {}}.endpoint();
  std::lock_guard lk(mu_);
  auto& slot = nodes_[key];
  if (!slot) slot = std::make_unique<RedisClient>(node_options(host, port), setup_);
  return *slot;
}

std::optional<RedisOptions> ClusterClient::any_node(std::size_t turn) const {
  std::lock_guard lk(mu_);
  const auto& seeds = options_.cluster->seeds;
  const auto primaries = map_ ? map_->primaries() : std::vector<redis_proto::ClusterNode>{};
  const std::size_t i = turn % (primaries.size() + seeds.size());
  if (i < primaries.size()) return node_options(primaries[i].host, primaries[i].port);
  const RedisAddress& seed = seeds[i - primaries.size()];
  return node_options(seed.host, static_cast<std::uint16_t>(seed.port));
}

void ClusterClient::refresh() {
  // Seeds first, then the nodes the last map named (a cluster whose seeds
  // are all gone is still reachable through what it told us).
  std::vector<std::pair<std::string, std::uint16_t>> ask;
  for (const RedisAddress& s : options_.cluster->seeds) ask.emplace_back(s.host, static_cast<std::uint16_t>(s.port));
  {
    std::lock_guard lk(mu_);
    if (map_)
      for (const auto& p : map_->primaries()) ask.emplace_back(p.host, p.port);
  }
  std::string answers;
  for (const auto& [host, port] : ask) {
    std::string why;
    try {
      const RedisValue r = node(host, port).command({"CLUSTER", "SLOTS"});
      auto parsed = redis_proto::SlotMap::from_cluster_slots(r, host);
      if (auto* map = std::get_if<redis_proto::SlotMap>(&parsed)) {
        std::lock_guard lk(mu_);
        map_ = std::move(*map);
        return;
      }
      why = std::get<std::string>(parsed);
    } catch (const std::exception& e) {
      why = e.what();
    }
    answers += fmt::format("{}{}: {}", answers.empty() ? "" : "; ",
                           redis_proto::ClusterNode{.host = host, .port = port, .id = {}}.endpoint(), why);
  }
  throw ConnectionError(fmt::format("dlock: no node of {} gave its slot map ({})", redis_endpoint(options_), answers));
}

std::optional<redis_proto::ClusterNode> ClusterClient::known_primary(std::uint16_t slot) const {
  std::lock_guard lk(mu_);
  if (map_)
    if (const auto* p = map_->primary_for_slot(slot)) return *p;
  return std::nullopt;
}

std::vector<std::pair<std::string, std::uint16_t>> ClusterClient::map_sources() const {
  std::vector<std::pair<std::string, std::uint16_t>> out;
  for (const RedisAddress& s : options_.cluster->seeds) out.emplace_back(s.host, static_cast<std::uint16_t>(s.port));
  std::lock_guard lk(mu_);
  if (map_)
    for (const auto& p : map_->primaries()) out.emplace_back(p.host, p.port);
  return out;
}

void ClusterClient::install(redis_proto::SlotMap map) {
  std::lock_guard lk(mu_);
  map_ = std::move(map);
}

void ClusterClient::note_moved(const redis_proto::Redirect& to, std::string_view sender_host) {
  ++moved_;
  std::lock_guard lk(mu_);
  if (map_) map_->apply_moved(to, sender_host);
}

void ClusterClient::refresh_quietly() noexcept {
  try {
    refresh();
  } catch (...) {  // the old map serves; the next failure tries again
  }
}

RedisClient& ClusterClient::primary(std::uint16_t slot) {
  for (int attempt = 0;; ++attempt) {
    std::optional<redis_proto::ClusterNode> at;
    {
      std::lock_guard lk(mu_);
      if (map_)
        if (const auto* p = map_->primary_for_slot(slot)) at = *p;
    }
    if (at) return node(at->host, at->port);
    if (attempt > 0)
      throw ConnectionError(fmt::format(
          "dlock: no node of {} serves slot {} (the cluster is down or resharding); nothing was done, and a "
          "blocking acquire retries",
          redis_endpoint(options_), slot));
    refresh();
  }
}

std::vector<RedisClient*> ClusterClient::primaries() {
  refresh();
  std::vector<redis_proto::ClusterNode> at;
  {
    std::lock_guard lk(mu_);
    if (map_) at = map_->primaries();
  }
  std::vector<RedisClient*> out;
  out.reserve(at.size());
  for (const auto& p : at) out.push_back(&node(p.host, p.port));
  return out;
}

std::string_view ClusterClient::known_endpoint(std::string_view key) const {
  std::lock_guard lk(mu_);
  if (!map_) return {};
  const auto* p = map_->primary_for_key(key);
  if (!p) return {};
  const auto it = nodes_.find(p->endpoint());
  return it == nodes_.end() ? std::string_view() : std::string_view(it->second->endpoint());
}

// RedisClient's, here with the routers it asks (redis_client.hpp).
std::string_view RedisClient::node_endpoint(std::string_view name) const noexcept {
  try {
    if (cluster_)
      if (const auto e = cluster_->known_endpoint(keys(name).lock); !e.empty()) return e;
    if (sentinel_)
      if (const auto e = sentinel_->primary_endpoint(); !e.empty()) return e;
  } catch (...) {  // out of memory: the deployment's name
  }
  return endpoint_;
}

RedisClient& ClusterClient::node_for_key(std::string_view key) { return primary(redis_proto::hash_slot(key)); }

template <class Push>
RedisValue ClusterClient::follow(RedisValue reply, std::string sender_host, const Push& push, std::string_view what) {
  for (int redirects = 0; reply.is_error(); ++redirects) {
    const redis_proto::HaDecision d = redis_proto::after_error(reply.str, sender_host, redirects);
    if (d.step != HaStep::follow_moved && d.step != HaStep::follow_ask) {
      if (d.refresh_map) refresh_quietly();  // READONLY, CLUSTERDOWN: the caller retries with the new map
      const auto kind = redis_proto::classify_error(reply.str).kind;
      if (d.step == HaStep::retry_later &&
          (kind == redis_proto::ErrorKind::moved || kind == redis_proto::ErrorKind::ask))
        throw ConnectionError(fmt::format(
            "dlock: {} was redirected {} times by {} (last: {}); the slot is moving (a resharding in progress, or "
            "nodes whose slot maps disagree): nothing was done on the server, and a blocking acquire retries it",
            what, redirects, redis_endpoint(options_), reply.str));
      return reply;
    }
    const redis_proto::Redirect& to = *d.redirect;
    if (d.step == HaStep::follow_moved) {
      ++moved_;
      {
        std::lock_guard lk(mu_);
        if (map_) map_->apply_moved(to, sender_host);
      }
      try {
        refresh();                       // one MOVED usually means a whole range moved
      } catch (const std::exception&) {  // the patched map serves meanwhile
      }
    } else {
      ++asked_;
    }
    RedisClient& n = node(to.host, to.port);
    auto c = n.take();
    RedisCall call{.request = {}, .what = std::string(what), .deadline = {}, .deadline_name = {}};
    if (d.step == HaStep::follow_ask) redis_proto::push_asking(call.request);  // ASKING, then the call
    push(call.request, c.handle.shas());
    std::vector<RedisValue> replies;
    try {
      replies = c.handle.exec(std::move(call));
    } catch (...) {
      n.give_back(std::move(c), false);
      throw;
    }
    reply = std::move(replies.back());
    const bool healthy = !c.handle.broken() &&
                         !(reply.is_error() &&
                           redis_proto::after_error_kind(redis_proto::classify_error(reply.str).kind).drop_connection);
    n.give_back(std::move(c), healthy);
    sender_host = to.host;
  }
  return reply;
}

std::vector<RedisValue> ClusterClient::run_scripts(std::span<const redis_proto::ScriptCall> calls,
                                                   std::string_view what) {
  std::vector<RedisValue> out(calls.size());
  // Calls grouped by node, in order of first appearance.
  std::vector<std::pair<RedisClient*, std::vector<std::size_t>>> groups;
  for (std::size_t k = 0; k < calls.size(); ++k) {
    RedisClient* n = &primary(redis_proto::hash_slot(cluster_route_key(calls[k])));
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == n; });
    if (it == groups.end()) it = groups.insert(groups.end(), {n, {}});
    it->second.push_back(k);
  }
  for (auto& [n, index] : groups) {
    std::vector<redis_proto::ScriptCall> batch;
    batch.reserve(index.size());
    for (std::size_t k : index) batch.push_back(calls[k]);
    std::vector<RedisValue> replies;
    try {
      replies = n->run_scripts(batch, what);
    } catch (const Error&) {
      refresh_quietly();  // a primary that is gone: its replica may serve the slot by the next attempt
      throw;
    }
    const std::string sender_host = n->options().host;
    for (std::size_t b = 0; b < index.size(); ++b) {
      const redis_proto::ScriptCall& call = calls[index[b]];
      // A redirected call goes as EVAL: the node it lands on may not have
      // loaded the script on that connection's handshake yet.
      out[index[b]] = follow(
          std::move(replies[b]), sender_host,
          [&](redis_proto::Request& r, const redis_proto::ScriptShas& shas) {
            (void)redis_proto::push_script_call(r, call, shas, redis_proto::ScriptForm::eval);
          },
          what);
    }
  }
  return out;
}

RedisValue ClusterClient::command(std::span<const std::string_view> args) {
  RedisClient& n = node_for_key(cluster_route_key(args));
  RedisValue first;
  try {
    first = n.command(args);
  } catch (const Error&) {
    refresh_quietly();
    throw;
  }
  return follow(
      std::move(first), n.options().host,
      [&](redis_proto::Request& r, const redis_proto::ScriptShas&) { r.push(args); },
      args.empty() ? std::string_view("a command") : args.front());
}

}  // namespace dlock::detail
