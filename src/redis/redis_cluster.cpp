// Redis Cluster routing and HA decisions without I/O (redis_cluster.hpp).
#include <dlock/detail/redis_cluster.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/redis_keys.hpp>

namespace dlock::detail::redis_proto {

namespace {

constexpr std::array<std::uint16_t, 256> crc16_table() {
  std::array<std::uint16_t, 256> t{};
  for (unsigned i = 0; i < 256; ++i) {
    auto c = static_cast<std::uint16_t>(i << 8);
    for (int b = 0; b < 8; ++b) c = static_cast<std::uint16_t>((c & 0x8000) != 0 ? (c << 1) ^ 0x1021 : c << 1);
    t[i] = c;
  }
  return t;
}
constexpr auto crc16_lookup = crc16_table();

using T = Reply::Type;

std::optional<std::uint16_t> as_port(const Reply& r) {
  if (r.type != T::integer || r.integer < 1 || r.integer > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(r.integer);
}

std::optional<std::uint16_t> as_slot(const Reply& r) {
  if (r.type != T::integer || r.integer < 0 || r.integer >= cluster_slot_count) return std::nullopt;
  return static_cast<std::uint16_t>(r.integer);
}

// A node's announced host: "" means the node we asked; "?" means unknown.
std::optional<std::string> node_host(const Reply& r, std::string_view asked_host) {
  if (r.type != T::string) return std::nullopt;
  if (r.str.empty()) return std::string(asked_host);
  if (r.str == "?") return std::nullopt;
  return r.str;
}

// A RESP2 "map": a flat array of key, value, key, value...
const Reply* field(const Reply& map, std::string_view key) {
  if (map.type != T::array) return nullptr;
  for (std::size_t i = 0; i + 1 < map.elements.size(); i += 2)
    if (map.elements[i].type == T::string && map.elements[i].str == key) return &map.elements[i + 1];
  return nullptr;
}

}  // namespace

std::uint16_t crc16(std::string_view bytes) noexcept {
  std::uint16_t crc = 0;
  for (const char ch : bytes)
    crc = static_cast<std::uint16_t>((crc << 8) ^ crc16_lookup[((crc >> 8) ^ static_cast<unsigned char>(ch)) & 0xff]);
  return crc;
}

std::uint16_t hash_slot(std::string_view key) noexcept {
  return static_cast<std::uint16_t>(crc16(redis_hash_tag(key)) & (cluster_slot_count - 1));
}

std::string ClusterNode::endpoint() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

// ---- Slot map ----

std::optional<std::string> SlotMap::index(std::string_view command) {
  std::sort(ranges_.begin(), ranges_.end(), [](const SlotRange& a, const SlotRange& b) { return a.first < b.first; });
  for (std::size_t i = 1; i < ranges_.size(); ++i)
    if (ranges_[i].first <= ranges_[i - 1].last)
      return fmt::format("{}: slot {} is claimed twice", command, ranges_[i].first);
  owner_.assign(cluster_slot_count, -1);
  for (std::size_t i = 0; i < ranges_.size(); ++i)
    for (std::uint32_t s = ranges_[i].first; s <= ranges_[i].last; ++s) owner_[s] = static_cast<std::int32_t>(i);
  return std::nullopt;
}

std::variant<SlotMap, std::string> SlotMap::from_cluster_slots(const Reply& reply, std::string_view asked_host) {
  if (reply.is_error()) return fmt::format("CLUSTER SLOTS refused: {}", describe(classify_error(reply.str).kind));
  if (reply.type != T::array) return std::string("CLUSTER SLOTS: the reply is not an array");
  SlotMap map;
  for (const Reply& e : reply.elements) {
    if (e.type != T::array || e.elements.size() < 3)
      return std::string("CLUSTER SLOTS: a range is not [first, last, primary, replicas...]");
    const auto first = as_slot(e.elements[0]);
    const auto last = as_slot(e.elements[1]);
    if (!first || !last || *first > *last) return std::string("CLUSTER SLOTS: a slot range is out of 0..16383");
    SlotRange range{.first = *first, .last = *last, .primary = {}, .replicas = {}};
    for (std::size_t n = 2; n < e.elements.size(); ++n) {
      const Reply& node = e.elements[n];
      if (node.type != T::array || node.elements.size() < 2)
        return std::string("CLUSTER SLOTS: a node is not [host, port, id...]");
      const auto port = as_port(node.elements[1]);
      if (!port) return std::string("CLUSTER SLOTS: a node's port is not in 1..65535");
      auto host = node_host(node.elements[0], asked_host);
      if (!host) {
        if (n == 2) return std::string("CLUSTER SLOTS: a primary has no known endpoint ('?')");
        continue;  // a replica nobody can reach is no use to us
      }
      ClusterNode c{.host = std::move(*host), .port = *port, .id = {}};
      if (node.elements.size() > 2 && node.elements[2].type == T::string) c.id = node.elements[2].str;
      if (n == 2) {
        range.primary = std::move(c);
      } else {
        range.replicas.push_back(std::move(c));
      }
    }
    map.ranges_.push_back(std::move(range));
  }
  if (auto why = map.index("CLUSTER SLOTS")) return std::move(*why);
  return map;
}

std::variant<SlotMap, std::string> SlotMap::from_cluster_shards(const Reply& reply, std::string_view asked_host) {
  if (reply.is_error()) return fmt::format("CLUSTER SHARDS refused: {}", describe(classify_error(reply.str).kind));
  if (reply.type != T::array) return std::string("CLUSTER SHARDS: the reply is not an array");
  SlotMap map;
  for (const Reply& shard : reply.elements) {
    const Reply* slots = field(shard, "slots");
    const Reply* nodes = field(shard, "nodes");
    if (slots == nullptr || nodes == nullptr || slots->type != T::array || nodes->type != T::array ||
        slots->elements.size() % 2 != 0)
      return std::string("CLUSTER SHARDS: a shard is not {slots: [first, last...], nodes: [...]}");
    std::optional<ClusterNode> primary;
    std::vector<ClusterNode> replicas;
    for (const Reply& node : nodes->elements) {
      const Reply* role = field(node, "role");
      const Reply* health = field(node, "health");
      const Reply* port = field(node, "port");
      if (port == nullptr) port = field(node, "tls-port");
      const Reply* endpoint = field(node, "endpoint");
      if (endpoint == nullptr) endpoint = field(node, "ip");
      if (role == nullptr || port == nullptr || endpoint == nullptr || role->type != T::string)
        return std::string("CLUSTER SHARDS: a node lacks role, port or endpoint");
      const auto p = as_port(*port);
      if (!p) return std::string("CLUSTER SHARDS: a node's port is not in 1..65535");
      if (health != nullptr && !(health->type == T::string && health->str == "online")) continue;
      auto host = node_host(*endpoint, asked_host);
      if (!host) continue;
      ClusterNode c{.host = std::move(*host), .port = *p, .id = {}};
      if (const Reply* id = field(node, "id"); id != nullptr && id->type == T::string) c.id = id->str;
      if (role->str == "master") {
        primary = std::move(c);
      } else {
        replicas.push_back(std::move(c));
      }
    }
    if (!primary) continue;  // no online primary: these slots are unserved until a failover
    for (std::size_t i = 0; i < slots->elements.size(); i += 2) {
      const auto first = as_slot(slots->elements[i]);
      const auto last = as_slot(slots->elements[i + 1]);
      if (!first || !last || *first > *last) return std::string("CLUSTER SHARDS: a slot range is out of 0..16383");
      map.ranges_.push_back(SlotRange{.first = *first, .last = *last, .primary = *primary, .replicas = replicas});
    }
  }
  if (auto why = map.index("CLUSTER SHARDS")) return std::move(*why);
  return map;
}

const ClusterNode* SlotMap::primary_for_slot(std::uint16_t slot) const noexcept {
  if (slot >= owner_.size()) return nullptr;
  const std::int32_t o = owner_[slot];
  if (o >= 0) return &ranges_[static_cast<std::size_t>(o)].primary;
  if (o <= -2) return &moved_[static_cast<std::size_t>(-o - 2)];
  return nullptr;
}

std::vector<ClusterNode> SlotMap::primaries() const {
  std::vector<ClusterNode> out;
  for (const SlotRange& r : ranges_)
    if (std::find(out.begin(), out.end(), r.primary) == out.end()) out.push_back(r.primary);
  return out;
}

std::size_t SlotMap::served_slots() const noexcept {
  return static_cast<std::size_t>(std::count_if(owner_.begin(), owner_.end(), [](std::int32_t o) { return o != -1; }));
}

void SlotMap::apply_moved(const Redirect& redirect, std::string_view sender_host) {
  if (owner_.empty()) owner_.assign(cluster_slot_count, -1);
  if (redirect.slot >= cluster_slot_count) return;
  ClusterNode node{
      .host = redirect.host.empty() ? std::string(sender_host) : redirect.host, .port = redirect.port, .id = {}};
  auto it = std::find_if(moved_.begin(), moved_.end(),
                         [&](const ClusterNode& n) { return n.host == node.host && n.port == node.port; });
  if (it == moved_.end()) it = moved_.insert(moved_.end(), std::move(node));
  owner_[redirect.slot] = -2 - static_cast<std::int32_t>(it - moved_.begin());
}

// ---- Decisions ----

HaDecision after_error_kind(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::readonly:
    case ErrorKind::masterdown:
      return HaDecision{
          .step = HaStep::reconnect_and_retry, .redirect = {}, .refresh_map = true, .drop_connection = true};
    case ErrorKind::clusterdown:
      return HaDecision{.step = HaStep::retry_later, .redirect = {}, .refresh_map = true, .drop_connection = false};
    case ErrorKind::loading:
    case ErrorKind::tryagain:
    case ErrorKind::busy:
      return HaDecision{.step = HaStep::retry_later, .redirect = {}, .refresh_map = false, .drop_connection = false};
    default:
      return HaDecision{};
  }
}

HaDecision after_error(std::string_view error, std::string_view sender_host, int redirects) {
  ErrorInfo info = classify_error(error);
  if (info.kind != ErrorKind::moved && info.kind != ErrorKind::ask) return after_error_kind(info.kind);
  if (!info.redirect) return HaDecision{};
  // Redirected again and again: the slot is moving (a resharding between its
  // MIGRATING/IMPORTING steps, or maps that disagree until gossip settles).
  // No redirect ran the command, so it is retried later on a fresh map.
  if (redirects >= max_redirects)
    return HaDecision{.step = HaStep::retry_later, .redirect = {}, .refresh_map = true, .drop_connection = false};
  Redirect to = std::move(*info.redirect);
  if (to.host.empty()) to.host = std::string(sender_host);
  const bool moved = info.kind == ErrorKind::moved;
  return HaDecision{.step = moved ? HaStep::follow_moved : HaStep::follow_ask,
                    .redirect = std::move(to),
                    .refresh_map = moved,
                    .drop_connection = false};
}

void push_asking(Request& request) { request.push({"ASKING"}); }

}  // namespace dlock::detail::redis_proto
