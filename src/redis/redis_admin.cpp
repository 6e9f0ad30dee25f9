// RedisAdmin and RedlockAdmin: list, inspect and force-release the locks on
// Redis with plain commands (SCAN, MULTI/EXEC of reads) and the library's own
// release script. No Lua of its own: the key layouts come from
// detail/redis_key_roles.hpp, the release from detail/redis_client.hpp.
#include <dlock/redis_admin.hpp>

#include <dlock/detail/redis_client.hpp>
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_key_roles.hpp>
#include <dlock/detail/redis_primitive_calls.hpp>
#include <dlock/error.hpp>
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <thread>
#include <utility>

#include <fmt/format.h>

namespace dlock {

using detail::RedisClient;
using detail::RedisKeyRole;
using detail::RedisValue;

std::string_view kind_name(RedisLockKind kind) noexcept {
  switch (kind) {
    case RedisLockKind::mutex:
      return "mutex";
    case RedisLockKind::rw:
      return "rw";
    case RedisLockKind::semaphore:
      return "semaphore";
    case RedisLockKind::fair_queue:
      return "fair-queue";
    case RedisLockKind::election:
      return "election";
  }
  return "?";
}

namespace {

constexpr std::size_t batch_names = 250;  // names per MULTI/EXEC (about 2,000 commands)
constexpr std::size_t role_count = detail::redis_key_role_count;
using RoleSet = std::array<bool, role_count>;

bool has(const RoleSet& s, RedisKeyRole r) { return s[static_cast<std::size_t>(r)]; }

[[noreturn]] void unexpected(const RedisClient& c, std::string_view what) {
  throw ServerError(fmt::format("dlock: unexpected reply to {} from Redis at {}", what, c.endpoint()));
}

// The roles each kind reads; the first is the holder's key.
std::vector<RedisKeyRole> roles_of(RedisLockKind kind) {
  using R = RedisKeyRole;
  switch (kind) {
    case RedisLockKind::mutex:
      return {R::lock, R::fence};
    case RedisLockKind::fair_queue:
      return {R::lock, R::fence, R::fair_queue, R::fair_deadlines};
    case RedisLockKind::rw:
      return {R::rw_writer, R::fence, R::rw_readers, R::rw_waiting, R::rw_tokens};
    case RedisLockKind::semaphore:
      return {R::sem_permits, R::fence, R::sem_count, R::sem_tokens};
    case RedisLockKind::election:
      return {R::leader, R::fence, R::leader_info};
  }
  return {};
}

// The kinds whose keys are among `roles` (a fencing counter alone is none).
std::vector<RedisLockKind> kinds_of(const RoleSet& roles) {
  using R = RedisKeyRole;
  std::vector<RedisLockKind> out;
  const bool fair = has(roles, R::fair_queue) || has(roles, R::fair_deadlines);
  if (fair) {
    out.push_back(RedisLockKind::fair_queue);
  } else if (has(roles, R::lock)) {
    out.push_back(RedisLockKind::mutex);
  }
  if (has(roles, R::rw_writer) || has(roles, R::rw_readers) || has(roles, R::rw_waiting))
    out.push_back(RedisLockKind::rw);
  if (has(roles, R::sem_permits) || has(roles, R::sem_count)) out.push_back(RedisLockKind::semaphore);
  if (has(roles, R::leader) || has(roles, R::leader_info)) out.push_back(RedisLockKind::election);
  return out;
}

enum class Shape { string, zset, hash };
Shape shape_of(RedisKeyRole r) {
  using R = RedisKeyRole;
  switch (r) {
    case R::rw_readers:
    case R::sem_permits:
    case R::fair_queue:
    case R::fair_deadlines:
      return Shape::zset;
    case R::leader_info:
    case R::rw_tokens:
    case R::sem_tokens:
      return Shape::hash;
    default:
      return Shape::string;
  }
}

// What one key holds, read inside the batch's MULTI.
struct KeyValue {
  std::string type = "none";
  std::optional<std::string> str;                          // string keys
  long long pttl = -2;                                     // string keys
  std::vector<std::pair<std::string, std::string>> pairs;  // zset member/score, hash field/value
};

// One name's reads in a batch: which roles, and what they found.
struct Read {
  std::string name;
  std::vector<RedisKeyRole> roles;
  std::map<RedisKeyRole, KeyValue> values;
  long long now_ms = 0;  // the server clock (TIME) of the transaction that read it
  std::string node;      // the server that answered (node_name)
};

std::size_t commands_for(Shape s) { return s == Shape::string ? 3 : 2; }

void push_reads(detail::redis_proto::Request& req, std::string_view prefix, const Read& r) {
  for (const RedisKeyRole role : r.roles) {
    const std::string key = detail::redis_role_key(prefix, r.name, role);
    req.push({"TYPE", key});
    switch (shape_of(role)) {
      case Shape::string:
        req.push({"GET", key});
        req.push({"PTTL", key});
        break;
      case Shape::zset:
        req.push({"ZRANGE", key, "0", "-1", "WITHSCORES"});
        break;
      case Shape::hash:
        req.push({"HGETALL", key});
        break;
    }
  }
}

std::vector<std::pair<std::string, std::string>> pairs_of(const RedisValue& v) {
  std::vector<std::pair<std::string, std::string>> out;
  if (v.type != RedisValue::Type::array) return out;
  for (std::size_t i = 0; i + 1 < v.elements.size(); i += 2) out.emplace_back(v.elements[i].str, v.elements[i + 1].str);
  return out;
}

long long to_number(std::string_view s) {
  long long v = 0;
  const auto dot = s.find('.');
  const std::string_view digits = s.substr(0, dot);
  (void)std::from_chars(digits.data(), digits.data() + digits.size(), v);
  return v;
}

// `request` pipelined on one pooled connection of `c`: a reply per command
// (error replies as values). A connection told READONLY / MASTERDOWN (a
// write queued on a replica) is dropped, as the client does.
std::vector<RedisValue> pipeline(RedisClient& c, detail::redis_proto::Request request, std::string_view what) {
  detail::RedisCall call{.what = std::string(what)};
  call.request = std::move(request);
  auto co = c.take();
  std::vector<RedisValue> replies;
  try {
    replies = co.handle.exec(std::move(call));
  } catch (...) {
    c.give_back(std::move(co), false);
    throw;
  }
  bool healthy = !co.handle.broken() && !detail::any_not_primary(replies);
  for (const auto& r : replies)
    if (r.type == RedisValue::Type::array && detail::any_not_primary(r.elements)) healthy = false;
  c.give_back(std::move(co), healthy);
  return replies;
}

// Each of `bodies` between MULTI and EXEC, all pipelined on one connection:
// EXEC's reply (an array of the replies, error replies as values) per body.
std::vector<RedisValue> exec_multis(RedisClient& c, std::span<const detail::redis_proto::Request> bodies,
                                    std::string_view what) {
  detail::redis_proto::Request request;
  for (const auto& body : bodies) {
    request.push({"MULTI"});
    request.append(body);
    request.push({"EXEC"});
  }
  std::vector<RedisValue> replies = pipeline(c, std::move(request), what);
  for (const auto& r : replies) detail::throw_if_error(r, c.endpoint(), what);
  std::vector<RedisValue> out;
  out.reserve(bodies.size());
  std::size_t at = 0;
  for (const auto& body : bodies) {
    at += body.commands() + 2;
    if (at > replies.size() || replies[at - 1].type != RedisValue::Type::array) unexpected(c, "MULTI/EXEC");
    out.push_back(std::move(replies[at - 1]));
  }
  return out;
}

RedisValue exec_multi(RedisClient& c, const detail::redis_proto::Request& body, std::string_view what) {
  return std::move(exec_multis(c, std::span(&body, 1), what).front());
}

// The server that answers on `c`: "host:port" (Sentinel: of the primary
// found), or the socket path.
std::string node_name(const RedisClient& c) {
  if (c.options().sentinel)
    if (const auto at = c.current_server()) return fmt::format("{}:{}", at->host, at->port);
  return c.endpoint();
}

// The node serving `name`: on a cluster the primary of its slot (every key
// of a name hashes on {name}), else `root` itself.
RedisClient& node_for(RedisClient& root, std::string_view name) {
  if (auto* cluster = root.cluster())
    return cluster->node_for_key(detail::redis_role_key(root.options().key_prefix, name, RedisKeyRole::lock));
  return root;
}

// Every primary: on a cluster those of a freshly read slot map, else `root`.
std::vector<RedisClient*> every_primary(RedisClient& root) {
  if (auto* cluster = root.cluster()) return cluster->primaries();
  return {&root};
}

// Reads every role of every entry in `reads`, all served by `c`: batches of
// batch_names names per round trip, one MULTI/EXEC per batch (a consistent
// snapshot), or with `per_slot` (a cluster node: a transaction may not span
// slots) one MULTI/EXEC per slot, pipelined.
void read_all(RedisClient& c, std::span<Read* const> reads, bool per_slot) {
  const std::string& prefix = c.options().key_prefix;
  const std::string node = node_name(c);
  for (std::size_t begin = 0; begin < reads.size(); begin += batch_names) {
    const std::size_t end = std::min(reads.size(), begin + batch_names);
    std::map<std::uint16_t, std::vector<Read*>> by_slot;
    for (std::size_t i = begin; i < end; ++i) {
      const std::uint16_t slot =
          per_slot ? detail::redis_proto::hash_slot(detail::redis_role_key(prefix, reads[i]->name, RedisKeyRole::lock))
                   : 0;
      by_slot[slot].push_back(reads[i]);
    }
    std::vector<detail::redis_proto::Request> bodies;
    for (const auto& [slot, group] : by_slot) {
      detail::redis_proto::Request& body = bodies.emplace_back();
      body.push({"TIME"});
      for (const Read* r : group) push_reads(body, prefix, *r);
    }
    const std::vector<RedisValue> execs = exec_multis(c, bodies, "the administration reads");
    std::size_t b = 0;
    for (const auto& [slot, group] : by_slot) {
      const RedisValue& exec = execs[b++];
      if (exec.elements.empty() || exec.elements[0].type != RedisValue::Type::array ||
          exec.elements[0].elements.size() != 2)
        unexpected(c, "EXEC");
      const long long now_ms =
          to_number(exec.elements[0].elements[0].str) * 1000 + to_number(exec.elements[0].elements[1].str) / 1000;
      std::size_t at = 1;
      for (Read* r : group) {
        r->now_ms = now_ms;
        r->node = node;
        for (const RedisKeyRole role : r->roles) {
          const std::size_t n = commands_for(shape_of(role));
          if (at + n > exec.elements.size()) unexpected(c, "EXEC");
          KeyValue v;
          const RedisValue& type = exec.elements[at];
          if (type.type == RedisValue::Type::status || type.type == RedisValue::Type::string) v.type = type.str;
          const RedisValue& read = exec.elements[at + 1];
          switch (shape_of(role)) {
            case Shape::string:
              if (v.type == "string" && read.type == RedisValue::Type::string) v.str = read.str;
              if (exec.elements[at + 2].type == RedisValue::Type::integer) v.pttl = exec.elements[at + 2].integer;
              break;
            case Shape::zset:
              if (v.type == "zset") v.pairs = pairs_of(read);
              break;
            case Shape::hash:
              if (v.type == "hash") v.pairs = pairs_of(read);
              break;
          }
          r->values[role] = std::move(v);
          at += n;
        }
      }
    }
  }
}

// read_all() of `reads` on the nodes serving their names (one node unless
// `root` is a cluster). A failure on a cluster refreshes its slot map (a
// MOVED: the next call reaches the new owner) before it is thrown.
void read_routed(RedisClient& root, std::vector<Read>& reads) {
  std::vector<std::pair<RedisClient*, std::vector<Read*>>> groups;
  for (Read& r : reads) {
    RedisClient* n = &node_for(root, r.name);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == n; });
    if (it == groups.end()) it = groups.insert(groups.end(), {n, {}});
    it->second.push_back(&r);
  }
  try {
    for (const auto& [n, group] : groups) read_all(*n, group, root.cluster() != nullptr);
  } catch (const Error&) {
    if (auto* cluster = root.cluster()) {
      try {
        cluster->refresh();
      } catch (const Error&) {  // the error that stopped the reads says more
      }
    }
    throw;
  }
}

// The live members of lease set `v`; with `tokens` (its token hash), each with its token.
std::vector<RedisLeaseInfo> leases(const KeyValue& v, long long now_ms, const KeyValue* tokens = nullptr) {
  std::map<std::string, std::string> token_of;
  if (tokens)
    for (const auto& [owner, token] : tokens->pairs) token_of.emplace(owner, token);
  std::vector<RedisLeaseInfo> out;
  for (const auto& [member, score] : v.pairs) {
    const long long left = to_number(score) - now_ms;
    if (left <= 0) continue;
    RedisLeaseInfo l{.owner = member, .ttl_ms = left, .token = std::nullopt};
    if (const auto it = token_of.find(member); it != token_of.end()) l.token = it->second;
    out.push_back(std::move(l));
  }
  return out;
}

// The state of `kind` for the name of `r` (whose reads include roles_of(kind)).
RedisLockInfo info_of(const Read& r, RedisLockKind kind, std::string_view prefix) {
  const long long now_ms = r.now_ms;
  using R = RedisKeyRole;
  const auto value = [&](R role) -> const KeyValue& {
    static const KeyValue none;
    const auto it = r.values.find(role);
    return it == r.values.end() ? none : it->second;
  };
  RedisLockInfo info;
  info.name = r.name;
  info.kind = kind;
  info.node = r.node;
  const R main = roles_of(kind).front();
  info.key = detail::redis_role_key(prefix, r.name, main);
  const KeyValue& holder = value(main);
  const char* expected = shape_of(main) == Shape::zset ? "zset" : "string";
  if (holder.type != "none" && holder.type != expected) info.wrong_type = holder.type;
  if (holder.str && holder.pttl != -2) {
    info.owner = holder.str;
    info.ttl_ms = holder.pttl;
  }
  if (const KeyValue& f = value(R::fence); f.str) info.token = f.str;
  switch (kind) {
    case RedisLockKind::mutex:
      break;
    case RedisLockKind::fair_queue: {
      std::map<std::string, long long> deadline;
      for (const auto& l : leases(value(R::fair_deadlines), now_ms)) deadline[l.owner] = l.ttl_ms;
      for (const auto& [member, arrival] : value(R::fair_queue).pairs) {
        (void)arrival;  // ZRANGE gave them in arrival order
        if (const auto it = deadline.find(member); it != deadline.end())
          info.queue.push_back(RedisLeaseInfo{.owner = member, .ttl_ms = it->second, .token = std::nullopt});
      }
      break;
    }
    case RedisLockKind::rw:
      info.readers = leases(value(R::rw_readers), now_ms, &value(R::rw_tokens));
      if (const KeyValue& w = value(R::rw_waiting); w.str && w.pttl != -2)
        info.waiting_writer = RedisLeaseInfo{.owner = *w.str, .ttl_ms = w.pttl, .token = std::nullopt};
      break;
    case RedisLockKind::semaphore:
      info.permits = leases(holder, now_ms, &value(R::sem_tokens));
      info.permit_count = value(R::sem_count).str;
      break;
    case RedisLockKind::election:
      if (info.owner) {
        for (const auto& [field, v] : value(R::leader_info).pairs) {
          if (field == "candidate") info.candidate = v;
          if (field == "term") info.term = v;
        }
      }
      break;
  }
  return info;
}

bool present(const RedisLockInfo& i) {
  return i.held() || !i.queue.empty() || i.waiting_writer || !i.wrong_type.empty() || i.permit_count;
}

// SCAN MATCH `pattern` (COUNT 1000), each key to `on_key` (a key may come
// more than once); stops early when `on_key` returns false.
void scan(RedisClient& c, const std::string& pattern, const std::function<bool(std::string)>& on_key) {
  std::string cursor = "0";
  do {
    RedisValue r = c.command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
    detail::throw_if_error(r, c.endpoint(), "SCAN");
    if (r.type != RedisValue::Type::array || r.elements.size() != 2 || r.elements[1].type != RedisValue::Type::array)
      unexpected(c, "SCAN");
    cursor = r.elements[0].str;
    for (auto& k : r.elements[1].elements)
      if (!on_key(std::move(k.str))) return;
  } while (cursor != "0");
}

}  // namespace

// ---- RedisAdmin ----

RedisAdmin::RedisAdmin(RedisOptions options)
    : client_(std::make_shared<RedisClient>((detail::validate(options), std::move(options)))) {}

RedisAdmin::RedisAdmin(std::string_view uri, RedisOptions base) : RedisAdmin(parse_redis_uri(uri, std::move(base))) {}

RedisAdmin::RedisAdmin(const RedisBackend& backend) {
  auto copy = std::make_shared<RedisBackend>(backend);
  detail::RedisClient* node = &copy->node();
  client_ = std::shared_ptr<RedisClient>(std::move(copy), node);
}

RedisAdmin::~RedisAdmin() = default;
RedisAdmin::RedisAdmin(RedisAdmin&&) noexcept = default;
RedisAdmin& RedisAdmin::operator=(RedisAdmin&&) noexcept = default;

const std::string& RedisAdmin::endpoint() const noexcept { return client_->endpoint(); }
const std::string& RedisAdmin::prefix() const noexcept { return client_->options().key_prefix; }

std::string RedisAdmin::reached() const {
  const auto at = client_->options().sentinel ? client_->current_server() : std::nullopt;
  if (!at) return client_->endpoint();
  return fmt::format("{}:{} ({})", at->host, at->port, client_->endpoint());
}

RedisLockList RedisAdmin::list(const RedisListOptions& options) {
  RedisLockList out;
  std::map<std::string, RoleSet> names;
  std::set<std::string> locks;  // names with a key other than a fencing counter
  const std::string pattern = detail::redis_glob_escape(prefix()) + "{" + options.match + "}*";
  // Every primary (a cluster's SCAN sees its own node's keys only); stop
  // scanning once more locks than the bound were seen.
  for (RedisClient* node : every_primary(*client_)) {
    if (out.truncated) break;
    scan(*node, pattern, [&](std::string key) {
      const auto k = detail::classify_redis_key(prefix(), key);
      // A token hash goes with its lease set (roles_of reads it): not a lock of its own.
      if (!k || k->role == RedisKeyRole::rw_tokens || k->role == RedisKeyRole::sem_tokens) return true;
      names[k->name][static_cast<std::size_t>(k->role)] = true;
      if (k->role != RedisKeyRole::fence) locks.insert(k->name);
      out.truncated = options.limit != 0 && locks.size() > options.limit;
      return !out.truncated;
    });
  }
  std::vector<std::pair<Read, RedisLockKind>> reads;
  for (const auto& [name, roles] : names)
    for (const RedisLockKind kind : kinds_of(roles)) reads.emplace_back(Read{name, roles_of(kind), {}, 0, {}}, kind);
  if (options.limit != 0 && reads.size() > options.limit) {
    reads.resize(options.limit);
    out.truncated = true;
  }
  std::vector<Read> batch;
  batch.reserve(reads.size());
  for (auto& r : reads) batch.push_back(std::move(r.first));
  read_routed(*client_, batch);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    RedisLockInfo info = info_of(batch[i], reads[i].second, prefix());
    if (present(info)) out.locks.push_back(std::move(info));
  }
  return out;
}

std::vector<RedisLockInfo> RedisAdmin::inspect(std::string_view name) {
  std::vector<Read> reads(1);
  reads[0].name = std::string(name);
  for (std::size_t r = 0; r < role_count; ++r) reads[0].roles.push_back(static_cast<RedisKeyRole>(r));
  read_routed(*client_, reads);
  RoleSet roles{};
  for (const auto& [role, v] : reads[0].values)
    if (v.type != "none") roles[static_cast<std::size_t>(role)] = true;
  std::vector<RedisLockInfo> out;
  for (const RedisLockKind kind : kinds_of(roles)) {
    RedisLockInfo info = info_of(reads[0], kind, prefix());
    if (present(info)) out.push_back(std::move(info));
  }
  return out;
}

std::vector<RedisLockInfo> RedisAdmin::inspect_mutexes(const std::vector<std::string>& names) {
  std::vector<Read> reads;
  reads.reserve(names.size());
  for (const auto& n : names) reads.push_back(Read{n, roles_of(RedisLockKind::mutex), {}, 0, {}});
  read_routed(*client_, reads);
  std::vector<RedisLockInfo> out;
  out.reserve(reads.size());
  for (const auto& r : reads) out.push_back(info_of(r, RedisLockKind::mutex, prefix()));
  return out;
}

RedisWaitRecords RedisAdmin::wait_records() {
  RedisWaitRecords out;
  const std::string pattern =
      detail::redis_glob_escape(prefix()) + detail::redis_glob_escape(detail::redis_waiting_infix) + "*";
  for (RedisClient* node : every_primary(*client_)) {
    std::set<std::string> unique;
    scan(*node, pattern, [&](std::string key) {
      unique.insert(std::move(key));
      return true;
    });
    // Pipelined GETs, not MGET: on a cluster node the keys are in many slots.
    const std::vector<std::string> keys(unique.begin(), unique.end());
    constexpr std::size_t batch = 500;
    for (std::size_t begin = 0; begin < keys.size(); begin += batch) {
      const std::size_t end = std::min(keys.size(), begin + batch);
      detail::redis_proto::Request request;
      for (std::size_t i = begin; i < end; ++i) request.push({"GET", keys[i]});
      const std::vector<RedisValue> replies = pipeline(*node, std::move(request), "GET of wait records");
      if (replies.size() != end - begin) unexpected(*node, "GET");
      for (const auto& v : replies) {
        detail::throw_if_error(v, node->endpoint(), "GET of wait records");
        if (v.type != RedisValue::Type::string) continue;  // expired since the SCAN
        if (auto w = detail::decode_wait_record(v.str)) {
          out.records.push_back(std::move(*w));
        } else {
          ++out.malformed;
        }
      }
    }
  }
  return out;
}

std::optional<RedisReleased> RedisAdmin::force_release(std::string_view name, std::optional<std::string_view> owner) {
  detail::validate_redis_lock_name(name);
  const std::vector<std::string> names{std::string(name)};
  // One read, one owner-checked release of the holder read: if the lock changed
  // hands in between, the release deletes nothing and the call reports nullopt
  // (reading again would release a holder the caller never saw).
  const RedisLockInfo s = inspect_mutexes(names).at(0);
  if (!s.wrong_type.empty())
    throw ServerError(fmt::format("dlock: the key of lock '{}' on Redis at {} holds a {}, not a dlock lock", name,
                                  s.node, s.wrong_type));
  if (!s.owner || (owner && *s.owner != *owner)) return std::nullopt;
  if (client_->release(client_->keys(name), *s.owner))
    return RedisReleased{.owner = *s.owner, .ttl_ms = s.ttl_ms, .key = {}, .token = std::nullopt};
  return std::nullopt;
}

std::vector<RedisReleased> RedisAdmin::force_release_leases(std::string_view name, RedisLockKind kind,
                                                            std::optional<std::string_view> owner) {
  detail::validate_redis_lock_name(name);
  if (kind == RedisLockKind::mutex || kind == RedisLockKind::fair_queue) {
    auto released = force_release(name, owner);
    if (!released) return {};
    released->key = detail::redis_role_key(prefix(), name, RedisKeyRole::lock);
    return {std::move(*released)};
  }
  if (kind != RedisLockKind::rw && kind != RedisLockKind::semaphore)
    throw InvalidArgument(
        fmt::format("dlock: force_release_leases of '{}': a {} is not released by force", name, kind_name(kind)));
  std::optional<RedisLockInfo> s;
  for (auto& l : inspect(name))
    if (l.kind == kind) s = std::move(l);
  if (!s) return {};
  if (!s->wrong_type.empty())
    throw ServerError(fmt::format("dlock: the key of lock '{}' on Redis at {} holds a {}, not a dlock lock", name,
                                  s->node, s->wrong_type));
  const auto mine = [&](const std::string& o) { return !owner || o == *owner; };
  const detail::RedisPrimitiveKeys k = detail::redis_primitive_keys(prefix(), name);
  RedisClient& node = node_for(*client_, name);
  std::vector<RedisReleased> out;
  // The writer's key is a mutex key: the mutex's release script, as RwLock's writer releases it.
  if (kind == RedisLockKind::rw && s->owner && mine(*s->owner) &&
      node.release(detail::RedisKeys{k.rw_writer, k.fence, k.channel}, *s->owner))
    out.push_back(RedisReleased{.owner = *s->owner, .ttl_ms = s->ttl_ms, .key = k.rw_writer, .token = std::nullopt});
  for (const RedisLeaseInfo& l : kind == RedisLockKind::rw ? s->readers : s->permits) {
    if (!mine(l.owner)) continue;
    const detail::PrimitiveCall c =
        kind == RedisLockKind::rw ? detail::reader_release_call(k, l.owner) : detail::permit_release_call(k, l.owner);
    if (detail::run_release_call(node, c, k.channel))
      out.push_back(RedisReleased{.owner = l.owner, .ttl_ms = l.ttl_ms, .key = c.key, .token = l.token});
  }
  return out;
}

std::optional<std::string> RedisAdmin::set_permit_count(std::string_view name, std::optional<std::uint64_t> count) {
  detail::validate_redis_lock_name(name);
  const std::string key = detail::redis_role_key(prefix(), name, RedisKeyRole::sem_count);
  const std::string value = count ? std::to_string(*count) : std::string();
  detail::redis_proto::Request body;
  body.push({"GET", key});
  if (count) {
    body.push({"SET", key, value});
  } else {
    body.push({"DEL", key});
  }
  RedisClient& node = node_for(*client_, name);
  const RedisValue exec = exec_multi(node, body, "the permit count's update");
  if (exec.elements.size() != 2) unexpected(node, "EXEC");
  if (exec.elements[0].type == RedisValue::Type::string) return exec.elements[0].str;
  return std::nullopt;
}

// ---- RedlockAdmin ----

RedlockAdmin::RedlockAdmin(std::vector<RedisOptions> nodes, std::string_view prefix) {
  if (nodes.empty()) throw InvalidArgument("dlock: RedlockAdmin needs at least one node");
  nodes_.reserve(nodes.size());
  for (auto& o : nodes) {
    if (!prefix.empty()) o.key_prefix = std::string(prefix);
    nodes_.emplace_back(std::move(o));
  }
}

RedlockAdmin::RedlockAdmin(const RedlockBackend& backend)
    : RedlockAdmin(backend.options().nodes, backend.options().key_prefix) {}

std::vector<std::string> RedlockAdmin::endpoints() const {
  std::vector<std::string> out;
  for (const auto& n : nodes_) out.push_back(n.endpoint());
  return out;
}

namespace {

template <class T, class Fn>
std::vector<RedlockNodeResult<T>> on_every_node(std::vector<RedisAdmin>& nodes, const Fn& fn) {
  std::vector<RedlockNodeResult<T>> out(nodes.size());
  std::vector<std::thread> threads;
  threads.reserve(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    out[i].endpoint = nodes[i].endpoint();
    threads.emplace_back([&, i] {
      try {
        out[i].value.emplace(fn(nodes[i]));
      } catch (const std::exception& e) {
        out[i].error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace

std::vector<RedlockNodeResult<RedisLockList>> RedlockAdmin::list(const RedisListOptions& options) {
  return on_every_node<RedisLockList>(nodes_, [&](RedisAdmin& a) { return a.list(options); });
}

std::vector<RedlockNodeResult<std::vector<RedisLockInfo>>> RedlockAdmin::inspect_mutexes(
    const std::vector<std::string>& names) {
  return on_every_node<std::vector<RedisLockInfo>>(nodes_, [&](RedisAdmin& a) { return a.inspect_mutexes(names); });
}

std::vector<RedlockNodeResult<std::optional<RedisReleased>>> RedlockAdmin::force_release(
    std::string_view name, std::optional<std::string_view> owner) {
  return on_every_node<std::optional<RedisReleased>>(nodes_,
                                                     [&](RedisAdmin& a) { return a.force_release(name, owner); });
}

}  // namespace dlock
