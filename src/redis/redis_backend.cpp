// RedisBackend: the Backend operations as a thin layer over one RedisNode.
#include <dlock/redis.hpp>

#include <utility>

namespace dlock {

RedisBackend::RedisBackend(RedisOptions options)
    : options_((detail::validate(options), std::move(options))),
      node_(std::make_unique<detail::RedisNode>(options_)),
      subscriber_(options_, node_->endpoint()) {}

RedisBackend::RedisBackend(std::string_view uri, RedisOptions base)
    : RedisBackend(parse_redis_uri(uri, std::move(base))) {}

RedisBackend::~RedisBackend() = default;

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto reply = node_->acquire(node_->keys(request.name), request.owner.str(), request.ttl);
  if (!reply.acquired) return Contended{reply.holder_ttl};
  return Grant<Handle>{reply.token, request.started + request.ttl, {}};
}

ReleaseResult RedisBackend::release(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return node_->release(node_->keys(name), lease.owner.str()) ? ReleaseResult::released : ReleaseResult::not_held;
}

std::optional<TimePoint> RedisBackend::extend(std::string_view name, Lease<Handle>& lease,
                                              std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  if (!node_->extend(node_->keys(name).lock, lease.owner.str(), ttl)) return std::nullopt;
  return started + ttl;
}

RedisBackend::Subscription RedisBackend::subscribe_release(std::string_view name) {
  return Subscription(subscriber_.subscribe(node_->keys(name).channel));
}

}  // namespace dlock
