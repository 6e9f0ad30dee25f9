// RedisBackend's primitives beyond the mutex (SharedLockBackend,
// SemaphoreBackend, ElectionBackend): each operation is one script of
// detail/redis_primitive_scripts.hpp, sent through the client's script calls
// (EVALSHA, once more as EVAL on NOSCRIPT).
#include <dlock/redis.hpp>

#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/detail/sha1.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>

#include <charconv>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace dlock {

namespace {

namespace proto = detail::redis_proto;

// One primitive script: its text and SHA1 (computed once).
class PrimitiveScript {
 public:
  explicit PrimitiveScript(std::string_view text) : text_(text), sha_(detail::sha1_hex(text)) {}
  [[nodiscard]] proto::ScriptCall call(std::vector<std::string> keys, std::vector<std::string> args) const {
    return proto::ScriptCall{.keys = std::move(keys), .args = std::move(args), .text = text_, .sha = sha_};
  }

 private:
  std::string_view text_;
  std::string sha_;
};

// The script whose text is `Text`, with its SHA1 computed on first use.
template <const std::string_view& Text>
const PrimitiveScript& script() {
  static const PrimitiveScript s{Text};
  return s;
}

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

detail::RedisValue run(detail::RedisClient& node, const proto::ScriptCall& call, std::string_view what,
                       std::string_view key) {
  return std::move(node.run_scripts(std::span(&call, 1), fmt::format("{} of '{}'", what, key)).at(0));
}

AcquireResult<NoHandle> acquired(const detail::AcquireReply& reply, const AcquireRequest& request) {
  if (!reply.acquired) return Contended{reply.holder_ttl};
  return Grant<NoHandle>{.token = reply.token, .valid_until = detail::saturating_add(request.started, request.ttl)};
}

// An acquire script's call and answer: KEYS `keys`; ARGV owner id, ttl ms,
// fence ttl ms and `extra` if any. keys[named] names the call in messages.
AcquireResult<NoHandle> acquire_by(detail::RedisClient& node, const PrimitiveScript& text,
                                   std::vector<std::string> keys, const AcquireRequest& request, std::string extra,
                                   std::string_view what, std::size_t named = 0) {
  const std::string key = keys.at(named);
  std::vector<std::string> args{std::string(request.owner.str()), ms(request.ttl),
                                ms(detail::fence_pttl(request.ttl, node.options().fence_ttl))};
  if (!extra.empty()) args.push_back(std::move(extra));
  const auto call = text.call(std::move(keys), std::move(args));
  return acquired(detail::parse_acquire_reply(run(node, call, what, key), node.endpoint(), key), request);
}

}  // namespace

// ---- SharedLockBackend ----

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_shared(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  return acquire_by(*state_->node, script<detail::redis_rw_read_acquire_script>(),
                    {k.rw_writer, k.rw_readers, k.rw_waiting, k.fence, k.rw_tokens}, request, {}, "read acquire", 1);
}

namespace {

// Release of a lease in a sorted set (a reader or a permit). `last_only`: publish
// only when the set is left empty (what a writer waits for).
ReleaseResult release_member(detail::RedisClient& node, const std::string& set, const std::string& tokens,
                             const std::string& channel, std::string_view owner, bool last_only) {
  const auto call = script<detail::redis_set_release_script>().call(
      {set, tokens}, {std::string(owner), channel, last_only ? "1" : "0"});
  const detail::ReleaseReply r = detail::parse_release_reply(run(node, call, "release", set), node.endpoint(), set);
  if (!r.publish_error.empty()) node.facts().note_publish_refusal(node.endpoint(), channel, r.publish_error);
  return r.released ? ReleaseResult::released : ReleaseResult::not_held;
}

std::optional<TimePoint> extend_member(detail::RedisClient& node, const std::string& set, const std::string& tokens,
                                       std::string_view owner, std::chrono::milliseconds ttl, TimePoint started) {
  const auto call = script<detail::redis_set_extend_script>().call({set, tokens}, {std::string(owner), ms(ttl)});
  if (!detail::parse_flag_reply(run(node, call, "extend", set), node.endpoint(), "extend", set)) return std::nullopt;
  return detail::saturating_add(started, ttl);
}

}  // namespace

ReleaseResult RedisBackend::release_shared(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return release_member(*state_->node, k.rw_readers, k.rw_tokens, k.channel, lease.owner.str(), true);
}

std::optional<TimePoint> RedisBackend::extend_shared(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return extend_member(*state_->node, k.rw_readers, k.rw_tokens, lease.owner.str(), ttl, started);
}

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_exclusive(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  // The waiting mark (ARGV[4]) lives as long as one lease would: it lapses by
  // itself when this writer gives up or dies; a live writer renews it every attempt.
  return acquire_by(*state_->node, script<detail::redis_rw_write_acquire_script>(),
                    {k.rw_writer, k.rw_readers, k.rw_waiting, k.fence}, request, ms(request.ttl), "write acquire");
}

ReleaseResult RedisBackend::release_exclusive(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  // The writer's key is a mutex key: the mutex's release script, on it.
  return state_->node->release(detail::RedisKeys{k.rw_writer, k.fence, k.channel}, lease.owner.str())
             ? ReleaseResult::released
             : ReleaseResult::not_held;
}

std::optional<TimePoint> RedisBackend::extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                        std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  if (!state_->node->extend(k.rw_writer, lease.owner.str(), ttl)) return std::nullopt;
  return detail::saturating_add(started, ttl);
}

// ---- SemaphoreBackend ----

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_permit(const AcquireRequest& request,
                                                                     std::uint32_t permits) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  return acquire_by(*state_->node, script<detail::redis_sem_acquire_script>(),
                    {k.sem_permits, k.sem_count, k.fence, k.sem_tokens}, request, std::to_string(permits),
                    "permit acquire");
}

ReleaseResult RedisBackend::release_permit(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return release_member(*state_->node, k.sem_permits, k.sem_tokens, k.channel, lease.owner.str(), false);
}

std::optional<TimePoint> RedisBackend::extend_permit(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return extend_member(*state_->node, k.sem_permits, k.sem_tokens, lease.owner.str(), ttl, started);
}

std::uint32_t RedisBackend::permits(std::string_view name, std::uint32_t permits) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const detail::RedisValue r = node.command({"GET", k.sem_count});
  detail::throw_if_error(r, node.endpoint(), fmt::format("permit count read of '{}'", k.sem_count));
  if (r.type != detail::RedisValue::Type::string) return permits;
  std::uint32_t n = 0;
  const auto [p, ec] = std::from_chars(r.str.data(), r.str.data() + r.str.size(), n);
  if (ec != std::errc{} || p != r.str.data() + r.str.size())
    throw ServerError(
        fmt::format("dlock: the permit count '{}' at {} is not a number; set it again with "
                    "set_permits (dlockctl)",
                    k.sem_count, node.endpoint()));
  return n;
}

void RedisBackend::set_permits(std::string_view name, std::optional<std::uint32_t> permits) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const std::string count = permits ? std::to_string(*permits) : std::string();
  const detail::RedisValue r = permits ? node.command({"SET", k.sem_count, count}) : node.command({"DEL", k.sem_count});
  detail::throw_if_error(r, node.endpoint(), fmt::format("permit count write of '{}'", k.sem_count));
  // A raised count lets waiters in: wake them (best effort, as a release's publish).
  (void)node.command({"PUBLISH", k.channel, ""});
}

// ---- ElectionBackend ----

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_leader(const AcquireRequest& request,
                                                                     std::string_view candidate) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  return acquire_by(*state_->node, script<detail::redis_leader_acquire_script>(), {k.leader, k.fence, k.leader_info},
                    request, std::string(candidate), "campaign");
}

ReleaseResult RedisBackend::release_leader(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const auto call = script<detail::redis_leader_release_script>().call({k.leader, k.leader_info},
                                                                       {std::string(lease.owner.str()), k.channel});
  const detail::ReleaseReply r =
      detail::parse_release_reply(run(node, call, "resign", k.leader), node.endpoint(), k.leader);
  if (!r.publish_error.empty()) node.facts().note_publish_refusal(node.endpoint(), k.channel, r.publish_error);
  return r.released ? ReleaseResult::released : ReleaseResult::not_held;
}

std::optional<TimePoint> RedisBackend::extend_leader(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const auto call = script<detail::redis_leader_extend_script>().call({k.leader, k.leader_info},
                                                                      {std::string(lease.owner.str()), ms(ttl)});
  if (!detail::parse_flag_reply(run(node, call, "extend", k.leader), node.endpoint(), "extend", k.leader))
    return std::nullopt;
  return detail::saturating_add(started, ttl);
}

std::optional<LeaderInfo> RedisBackend::leader(std::string_view name) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const auto call = script<detail::redis_leader_read_script>().call({k.leader, k.leader_info}, {});
  const detail::RedisValue r = run(node, call, "leader read", k.leader);
  detail::throw_if_error(r, node.endpoint(), fmt::format("leader read of '{}'", k.leader));
  using T = detail::RedisValue::Type;
  if (r.type != T::array) return std::nullopt;
  if (r.elements.size() != 2 || r.elements[0].type != T::string)
    throw ServerError(
        fmt::format("dlock: unexpected reply to the leader read of '{}' at {}", k.leader, node.endpoint()));
  LeaderInfo info{.candidate = r.elements[0].str, .term = std::nullopt};
  if (r.elements[1].type == T::string) {
    std::uint64_t term = 0;
    const auto& s = r.elements[1].str;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), term);
    if (ec == std::errc{} && p == s.data() + s.size()) info.term = term;
  }
  return info;
}

}  // namespace dlock

namespace dlock {

// ---- Fair mode ----

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_fair(const AcquireRequest& request,
                                                                   std::chrono::milliseconds waiter_ttl) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  const std::string lock = detail::redis_keys(state_->options.key_prefix, request.name).lock;
  return acquire_by(*state_->node, script<detail::redis_fair_acquire_script>(),
                    {lock, k.fence, k.fair_queue, k.fair_deadlines}, request, ms(waiter_ttl), "fair acquire");
}

ReleaseResult RedisBackend::release_fair(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const std::string lock = detail::redis_keys(state_->options.key_prefix, name).lock;
  const auto call = script<detail::redis_fair_release_script>().call({lock, k.fair_queue, k.fair_deadlines},
                                                                     {std::string(lease.owner.str()), k.channel});
  const detail::ReleaseReply r = detail::parse_release_reply(run(node, call, "release", lock), node.endpoint(), lock);
  if (!r.publish_error.empty()) node.facts().note_publish_refusal(node.endpoint(), k.channel, r.publish_error);
  return r.released ? ReleaseResult::released : ReleaseResult::not_held;
}

void RedisBackend::leave_fair(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
    const std::string lock = detail::redis_keys(state_->options.key_prefix, name).lock;
    const auto call = script<detail::redis_fair_leave_script>().call({lock, k.fair_queue, k.fair_deadlines},
                                                                     {std::string(owner.str()), k.channel});
    (void)run(*state_->node, call, "queue leave", lock);
  } catch (...) {  // the place lapses after the waiter ttl
  }
}

RedisBackend::Subscription RedisBackend::subscribe_release(std::string_view name, const OwnerId& owner) {
  return Subscription(
      state_->subscriber.subscribe_targeted(state_->node->keys(name).channel, std::string(owner.str())));
}

bool RedisBackend::release_subscribed(std::string_view name) {
  return state_->subscriber.subscribed(state_->node->keys(name).channel);
}

RedisBackend::Subscription RedisBackend::subscribe_release_one(std::string_view name) {
  return Subscription(state_->subscriber.subscribe_one(state_->node->keys(name).channel));
}

}  // namespace dlock
