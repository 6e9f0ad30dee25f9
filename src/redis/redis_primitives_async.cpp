// RedisBackend's primitives without blocking a thread (AsyncSharedLockBackend,
// AsyncSemaphoreBackend, AsyncElectionBackend in primitives_backend.hpp): the
// same scripts as the blocking operations (redis_primitives.cpp,
// detail/redis_primitive_scripts.hpp), each one call pipelined on the
// client's shared asynchronous links (async_fan_out, as the mutex's
// asynchronous operations in redis_async.cpp), judged by the same reply
// parsers and completed through the caller's executor.
#include <dlock/detail/redis_async.hpp>
#include <dlock/detail/redis_primitive_calls.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>
#include <dlock/redis.hpp>

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace dlock {

namespace {

namespace proto = detail::redis_proto;
using Handle = RedisBackend::Handle;

using Script = detail::PrimitiveCall;

// Sends the call `make(keys)` builds for the primitive keys of `name` to the
// backend's node without blocking; `judge(reply, endpoint, key)` turns the
// reply into the result (or throws), which goes to `done` through `ex`. An
// error before sending (an invalid name) completes the same way. The
// completion is kept by the executor's context, not by the request in flight
// (detail::ResultCompletion, as the mutex's asynchronous operations).
template <class R, class Make, class Judge>
void send(const std::shared_ptr<const void>& keep, detail::RedisClient& node, const RedisOptions& options,
          std::string_view name, const boost::asio::any_io_executor& ex,
          std::function<void(std::exception_ptr, R)> done, R fallback, Make make, Judge judge) {
  try {
    detail::validate_redis_lock_name(name);
    Script s = make(detail::redis_primitive_keys(options.key_prefix, name));
    detail::RedisClient* const nodes[] = {&node};
    std::vector<std::vector<proto::ScriptCall>> batches(1);
    batches[0].push_back(std::move(s.call));
    detail::async_fan_out(nodes, std::move(batches), std::nullopt, fmt::format("{} of '{}'", s.what, s.key), {},
                          [keep, &node, key = std::move(s.key), work = detail::ResultCompletion<R>(ex, done), fallback,
                           judge = std::move(judge)](std::vector<detail::RedisOutcome> out) mutable {
                            (void)keep;  // the node lives as long as the backend's state
                            R result = fallback;
                            std::exception_ptr error;
                            try {
                              if (out.at(0).error) std::rethrow_exception(out[0].error);
                              result = judge(out[0].replies.at(0), node, key);
                            } catch (...) {
                              error = std::current_exception();
                            }
                            work.post(error, std::move(result));
                          });
  } catch (...) {
    detail::post_result<R>(detail::ExecutorCompletion(ex), done, std::current_exception(), std::move(fallback));
  }
}

}  // namespace

namespace detail {

// The shared bodies of the RedisBackend members below: an acquire, a
// release (which may publish) and an extension, each of one script call.
struct RedisPrimitivesAsync {
  template <class Make>
  static void acquire(const std::shared_ptr<const void>& keep, RedisClient& node, const RedisOptions& o,
                      const AcquireRequest& r, const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done,
                      Make make) {
    send<AcquireResult<Handle>>(
        keep, node, o, r.name, ex, std::move(done), AcquireResult<Handle>{Contended{}}, std::move(make),
        [valid_until = saturating_add(r.started, r.ttl)](const RedisValue& reply, RedisClient& n,
                                                         const std::string& key) -> AcquireResult<Handle> {
          const auto a = parse_acquire_reply(reply, n.endpoint(), key);
          if (!a.acquired) return Contended{a.holder_ttl};
          return Grant<Handle>{.token = a.token, .valid_until = valid_until};
        });
  }
  // A release that publishes on `channel` (the key's name's release channel).
  template <class Make>
  static void release(const std::shared_ptr<const void>& keep, RedisClient& node, const RedisOptions& o,
                      std::string_view name, const boost::asio::any_io_executor& ex, ReleaseCompletion done,
                      Make make) {
    send<ReleaseResult>(keep, node, o, name, ex, std::move(done), ReleaseResult::not_held, make,
                        [channel = redis_primitive_keys(o.key_prefix, name).channel](
                            const RedisValue& reply, RedisClient& n, const std::string& key) {
                          const ReleaseReply r = parse_release_reply(reply, n.endpoint(), key);
                          if (!r.publish_error.empty())
                            n.facts().note_publish_refusal(n.endpoint(), channel, r.publish_error);
                          return r.released ? ReleaseResult::released : ReleaseResult::not_held;
                        });
  }
  template <class Make>
  static void extend(const std::shared_ptr<const void>& keep, RedisClient& node, const RedisOptions& o,
                     std::string_view name, std::chrono::milliseconds ttl, TimePoint started,
                     const boost::asio::any_io_executor& ex, ExtendCompletion done, Make make) {
    send<std::optional<TimePoint>>(
        keep, node, o, name, ex, std::move(done), std::optional<TimePoint>{}, std::move(make),
        [valid_until = saturating_add(started, ttl)](const RedisValue& reply, RedisClient& n,
                                                     const std::string& key) -> std::optional<TimePoint> {
          if (!parse_flag_reply(reply, n.endpoint(), "extend", key)) return std::nullopt;
          return valid_until;
        });
  }
};

}  // namespace detail

using Async = detail::RedisPrimitivesAsync;

// ---- AsyncSharedLockBackend ----

void RedisBackend::async_try_acquire_shared(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                            AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done),
                 [&](const auto& k) { return detail::read_acquire_call(k, request, state_->options.fence_ttl); });
}

void RedisBackend::async_release_shared(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done),
                 [&](const auto& k) { return detail::reader_release_call(k, lease.owner.str()); });
}

void RedisBackend::async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done),
                [&](const auto& k) { return detail::reader_extend_call(k, lease.owner.str(), ttl); });
}

void RedisBackend::async_try_acquire_exclusive(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                               AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done),
                 [&](const auto& k) { return detail::write_acquire_call(k, request, state_->options.fence_ttl); });
}

void RedisBackend::async_release_exclusive(std::string_view name, Lease<Handle>& lease,
                                           const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  // The writer's key is a mutex key: the mutex's release script, on it.
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done), [&](const auto& k) {
    return Script{
        proto::release_call(detail::RedisKeys{k.rw_writer, k.fence, k.channel}, lease.owner.str(), proto::Publish::yes),
        k.rw_writer, "release"};
  });
}

void RedisBackend::async_extend_exclusive(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                          TimePoint started, const boost::asio::any_io_executor& ex,
                                          ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done), [&](const auto& k) {
    return Script{proto::extend_call(k.rw_writer, lease.owner.str(), ttl), k.rw_writer, "extend"};
  });
}

// ---- AsyncSemaphoreBackend ----

void RedisBackend::async_try_acquire_permit(const AcquireRequest& request, std::uint32_t permits,
                                            const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return detail::permit_acquire_call(k, request, state_->options.fence_ttl, permits);
  });
}

void RedisBackend::async_release_permit(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done),
                 [&](const auto& k) { return detail::permit_release_call(k, lease.owner.str()); });
}

void RedisBackend::async_extend_permit(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done),
                [&](const auto& k) { return detail::permit_extend_call(k, lease.owner.str(), ttl); });
}

// ---- AsyncElectionBackend ----

void RedisBackend::async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                            const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return detail::leader_acquire_call(k, request, state_->options.fence_ttl, candidate);
  });
}

void RedisBackend::async_release_leader(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done),
                 [&](const auto& k) { return detail::leader_release_call(k, lease.owner.str()); });
}

void RedisBackend::async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done),
                [&](const auto& k) { return detail::leader_extend_call(k, lease.owner.str(), ttl); });
}

// ---- fair mode without blocking a thread (AsyncQueuesFairly in lock.hpp) ----

void RedisBackend::async_try_acquire_fair(const AcquireRequest& request, std::chrono::milliseconds waiter_ttl,
                                          const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return detail::fair_acquire_call(state_->node->keys(request.name).lock, k, request, state_->options.fence_ttl,
                                     waiter_ttl);
  });
}

void RedisBackend::async_release_fair(std::string_view name, Lease<Handle>& lease,
                                      const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done), [&](const auto& k) {
    return detail::fair_release_call(state_->node->keys(name).lock, k, lease.owner.str());
  });
}

void RedisBackend::async_leave_fair(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    detail::PrimitiveCall c = detail::fair_leave_call(
        state_->node->keys(name).lock, detail::redis_primitive_keys(state_->options.key_prefix, name), owner.str());
    detail::RedisClient* const nodes[] = {state_->node.get()};
    std::vector<std::vector<proto::ScriptCall>> batches(1);
    batches[0].push_back(std::move(c.call));
    detail::async_fan_out(nodes, std::move(batches), std::nullopt, fmt::format("{} of '{}'", c.what, c.key), {},
                          [keep = state_](std::vector<detail::RedisOutcome>) {});
  } catch (...) {  // an invalid name or out of memory: the place lapses after the waiter ttl
  }
}

RedisBackend::Subscription RedisBackend::subscribe_release_nowait(std::string_view name, const OwnerId& owner) {
  const std::string channel = state_->node->keys(name).channel;
  // Targeted only when that costs no wait: subscribe_targeted() waits for the
  // server's acknowledgement unless the channel is already acknowledged.
  // Otherwise every release wakes this waiter, whose attempt then finds
  // whether it is the head (an extra call, never a lost wake-up).
  if (state_->subscriber.subscribed(channel))
    return Subscription(state_->subscriber.subscribe_targeted(channel, std::string(owner.str())));
  return Subscription(state_->subscriber.subscribe(channel, false));
}

}  // namespace dlock
