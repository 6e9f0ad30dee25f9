// RedlockBackend's primitives beyond the mutex (SharedLockBackend,
// ElectionBackend): each family's calls are the Redis backend's scripts and
// layouts (detail/redis_primitive_calls.hpp), run through the mutex's rounds
// (acquire on every node, fencing counter raise, undo of a failed attempt,
// release, extend: src/redis/redlock_backend.cpp). docs/primitives.md
// ("Redlock") says why the quorum argument carries over to them.
#include <dlock/redlock.hpp>

#include <charconv>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_primitive_calls.hpp>
#include <dlock/detail/redis_transport.hpp>
#include <dlock/detail/redlock_calls.hpp>
#include <dlock/detail/redlock_math.hpp>
#include <dlock/error.hpp>

namespace dlock {

namespace {

namespace proto = detail::redis_proto;
using detail::RedisPrimitiveKeys;

// `k` whose release publishes nowhere (a failed attempt's undo).
RedisPrimitiveKeys quiet(RedisPrimitiveKeys k) {
  k.channel.clear();
  return k;
}

// The acquire of `request` with `build(keys, request, fence_floor)`, one of
// the primitive call builders; the request is copied into the call.
template <class Build>
auto acquire_of(const RedisPrimitiveKeys& k, const AcquireRequest& request, Build build) {
  return [k, build, name = std::string(request.name), owner = request.owner, ttl = request.ttl,
          started = request.started](std::chrono::milliseconds fence_floor, std::chrono::microseconds) {
    const AcquireRequest r{name, owner, ttl, started};
    return build(k, r, fence_floor).call;
  };
}

// Each family's calls on the keys of name `name` (validated), with the
// acquire of `request` when given.

detail::RedlockCalls reader_calls(const RedlockBackend& b, std::string_view name,
                                  const AcquireRequest* request = nullptr) {
  const auto k = detail::redis_primitive_keys(b.options().key_prefix, name);
  detail::RedlockCalls c{
      .key = k.rw_readers,
      .fence = k.fence,
      .channel = k.channel,
      .acquire = {},
      .release =
          [k, q = quiet(k)](std::string_view owner, proto::Publish publish) {
            return detail::reader_release_call(publish == proto::Publish::yes ? k : q, owner).call;
          },
      .extend = [k](std::string_view owner,
                    std::chrono::milliseconds ttl) { return detail::reader_extend_call(k, owner, ttl).call; }};
  if (request != nullptr)
    c.acquire = acquire_of(k, *request,
                           [](const RedisPrimitiveKeys& keys, const AcquireRequest& r, std::chrono::milliseconds f) {
                             return detail::read_acquire_call(keys, r, f);
                           });
  return c;
}

// The writer's key is a mutex key: the mutex's release and extend scripts on
// it, as RedisBackend's writer.
detail::RedlockCalls writer_calls(const RedlockBackend& b, std::string_view name,
                                  const AcquireRequest* request = nullptr) {
  const auto k = detail::redis_primitive_keys(b.options().key_prefix, name);
  detail::RedlockCalls c{
      .key = k.rw_writer,
      .fence = k.fence,
      .channel = k.channel,
      .acquire = {},
      .release = [keys = detail::RedisKeys{k.rw_writer, k.fence, k.channel}](
                     std::string_view owner,
                     proto::Publish publish) { return proto::release_call(keys, owner, publish); },
      .extend = [key = k.rw_writer](std::string_view owner,
                                    std::chrono::milliseconds ttl) { return proto::extend_call(key, owner, ttl); }};
  if (request != nullptr)
    c.acquire = acquire_of(k, *request,
                           [](const RedisPrimitiveKeys& keys, const AcquireRequest& r, std::chrono::milliseconds f) {
                             return detail::write_acquire_call(keys, r, f);
                           });
  return c;
}

detail::RedlockCalls leader_calls(const RedlockBackend& b, std::string_view name,
                                  const AcquireRequest* request = nullptr, std::string_view candidate = {}) {
  const auto k = detail::redis_primitive_keys(b.options().key_prefix, name);
  detail::RedlockCalls c{
      .key = k.leader,
      .fence = k.fence,
      .channel = k.channel,
      .acquire = {},
      .release =
          [k, q = quiet(k)](std::string_view owner, proto::Publish publish) {
            return detail::leader_release_call(publish == proto::Publish::yes ? k : q, owner).call;
          },
      .extend = [k](std::string_view owner,
                    std::chrono::milliseconds ttl) { return detail::leader_extend_call(k, owner, ttl).call; }};
  c.raise = [k](std::string_view owner, std::uint64_t token, std::chrono::milliseconds ttl,
                std::chrono::milliseconds fence_floor) {
    return detail::leader_raise_call(k, owner, token, ttl, fence_floor).call;
  };
  if (request != nullptr)
    c.acquire = acquire_of(k, *request,
                           [candidate = std::string(candidate)](const RedisPrimitiveKeys& keys, const AcquireRequest& r,
                                                                std::chrono::milliseconds f) {
                             return detail::leader_acquire_call(keys, r, f, candidate);
                           });
  return c;
}

}  // namespace

// ---- SharedLockBackend ----

AcquireResult<RedlockBackend::Handle> RedlockBackend::try_acquire_shared(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  return acquire_by(request, reader_calls(*this, request.name, &request));
}

ReleaseResult RedlockBackend::release_shared(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return release_by(name, lease.owner, reader_calls(*this, name));
}

std::optional<TimePoint> RedlockBackend::extend_shared(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  return extend_by(name, lease.owner, ttl, started, reader_calls(*this, name));
}

AcquireResult<RedlockBackend::Handle> RedlockBackend::try_acquire_exclusive(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  return acquire_by(request, writer_calls(*this, request.name, &request));
}

ReleaseResult RedlockBackend::release_exclusive(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return release_by(name, lease.owner, writer_calls(*this, name));
}

std::optional<TimePoint> RedlockBackend::extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                          std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  return extend_by(name, lease.owner, ttl, started, writer_calls(*this, name));
}

// ---- ElectionBackend ----

AcquireResult<RedlockBackend::Handle> RedlockBackend::try_acquire_leader(const AcquireRequest& request,
                                                                         std::string_view candidate) {
  detail::validate_redis_lock_name(request.name);
  return acquire_by(request, leader_calls(*this, request.name, &request, candidate));
}

ReleaseResult RedlockBackend::release_leader(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return release_by(name, lease.owner, leader_calls(*this, name));
}

std::optional<TimePoint> RedlockBackend::extend_leader(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
  detail::validate_redis_lock_name(name);
  return extend_by(name, lease.owner, ttl, started, leader_calls(*this, name));
}

// ---- asynchronous forms: the same calls, through the asynchronous rounds ----

void RedlockBackend::async_try_acquire_shared(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                              AcquireCompletion<Handle> done) {
  async_acquire_by(
      request, [&] { return reader_calls(*this, request.name, &request); }, ex, std::move(done));
}
void RedlockBackend::async_release_shared(std::string_view name, Lease<Handle>& lease,
                                          const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  async_release_by(
      name, lease.owner, [&] { return reader_calls(*this, name); }, ex, std::move(done));
}
void RedlockBackend::async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                         TimePoint started, const boost::asio::any_io_executor& ex,
                                         ExtendCompletion done) {
  async_extend_by(
      name, lease.owner, ttl, started, [&] { return reader_calls(*this, name); }, ex, std::move(done));
}
void RedlockBackend::async_try_acquire_exclusive(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                                 AcquireCompletion<Handle> done) {
  async_acquire_by(
      request, [&] { return writer_calls(*this, request.name, &request); }, ex, std::move(done));
}
void RedlockBackend::async_release_exclusive(std::string_view name, Lease<Handle>& lease,
                                             const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  async_release_by(
      name, lease.owner, [&] { return writer_calls(*this, name); }, ex, std::move(done));
}
void RedlockBackend::async_extend_exclusive(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                            TimePoint started, const boost::asio::any_io_executor& ex,
                                            ExtendCompletion done) {
  async_extend_by(
      name, lease.owner, ttl, started, [&] { return writer_calls(*this, name); }, ex, std::move(done));
}
void RedlockBackend::async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                              const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  async_acquire_by(
      request, [&] { return leader_calls(*this, request.name, &request, candidate); }, ex, std::move(done));
}
void RedlockBackend::async_release_leader(std::string_view name, Lease<Handle>& lease,
                                          const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  async_release_by(
      name, lease.owner, [&] { return leader_calls(*this, name); }, ex, std::move(done));
}
void RedlockBackend::async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                         TimePoint started, const boost::asio::any_io_executor& ex,
                                         ExtendCompletion done) {
  async_extend_by(
      name, lease.owner, ttl, started, [&] { return leader_calls(*this, name); }, ex, std::move(done));
}

std::optional<LeaderInfo> RedlockBackend::leader(std::string_view name) {
  detail::validate_redis_lock_name(name);
  const auto k = detail::redis_primitive_keys(options().key_prefix, name);
  const auto call = detail::redlock_leader_read_call(k).call;
  const std::string what = fmt::format("leader read of '{}'", k.leader);
  const auto replies = read_round(call, what);
  std::vector<std::optional<detail::RedlockLeaderAnswer>> answers;
  std::size_t failed = 0;
  std::string why;  // the failed nodes' errors
  using T = detail::RedisValue::Type;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    const std::string endpoint = detail::redis_endpoint(options().nodes[i]);
    try {
      if (replies[i].error) std::rethrow_exception(replies[i].error);
      const detail::RedisValue& r = replies[i].replies.at(0);
      detail::throw_if_error(r, endpoint, what);
      if (r.type != T::array) continue;  // nobody leads there
      if (r.elements.size() != 3 || r.elements[0].type != T::string || r.elements[2].type != T::string)
        throw ServerError(fmt::format("dlock: unexpected reply to the {} at {}", what, endpoint));
      detail::RedlockLeaderAnswer a{r.elements[0].str, std::nullopt, r.elements[2].str};
      if (r.elements[1].type == T::string) {
        std::uint64_t term = 0;
        const auto& s = r.elements[1].str;
        const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), term);
        if (ec == std::errc{} && p == s.data() + s.size()) a.term = term;
      }
      answers.emplace_back(std::move(a));
    } catch (const std::exception& e) {
      ++failed;
      if (!why.empty()) why += "; ";
      why += e.what();
    }
  }
  const auto judged = detail::redlock_judge_leader(answers, failed, quorum());
  switch (judged.outcome) {
    case detail::RedlockLeader::leader:
      return LeaderInfo{.candidate = judged.leader.candidate, .term = judged.leader.term};
    case detail::RedlockLeader::none:
      return std::nullopt;
    case detail::RedlockLeader::unknown:
      break;
  }
  throw ConnectionError(
      fmt::format("dlock: Redlock {} on {}: {} of {} nodes failed (quorum {}), so who leads is "
                  "unknown: {}",
                  what, endpoint(), failed, node_count(), quorum(), why));
}

}  // namespace dlock
