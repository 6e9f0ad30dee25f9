// The Redis node client: the lock operations over a pool of transport links,
// reply parsing and error mapping, ServerFacts.
#include <dlock/detail/redis_client.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <exception>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_sentinel_client.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {
bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
}  // namespace

bool not_primary(const RedisValue& r) {
  return r.is_error() && redis_proto::after_error_kind(redis_proto::classify_error(r.str).kind).drop_connection;
}
bool any_not_primary(const std::vector<RedisValue>& replies) {
  return std::any_of(replies.begin(), replies.end(), not_primary);
}

EvictionVerdict judge_eviction_policy(const RedisValue& r, std::string_view endpoint) {
  using Kind = EvictionVerdict::Kind;
  if (r.is_error()) {
    if (starts_with(r.str, "NOAUTH")) throw_if_error(r, endpoint, "CONFIG GET maxmemory-policy");
    return {Kind::unknown,
            fmt::format("cannot check that Redis at {} never evicts lock keys: it refused CONFIG GET "
                        "maxmemory-policy ({}); make sure its maxmemory-policy is noeviction (docs/redis.md), "
                        "or set RedisOptions eviction_check = EvictionCheck::off to skip this check",
                        endpoint, r.str)};
  }
  if (r.type != RedisValue::Type::array || r.elements.size() != 2 || r.elements[1].type != RedisValue::Type::string)
    return {Kind::unknown,
            fmt::format("cannot check that Redis at {} never evicts lock keys: it gave no maxmemory-policy to "
                        "CONFIG GET; make sure its maxmemory-policy is noeviction (docs/redis.md), or set "
                        "RedisOptions eviction_check = EvictionCheck::off to skip this check",
                        endpoint)};
  const std::string& policy = r.elements[1].str;
  if (policy == "noeviction") return {Kind::safe, {}};
  return {Kind::evicts,
          fmt::format("Redis at {} has maxmemory-policy {}: when it reaches maxmemory it may delete lock keys "
                      "before their TTL, and a second owner could then acquire a held lock. Set "
                      "maxmemory-policy noeviction on that server (CONFIG SET maxmemory-policy noeviction, and in "
                      "redis.conf) or use a Redis server of its own for locks; to accept the risk, set "
                      "RedisOptions eviction_check = EvictionCheck::warn (docs/redis.md)",
                      endpoint, policy)};
}

std::string parse_run_id(std::string_view info) {
  constexpr std::string_view field = "run_id:";
  for (std::size_t pos = 0; pos < info.size();) {
    const auto end = std::min(info.find('\n', pos), info.size());
    std::string_view line = info.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (starts_with(line, field)) return std::string(line.substr(field.size()));
    pos = end + 1;
  }
  return {};
}

// ---- ServerFacts ----

std::string ServerFacts::run_id() const {
  std::lock_guard lk(mu_);
  return run_id_;
}

void ServerFacts::set_run_id(std::string id) {
  std::lock_guard lk(mu_);
  run_id_ = std::move(id);
}

void throw_if_error(const RedisValue& reply, std::string_view endpoint, std::string_view what) {
  if (!reply.is_error()) return;
  const std::string_view m = reply.str;
  if (starts_with(m, "NOAUTH"))
    throw ServerError(fmt::format("dlock: Redis at {} requires authentication during {} ({}); set RedisOptions "
                                  "password (and username for an ACL user)",
                                  endpoint, what, m),
                      errc::auth);
  if (starts_with(m, "WRONGPASS") || starts_with(m, "ERR invalid password") || starts_with(m, "ERR AUTH") ||
      starts_with(m, "ERR invalid username"))
    throw ServerError(fmt::format("dlock: Redis at {} refused authentication ({}); check RedisOptions username "
                                  "and password",
                                  endpoint, m),
                      errc::auth);
  if (starts_with(m, "NOPERM"))
    throw ServerError(fmt::format("dlock: the Redis user is not allowed to run {} at {} ({}); grant it the "
                                  "commands and keys dlock uses (see docs/redis.md)",
                                  what, endpoint, m),
                      errc::auth);
  const auto has = [&](std::string_view code) {
    return starts_with(m, code) || m.find(code) != std::string_view::npos;
  };
  // READONLY, MASTERDOWN, LOADING, TRYAGAIN, CLUSTERDOWN, BUSY: a failover or
  // a server that cannot answer now. Refused before any effect: retried.
  if (const auto kind = redis_proto::classify_error(m).kind; redis_proto::is_transient(kind))
    throw ConnectionError(fmt::format(
        "dlock: {} was refused by Redis at {}: {} ({}); nothing was done on the server, and a blocking acquire "
        "retries it{}",
        what, endpoint, redis_proto::describe(kind), m,
        redis_proto::after_error_kind(kind).drop_connection
            ? " on a new connection (if this lasts, dlock reaches a replica: point it at the primary)"
            : ""));
  if (starts_with(m, "OOM") || m.find("OOM command not allowed") != std::string_view::npos)
    throw ServerError(
        fmt::format("dlock: {} failed: Redis at {} is out of memory ({}); raise maxmemory or free "
                    "memory",
                    what, endpoint, m));
  if (has("WRONGTYPE"))
    throw ServerError(
        fmt::format("dlock: {} failed at {}: a dlock key holds the wrong type ({}); another "
                    "program uses the same key, change RedisOptions key_prefix or the lock name",
                    what, endpoint, m));
  if (starts_with(m, "NOSCRIPT"))
    throw ServerError(
        fmt::format("dlock: {} failed at {}: the server does not know the script even after "
                    "EVAL ({})",
                    what, endpoint, m));
  throw ServerError(fmt::format("dlock: {} failed at {}: {}", what, endpoint, m));
}

AcquireReply parse_acquire_reply(const RedisValue& r, std::string_view endpoint, std::string_view lock_key) {
  if (r.is_error()) throw_if_error(r, endpoint, fmt::format("acquire of '{}'", lock_key));
  if (r.type == RedisValue::Type::array && r.elements.size() == 2 && r.elements[0].type == RedisValue::Type::integer) {
    const RedisValue& second = r.elements[1];
    if (r.elements[0].integer == 1 && second.type == RedisValue::Type::string) {
      AcquireReply out;
      out.acquired = true;
      const auto [p, ec] = std::from_chars(second.str.data(), second.str.data() + second.str.size(), out.token);
      if (ec == std::errc{} && p == second.str.data() + second.str.size()) return out;
    } else if (r.elements[0].integer == 0 && second.type == RedisValue::Type::integer) {
      AcquireReply out;
      if (second.integer >= 0) out.holder_ttl = std::chrono::milliseconds(second.integer);
      return out;
    }
  }
  throw ServerError(
      fmt::format("dlock: unexpected reply to the acquire script for '{}' from Redis at {}", lock_key, endpoint));
}

bool parse_flag_reply(const RedisValue& r, std::string_view endpoint, std::string_view op, std::string_view key) {
  if (r.is_error()) throw_if_error(r, endpoint, fmt::format("{} of '{}'", op, key));
  if (r.type != RedisValue::Type::integer || (r.integer != 0 && r.integer != 1))
    throw ServerError(
        fmt::format("dlock: unexpected reply to the {} script for '{}' from Redis at {}", op, key, endpoint));
  return r.integer == 1;
}

ReleaseReply parse_release_reply(const RedisValue& r, std::string_view endpoint, std::string_view lock_key) {
  if (r.type == RedisValue::Type::array && r.elements.size() == 2 && r.elements[0].type == RedisValue::Type::integer &&
      r.elements[0].integer == 1 && r.elements[1].type == RedisValue::Type::string)
    return ReleaseReply{.released = true, .publish_error = r.elements[1].str};
  return ReleaseReply{.released = parse_flag_reply(r, endpoint, "release", lock_key), .publish_error = {}};
}

void ServerFacts::note_publish_refusal(std::string_view endpoint, std::string_view channel,
                                       std::string_view error) noexcept {
  try {
    warnings_.warn(publish_kind,
                   fmt::format("Redis at {} refused the release script's PUBLISH on '{}' ({}); the releases succeed, "
                               "but waiters are not woken by them and fall back to their backoff delay: grant the "
                               "ACL user the channels of the key prefix (&<prefix>*, see docs/redis.md)",
                               endpoint, channel, error));
  } catch (...) {  // out of memory: the release itself succeeded
  }
}

// ---- RedisClient ----

RedisClient::RedisClient(RedisOptions options, RedisLinkSetup setup)
    : options_(std::move(options)),
      endpoint_(redis_endpoint(options_)),
      setup_(setup),
      pool_(options_.pool_size, [](const RedisLink& l) { return !l.broken(); }) {
  setup_.facts = &facts_;
  if (options_.sentinel) sentinel_ = std::make_unique<SentinelClient>(options_);
  if (options_.cluster) cluster_ = std::make_unique<ClusterClient>(options_, setup);
}

RedisClient::~RedisClient() {
  detach_async_route();
  sentinel_.reset();
  cluster_.reset();
}  // stops the +switch-master watch before the pool goes

RedisLink RedisClient::open_link() {
  if (cluster_)  // fan_out (Redlock) takes from this pool directly: a cluster is not one server
    throw InvalidArgument(
        fmt::format("dlock: {} is a Redis Cluster, which routes each lock to its shard; it cannot "
                    "serve where one server is expected (a Redlock node): give Redlock independent "
                    "servers",
                    endpoint_));
  // A pooled link serves one caller at a time: the caller's own exchange
  // when it is idle (detail/redis_transport.hpp).
  RedisLinkSetup setup = setup_;
  setup.caller_io = true;
  if (!sentinel_) return RedisLink::open(options_, setup);
  // A failover announced retires every connection open before it.
  sentinel_->watch([this] { on_failover(); });
  return sentinel_->open(setup);
}

std::optional<RedisOptions> RedisClient::current_server() const {
  if (cluster_) return cluster_->any_node();
  if (!sentinel_) return options_;
  return sentinel_->last_primary();
}

std::uint64_t RedisClient::failovers_seen() const { return sentinel_ ? sentinel_->switches() : 0; }

RedisClient::Checkout RedisClient::take() {
  const auto wait = options_.connect_timeout + options_.command_timeout;
  auto c = pool_take(wait);
  if (!c)
    throw TimeoutError(
        fmt::format("dlock: all {} connections to Redis at {} stayed busy for {}; raise "
                    "RedisOptions pool_size or use fewer threads",
                    options_.pool_size, endpoint_, format_duration(wait)));
  return std::move(*c);
}

std::optional<RedisClient::Checkout> RedisClient::try_take() { return pool_take(std::chrono::nanoseconds(0)); }

std::optional<RedisClient::Checkout> RedisClient::pool_take(std::chrono::nanoseconds wait) {
  const auto until = saturating_add(std::chrono::steady_clock::now(), wait);
  // An idle link the server closed meanwhile is dropped here (check_idle),
  // before anything is written on it; at most pool_size of them.
  for (std::size_t dropped = 0;; ++dropped) {
    auto c = pool_.take(saturating_sub(until, std::chrono::steady_clock::now()), [&] { return open_link(); });
    if (!c || dropped >= options_.pool_size || c->handle.check_idle()) return c;
    pool_.give_back(std::move(*c), false);
  }
}

namespace {

// A checked-out link, given back when done: broken (and dropped) if it failed
// or if an exception left the middle of its use.
class Use {
 public:
  explicit Use(RedisClient& node) : node_(node), c_(node.take()), exceptions_(std::uncaught_exceptions()) {}
  ~Use() {
    // Decided before the call: its arguments may be evaluated in any order,
    // and the link is moved out by the first one (clang evaluates it first).
    const bool healthy = std::uncaught_exceptions() <= exceptions_ && !c_.handle.broken();
    node_.give_back(std::move(c_), healthy);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  RedisLink& link() noexcept { return c_.handle; }

 private:
  RedisClient& node_;
  RedisClient::Checkout c_;
  int exceptions_;
};

}  // namespace

std::vector<RedisValue> RedisClient::run_scripts(std::span<const redis_proto::ScriptCall> calls,
                                                 std::string_view what) {
  if (calls.empty()) return {};
  if (cluster_) return cluster_->run_scripts(calls, what);
  RedisClient* const self[] = {this};
  const std::vector<redis_proto::ScriptCall> batch(calls.begin(), calls.end());
  auto out = fan_out(self, std::span(&batch, 1), std::nullopt, what, {});
  // A server that is no longer the primary (a failover behind the name):
  // its connections are retired; once more on a new one, which resolves the
  // name again. Nothing was done by the refused calls.
  if (!out[0].error && any_not_primary(out[0].replies))
    out = fan_out(self, std::span(&batch, 1), std::nullopt, what, {});
  if (out[0].error) std::rethrow_exception(out[0].error);
  return std::move(out[0].replies);
}

std::vector<RedisOutcome> fan_out(std::span<RedisClient* const> nodes,
                                  std::span<const std::vector<redis_proto::ScriptCall>> batches,
                                  std::optional<std::chrono::milliseconds> timeout, std::string_view what,
                                  std::string_view deadline_name) {
  using redis_proto::ScriptForm;
  const std::size_t n = nodes.size();
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = saturating_add(std::chrono::steady_clock::now(), *timeout);
  std::vector<RedisOutcome> out(n);
  std::vector<std::optional<RedisClient::Checkout>> links(n);
  // One round: calls[i] (indices into batches[i]) to node i, all nodes at once:
  // every request is written (on this thread where the link is idle, else by
  // the I/O thread) before any reply is waited for.
  const auto round = [&](const std::vector<std::vector<std::size_t>>& calls, ScriptForm form) {
    RedisGather gather(n);
    std::vector<bool> here(n, false);
    for (std::size_t i = 0; i < n; ++i) {
      if (calls[i].empty() || out[i].error) {
        gather.slot(i)(RedisOutcome{});
        continue;
      }
      try {
        if (!links[i]) {
          if (deadline) {  // Redlock: never wait for a busy pool past the round's deadline
            links[i] = nodes[i]->try_take();
            if (!links[i]) {
              const auto left = saturating_sub(*deadline, std::chrono::steady_clock::now());
              auto c = nodes[i]->pool_take(left);
              if (!c)
                throw ConnectionError(
                    fmt::format("dlock: no free connection to Redis at {} within {} during {}; nothing was asked of it",
                                nodes[i]->endpoint(), deadline_name, what));
              links[i] = std::move(c);
            }
          } else {
            links[i] = nodes[i]->take();
          }
        }
        RedisCall call{.request = {},
                       .what = std::string(what),
                       .deadline = deadline,
                       .deadline_name = std::string(deadline_name)};
        for (std::size_t k : calls[i])
          (void)redis_proto::push_script_call(call.request, batches[i][k], links[i]->handle.shas(), form);
        if (links[i]->handle.begin_here(call)) {
          here[i] = true;
        } else {
          links[i]->handle.send(std::move(call), gather.slot(i));
        }
      } catch (...) {  // could not connect (or out of memory): this node's outcome
        gather.slot(i)(RedisOutcome{{}, std::current_exception(), {}});
      }
    }
    for (std::size_t i = 0; i < n; ++i)
      if (here[i]) gather.slot(i)(links[i]->handle.end_here());
    return gather.wait();
  };
  std::vector<std::vector<std::size_t>> first(n);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t k = 0; k < batches[i].size(); ++k) first[i].push_back(k);
  auto got = round(first, ScriptForm::evalsha);
  // NOSCRIPT (SCRIPT FLUSH, or a failover to a server without the script): once more as EVAL.
  std::vector<std::vector<std::size_t>> again(n);
  bool any = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (first[i].empty()) continue;
    out[i] = std::move(got[i]);
    if (out[i].error) continue;
    for (std::size_t k = 0; k < out[i].replies.size(); ++k)
      if (redis_proto::after_script_reply(out[i].replies[k], ScriptForm::evalsha) ==
          redis_proto::ScriptNext::resend_as_eval) {
        again[i].push_back(k);
        any = true;
      }
  }
  if (any) {
    auto second = round(again, ScriptForm::eval);
    for (std::size_t i = 0; i < n; ++i) {
      if (again[i].empty()) continue;
      if (second[i].error) {
        out[i] = std::move(second[i]);
        continue;
      }
      for (std::size_t k = 0; k < again[i].size(); ++k) out[i].replies[again[i][k]] = std::move(second[i].replies[k]);
      out[i].answered = second[i].answered;
    }
  }
  for (std::size_t i = 0; i < n; ++i)
    if (links[i]) {
      const bool healthy = !out[i].error && !links[i]->handle.broken() && !any_not_primary(out[i].replies);
      nodes[i]->give_back(std::move(*links[i]), healthy);  // (not in one call: see ~Use)
    }
  return out;
}

RedisClient::AcquireReply RedisClient::acquire(const RedisKeys& keys, std::string_view owner,
                                               std::chrono::milliseconds ttl) {
  const auto call = redis_proto::acquire_call(keys, owner, ttl, options_.fence_ttl);
  const auto r = run_scripts(std::span(&call, 1), fmt::format("acquire of '{}'", keys.lock));
  return parse_acquire_reply(r.at(0), endpoint_, keys.lock);
}

bool RedisClient::released(const RedisValue& reply, const RedisKeys& keys) {
  const ReleaseReply r = parse_release_reply(reply, endpoint_, keys.lock);
  if (!r.publish_error.empty()) facts_.note_publish_refusal(endpoint_, keys.channel, r.publish_error);
  return r.released;
}

bool RedisClient::release(const RedisKeys& keys, std::string_view owner) {
  const auto call = redis_proto::release_call(keys, owner, redis_proto::Publish::yes);
  const auto r = run_scripts(std::span(&call, 1), fmt::format("release of '{}'", keys.lock));
  return released(r.at(0), keys);
}

void RedisClient::abandon(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds timeout) noexcept {
  try {
    if (cluster_) return cluster_->node_for_key(keys.lock).abandon(keys, owner, timeout);
    std::optional<RedisOptions> server = current_server();  // Sentinel: no discovery here
    if (!server) return;
    RedisOptions o = std::move(*server);
    o.connect_timeout = std::min(o.connect_timeout, timeout);
    o.command_timeout = std::min(o.command_timeout, timeout);
    // No SCRIPT LOAD (the call then goes as EVAL), and no eviction check: a
    // cleanup of what may be ours is worth sending to any server.
    RedisLink link = RedisLink::open(o, RedisLinkSetup{.load_scripts = false, .check_eviction = false});
    RedisCall call{.what = fmt::format("release of '{}'", keys.lock)};
    (void)redis_proto::push_script_call(call.request, redis_proto::release_call(keys, owner, redis_proto::Publish::yes),
                                        link.shas(), redis_proto::ScriptForm::eval);
    (void)released(link.exec(std::move(call)).at(0), keys);
  } catch (...) {  // best effort: what it could not delete expires by its TTL
  }
}

bool RedisClient::extend(std::string_view lock_key, std::string_view owner, std::chrono::milliseconds ttl) {
  const auto call = redis_proto::extend_call(lock_key, owner, ttl);
  const auto r = run_scripts(std::span(&call, 1), fmt::format("extend of '{}'", lock_key));
  return parse_flag_reply(r.at(0), endpoint_, "extend", lock_key);
}

std::vector<bool> RedisClient::extend_many(std::span<const ExtendItem> items, std::vector<std::exception_ptr>* errors) {
  std::vector<bool> out(items.size(), false);
  if (errors != nullptr) errors->assign(items.size(), nullptr);
  if (items.empty()) return out;
  std::vector<redis_proto::ScriptCall> calls;
  calls.reserve(items.size());
  for (const auto& it : items) calls.push_back(redis_proto::extend_call(it.lock_key, it.owner, it.ttl));
  const auto replies = run_scripts(calls, fmt::format("extend of {} locks", items.size()));
  for (std::size_t i = 0; i < items.size(); ++i) {
    try {
      out[i] = parse_flag_reply(replies[i], endpoint_, "extend", items[i].lock_key);
    } catch (const ServerError&) {
      if (errors == nullptr) throw;
      (*errors)[i] = std::current_exception();
    }
  }
  return out;
}

RedisValue RedisClient::command(std::span<const std::string_view> args) {
  if (cluster_) return cluster_->command(args);
  Use use(*this);
  RedisCall call{.what = fmt::format("{}", args.empty() ? std::string_view("a command") : args.front())};
  call.request.push(args);
  RedisValue r = std::move(use.link().exec(std::move(call)).at(0));
  if (not_primary(r)) use.link().close();  // never reused
  return r;
}

}  // namespace dlock::detail
