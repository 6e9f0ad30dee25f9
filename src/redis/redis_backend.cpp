// RedisBackend: the Backend operations as a thin layer over one RedisClient.
#include <dlock/redis.hpp>

#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_waits.hpp>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace dlock {

RedisBackend::State::State(RedisOptions o)
    : options((detail::validate(o), std::move(o))),
      node(std::make_unique<detail::RedisClient>(options)),
      subscriber(std::vector<detail::RedisSubscriber::Server>{
          {.options = options,
           .endpoint = node->endpoint(),
           // Sentinel: the release subscriber follows the primary the pool found.
           // Cluster: it listens on one node (a PUBLISH reaches every node),
           // the next one at each reconnect (a dead node is left behind).
           .locate =
               options.cluster
                   ? std::function<std::optional<RedisOptions>()>(
                         [n = node.get(), turn = std::size_t{0}]() mutable { return n->cluster()->any_node(turn++); })
               : options.sentinel
                   ? std::function<std::optional<RedisOptions>()>([n = node.get()] { return n->current_server(); })
                   : nullptr}}) {}

RedisBackend::RedisBackend(RedisOptions options) : state_(std::make_shared<State>(std::move(options))) {
  // Sentinel: when the primary changes, the release subscriber moves to it
  // (a failed-over primary that still runs would keep its connection and
  // never hear the new primary's releases).
  if (state_->options.sentinel) state_->node->on_primary_moved(state_->subscriber.relocator());
}

RedisBackend::RedisBackend(std::string_view uri, RedisOptions base)
    : RedisBackend(parse_redis_uri(uri, std::move(base))) {}

AcquireResult<RedisBackend::Handle> RedisBackend::try_acquire(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  const auto reply = state_->node->acquire(state_->node->keys(request.name), request.owner.str(), request.ttl);
  if (!reply.acquired) return Contended{reply.holder_ttl};
  return Grant<Handle>{.token = reply.token, .valid_until = request.started + request.ttl};
}

ReleaseResult RedisBackend::release(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return state_->node->release(state_->node->keys(name), lease.owner.str()) ? ReleaseResult::released
                                                                            : ReleaseResult::not_held;
}

void RedisBackend::abandon(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    state_->node->abandon(state_->node->keys(name), owner.str(), abandon_timeout);
  } catch (...) {  // an invalid name or out of memory: nothing of it can be on the server
  }
}

std::string RedisBackend::publish_refusal() const { return state_->node->facts().publish_refusal(); }

std::optional<TimePoint> RedisBackend::extend(std::string_view name, Lease<Handle>& lease,
                                              std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  if (!state_->node->extend(state_->node->keys(name).lock, lease.owner.str(), ttl)) return std::nullopt;
  return started + ttl;
}

void RedisBackend::extend_many(std::span<ExtendItem> items) noexcept {
  try {
    const std::vector<std::size_t> index = detail::checked_extend_items(items);  // batch position -> item
    std::vector<std::string> keys;
    std::vector<detail::RedisClient::ExtendItem> batch;
    keys.reserve(index.size());
    batch.reserve(index.size());
    for (std::size_t i : index) keys.push_back(state_->node->keys(items[i].name).lock);
    for (std::size_t b = 0; b < index.size(); ++b) {
      const ExtendItem& it = items[index[b]];
      batch.push_back({keys[b], it.owner->str(), it.ttl});
    }
    std::vector<std::exception_ptr> errors;
    std::vector<bool> extended;
    try {
      extended = state_->node->extend_many(batch, &errors);
    } catch (...) {
      const auto e = std::current_exception();
      for (std::size_t i : index) items[i].error = e;
      return;
    }
    for (std::size_t b = 0; b < index.size(); ++b) {
      ExtendItem& it = items[index[b]];
      if (errors[b]) {
        it.error = errors[b];
      } else if (extended[b]) {
        it.valid_until = it.started + it.ttl;
      }
    }
  } catch (...) {  // out of memory: report it on every item rather than lose the batch silently
    const auto e = std::current_exception();
    for (ExtendItem& it : items) it.error = e;
  }
}

RedisBackend::Subscription RedisBackend::subscribe_release(std::string_view name) {
  return Subscription(state_->subscriber.subscribe(state_->node->keys(name).channel));
}

void RedisBackend::record_wait(const WaitRecord& record) noexcept {
  try {
    const std::string key = detail::redis_waiting_key(state_->options.key_prefix, record.waiter);
    const std::string value = detail::encode_wait_record(record);
    const std::string px = std::to_string(std::max<long long>(1, record.ttl.count()));
    (void)state_->node->command({"SET", key, value, "PX", px});
  } catch (...) {  // diagnostics only: the record is simply missing
  }
}

void RedisBackend::clear_wait(const WaitRecord& record) noexcept {
  try {
    (void)state_->node->command({"DEL", detail::redis_waiting_key(state_->options.key_prefix, record.waiter)});
  } catch (...) {  // diagnostics only: the record expires by its TTL
  }
}

}  // namespace dlock
