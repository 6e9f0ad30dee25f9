// RedisBackend's primitives without blocking a thread (AsyncSharedLockBackend,
// AsyncSemaphoreBackend, AsyncElectionBackend in primitives_backend.hpp): the
// same scripts as the blocking operations (redis_primitives.cpp,
// detail/redis_primitive_scripts.hpp), each one call pipelined on the
// client's shared asynchronous links (async_fan_out, as the mutex's
// asynchronous operations in redis_async.cpp), judged by the same reply
// parsers and completed through the caller's executor.
#include <dlock/detail/redis_async.hpp>
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/detail/sha1.hpp>
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

// The primitive script whose text is `Text` as a call (its SHA1 computed once).
template <const std::string_view& Text>
proto::ScriptCall script_call(std::vector<std::string> keys, std::vector<std::string> args) {
  static const std::string sha = detail::sha1_hex(Text);
  return proto::ScriptCall{.keys = std::move(keys), .args = std::move(args), .text = Text, .sha = sha};
}

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

// One script of a primitive: the call, the key that names it in messages,
// and what it does ("read acquire", ...).
struct Script {
  proto::ScriptCall call;
  std::string key;
  std::string_view what;
};

// Sends the call `make(keys)` builds for the primitive keys of `name` to the
// backend's node without blocking; `judge(reply, endpoint, key)` turns the
// reply into the result (or throws), which goes to `done` through `ex`. An
// error before sending (an invalid name) completes the same way.
template <class R, class Make, class Judge>
void send(const std::shared_ptr<const void>& keep, detail::RedisClient& node, const RedisOptions& options,
          std::string_view name, const boost::asio::any_io_executor& ex,
          std::function<void(std::exception_ptr, R)> done, R fallback, Make make, Judge judge) {
  const detail::ExecutorCompletion work(ex);
  try {
    detail::validate_redis_lock_name(name);
    Script s = make(detail::redis_primitive_keys(options.key_prefix, name));
    detail::RedisClient* const nodes[] = {&node};
    std::vector<std::vector<proto::ScriptCall>> batches(1);
    batches[0].push_back(std::move(s.call));
    detail::async_fan_out(nodes, std::move(batches), std::nullopt, fmt::format("{} of '{}'", s.what, s.key), {},
                          [keep, &node, key = std::move(s.key), work, done, fallback,
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
                            detail::post_result<R>(work, done, error, std::move(result));
                          });
  } catch (...) {
    detail::post_result<R>(work, done, std::current_exception(), std::move(fallback));
  }
}

// An acquire script's ARGV: owner id, ttl ms, fence ttl ms and `extra` if any
// (as acquire_by() in redis_primitives.cpp).
std::vector<std::string> acquire_args(const detail::RedisClient& node, const AcquireRequest& r, std::string extra) {
  std::vector<std::string> args{std::string(r.owner.str()), ms(r.ttl),
                                ms(detail::fence_pttl(r.ttl, node.options().fence_ttl))};
  if (!extra.empty()) args.push_back(std::move(extra));
  return args;
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
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return Script{script_call<detail::redis_rw_read_acquire_script>({k.rw_writer, k.rw_readers, k.rw_waiting, k.fence},
                                                                    acquire_args(*state_->node, request, {})),
                  k.rw_readers, "read acquire"};
  });
}

void RedisBackend::async_release_shared(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done), [&](const auto& k) {
    return Script{
        script_call<detail::redis_set_release_script>({k.rw_readers}, {std::string(lease.owner.str()), k.channel, "1"}),
        k.rw_readers, "release"};
  });
}

void RedisBackend::async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done), [&](const auto& k) {
    return Script{
        script_call<detail::redis_set_extend_script>({k.rw_readers}, {std::string(lease.owner.str()), ms(ttl)}),
        k.rw_readers, "extend"};
  });
}

void RedisBackend::async_try_acquire_exclusive(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                               AcquireCompletion<Handle> done) {
  // The waiting mark (ARGV[4]) lives as long as one lease would (see try_acquire_exclusive).
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return Script{
        script_call<detail::redis_rw_write_acquire_script>({k.rw_writer, k.rw_readers, k.rw_waiting, k.fence},
                                                           acquire_args(*state_->node, request, ms(request.ttl))),
        k.rw_writer, "write acquire"};
  });
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
    return Script{
        script_call<detail::redis_sem_acquire_script>({k.sem_permits, k.sem_count, k.fence},
                                                      acquire_args(*state_->node, request, std::to_string(permits))),
        k.sem_permits, "permit acquire"};
  });
}

void RedisBackend::async_release_permit(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done), [&](const auto& k) {
    return Script{script_call<detail::redis_set_release_script>({k.sem_permits},
                                                                {std::string(lease.owner.str()), k.channel, "0"}),
                  k.sem_permits, "release"};
  });
}

void RedisBackend::async_extend_permit(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done), [&](const auto& k) {
    return Script{
        script_call<detail::redis_set_extend_script>({k.sem_permits}, {std::string(lease.owner.str()), ms(ttl)}),
        k.sem_permits, "extend"};
  });
}

// ---- AsyncElectionBackend ----

void RedisBackend::async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                            const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  Async::acquire(state_, *state_->node, state_->options, request, ex, std::move(done), [&](const auto& k) {
    return Script{script_call<detail::redis_leader_acquire_script>(
                      {k.leader, k.fence, k.leader_info}, acquire_args(*state_->node, request, std::string(candidate))),
                  k.leader, "campaign"};
  });
}

void RedisBackend::async_release_leader(std::string_view name, Lease<Handle>& lease,
                                        const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  Async::release(state_, *state_->node, state_->options, name, ex, std::move(done), [&](const auto& k) {
    return Script{script_call<detail::redis_leader_release_script>({k.leader, k.leader_info},
                                                                   {std::string(lease.owner.str()), k.channel}),
                  k.leader, "resign"};
  });
}

void RedisBackend::async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                       TimePoint started, const boost::asio::any_io_executor& ex,
                                       ExtendCompletion done) {
  Async::extend(state_, *state_->node, state_->options, name, ttl, started, ex, std::move(done), [&](const auto& k) {
    return Script{script_call<detail::redis_leader_extend_script>({k.leader, k.leader_info},
                                                                  {std::string(lease.owner.str()), ms(ttl)}),
                  k.leader, "extend"};
  });
}

}  // namespace dlock
