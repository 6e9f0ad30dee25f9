// Internal: one lease family's script calls on a Redlock node (the mutex, a
// read-write lock's reader or writer, an election's leader), so that
// RedlockBackend runs every family through the same rounds (acquire, fencing
// counter raise, undo of a failed attempt, release, extend). The calls
// themselves are built by the one place that knows each script's layout:
// redis_protocol.hpp for the mutex, redis_primitive_calls.hpp for the others.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <dlock/detail/redis_protocol.hpp>

namespace dlock::detail {

struct RedlockCalls {
  std::string key;      ///< the lease's key, named in messages (P{N}, P{N}:rw:readers, ...)
  std::string fence;    ///< the counter a grant's token is raised to on the granting nodes (P{N}:fence)
  std::string channel;  ///< where a release publishes (P{N}:released)
  /// One request's acquire call on one node, given the node's fence_ttl
  /// floor and this client's wall clock in µs (the mutex's counter floor; the
  /// primitives' scripts floor at the node's own clock). Empty where the
  /// calls serve only a release or an extension.
  std::function<redis_proto::ScriptCall(std::chrono::milliseconds fence_floor, std::chrono::microseconds clock_floor)>
      acquire;
  /// The release of `owner`'s lease; a failed attempt's undo does not publish.
  std::function<redis_proto::ScriptCall(std::string_view owner, redis_proto::Publish)> release;
  /// The extension of `owner`'s lease to `ttl`.
  std::function<redis_proto::ScriptCall(std::string_view owner, std::chrono::milliseconds ttl)> extend;
  /// The fence raise of `owner`'s grant with token `token` (lease ttl, the
  /// node's fence_ttl floor) on a granting node whose counter is below it.
  /// Empty: the mutex's (redis_proto::fence_raise_call); an election's also
  /// writes the token as the term into the leader's info.
  std::function<redis_proto::ScriptCall(std::string_view owner, std::uint64_t token, std::chrono::milliseconds ttl,
                                        std::chrono::milliseconds fence_floor)>
      raise{};
};

}  // namespace dlock::detail
