// RedisBackend's primitives beyond the mutex (SharedLockBackend,
// SemaphoreBackend, ElectionBackend): each operation is one script of
// detail/redis_primitive_scripts.hpp, sent through the client's script calls
// (EVALSHA, once more as EVAL on NOSCRIPT).
#include <dlock/redis.hpp>

#include <dlock/detail/redis_primitive_calls.hpp>
#include <dlock/detail/redis_primitive_scripts.hpp>
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

detail::RedisValue run(detail::RedisClient& node, const proto::ScriptCall& call, std::string_view what,
                       std::string_view key) {
  return std::move(node.run_scripts(std::span(&call, 1), fmt::format("{} of '{}'", what, key)).at(0));
}

AcquireResult<NoHandle> acquired(const detail::AcquireReply& reply, const AcquireRequest& request) {
  if (!reply.acquired) return Contended{reply.holder_ttl};
  return Grant<NoHandle>{.token = reply.token, .valid_until = detail::saturating_add(request.started, request.ttl)};
}

// An acquire script's call (detail/redis_primitive_calls.hpp) and answer.
AcquireResult<NoHandle> acquire_by(detail::RedisClient& node, const detail::PrimitiveCall& c,
                                   const AcquireRequest& request) {
  return acquired(detail::parse_acquire_reply(run(node, c.call, c.what, c.key), node.endpoint(), c.key), request);
}

}  // namespace

// ---- SharedLockBackend ----

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_shared(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  return acquire_by(*state_->node, detail::read_acquire_call(k, request, state_->options.fence_ttl), request);
}

bool detail::run_release_call(RedisClient& node, const PrimitiveCall& c, const std::string& channel) {
  const ReleaseReply r = parse_release_reply(run(node, c.call, c.what, c.key), node.endpoint(), c.key);
  if (!r.publish_error.empty()) node.facts().note_publish_refusal(node.endpoint(), channel, r.publish_error);
  return r.released;
}

namespace {

// A release script's call (which may publish on `channel`) and answer.
ReleaseResult release_by(detail::RedisClient& node, const detail::PrimitiveCall& c, const std::string& channel) {
  return detail::run_release_call(node, c, channel) ? ReleaseResult::released : ReleaseResult::not_held;
}

// An extend script's call and answer.
std::optional<TimePoint> extend_by(detail::RedisClient& node, const detail::PrimitiveCall& c,
                                   std::chrono::milliseconds ttl, TimePoint started) {
  if (!detail::parse_flag_reply(run(node, c.call, c.what, c.key), node.endpoint(), c.what, c.key)) return std::nullopt;
  return detail::saturating_add(started, ttl);
}

}  // namespace

ReleaseResult RedisBackend::release_shared(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return release_by(*state_->node, detail::reader_release_call(k, lease.owner.str()), k.channel);
}

std::optional<TimePoint> RedisBackend::extend_shared(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return extend_by(*state_->node, detail::reader_extend_call(k, lease.owner.str(), ttl), ttl, started);
}

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire_exclusive(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, request.name);
  return acquire_by(*state_->node, detail::write_acquire_call(k, request, state_->options.fence_ttl), request);
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
  return acquire_by(*state_->node, detail::permit_acquire_call(k, request, state_->options.fence_ttl, permits),
                    request);
}

ReleaseResult RedisBackend::release_permit(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return release_by(*state_->node, detail::permit_release_call(k, lease.owner.str()), k.channel);
}

std::optional<TimePoint> RedisBackend::extend_permit(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return extend_by(*state_->node, detail::permit_extend_call(k, lease.owner.str(), ttl), ttl, started);
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
  return acquire_by(*state_->node, detail::leader_acquire_call(k, request, state_->options.fence_ttl, candidate),
                    request);
}

ReleaseResult RedisBackend::release_leader(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return release_by(*state_->node, detail::leader_release_call(k, lease.owner.str()), k.channel);
}

std::optional<TimePoint> RedisBackend::extend_leader(std::string_view name, Lease<Handle>& lease,
                                                     std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  return extend_by(*state_->node, detail::leader_extend_call(k, lease.owner.str(), ttl), ttl, started);
}

std::optional<LeaderInfo> RedisBackend::leader(std::string_view name) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const auto call = detail::primitive_script_call<detail::redis_leader_read_script>({k.leader, k.leader_info}, {});
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
  return acquire_by(*state_->node, detail::fair_acquire_call(lock, k, request, state_->options.fence_ttl, waiter_ttl),
                    request);
}

ReleaseResult RedisBackend::release_fair(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  detail::RedisClient& node = *state_->node;
  const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
  const std::string lock = detail::redis_keys(state_->options.key_prefix, name).lock;
  return release_by(node, detail::fair_release_call(lock, k, lease.owner.str()), k.channel);
}

void RedisBackend::leave_fair(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    const auto k = detail::redis_primitive_keys(state_->options.key_prefix, name);
    const std::string lock = detail::redis_keys(state_->options.key_prefix, name).lock;
    const detail::PrimitiveCall c = detail::fair_leave_call(lock, k, owner.str());
    (void)run(*state_->node, c.call, c.what, c.key);
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
