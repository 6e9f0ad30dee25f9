// The script calls of RedisBackend's primitives (read-write lock, semaphore,
// election, fair mode): the one place that knows each primitive script's
// KEYS and ARGV layout. The blocking operations (src/redis/redis_primitives.cpp)
// and the asynchronous ones (src/redis/redis_primitives_async.cpp) both send
// what these build; the scripts themselves are in redis_primitive_scripts.hpp.
#pragma once

#include <dlock/backend.hpp>
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/detail/redis_protocol.hpp>
#include <dlock/detail/redis_scripts.hpp>
#include <dlock/detail/sha1.hpp>
#include <dlock/detail/time.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dlock::detail {

/// One primitive operation's script call, the key that names it in messages
/// and what it does ("read acquire", ...).
struct PrimitiveCall {
  redis_proto::ScriptCall call;
  std::string key;
  std::string_view what;
};

/// The call of the primitive script whose text is `Text` (its SHA1 computed once).
template <const std::string_view& Text>
redis_proto::ScriptCall primitive_script_call(std::vector<std::string> keys, std::vector<std::string> args) {
  static const std::string sha = sha1_hex(Text);
  return redis_proto::ScriptCall{.keys = std::move(keys), .args = std::move(args), .text = Text, .sha = sha};
}

inline std::string primitive_ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

/// An acquire script's ARGV: owner id, ttl ms, fence ttl ms and `extra` if any.
inline std::vector<std::string> primitive_acquire_args(const AcquireRequest& r, std::chrono::milliseconds fence_ttl,
                                                       std::string extra) {
  std::vector<std::string> args{std::string(r.owner.str()), primitive_ms(r.ttl),
                                primitive_ms(fence_pttl(r.ttl, fence_ttl))};
  if (!extra.empty()) args.push_back(std::move(extra));
  return args;
}

// ---- read-write lock ----

inline PrimitiveCall read_acquire_call(const RedisPrimitiveKeys& k, const AcquireRequest& r,
                                       std::chrono::milliseconds fence_ttl) {
  return {
      primitive_script_call<redis_rw_read_acquire_script>(
          {k.rw_writer, k.rw_readers, k.rw_waiting, k.fence, k.rw_tokens}, primitive_acquire_args(r, fence_ttl, {})),
      k.rw_readers, "read acquire"};
}

/// The writer's waiting mark (ARGV[4]) lives as long as one lease would: it
/// lapses by itself when the writer gives up or dies; a live writer renews it
/// every attempt.
inline PrimitiveCall write_acquire_call(const RedisPrimitiveKeys& k, const AcquireRequest& r,
                                        std::chrono::milliseconds fence_ttl) {
  return {
      primitive_script_call<redis_rw_write_acquire_script>({k.rw_writer, k.rw_readers, k.rw_waiting, k.fence},
                                                           primitive_acquire_args(r, fence_ttl, primitive_ms(r.ttl))),
      k.rw_writer, "write acquire"};
}

// A lease in a sorted set (a reader or a permit) with its token hash.
// `last_only`: publish only when the set is left empty (what a writer waits for).
inline PrimitiveCall member_release_call(const std::string& set, const std::string& tokens, const std::string& channel,
                                         std::string_view owner, bool last_only) {
  return {primitive_script_call<redis_set_release_script>({set, tokens},
                                                          {std::string(owner), channel, last_only ? "1" : "0"}),
          set, "release"};
}
inline PrimitiveCall member_extend_call(const std::string& set, const std::string& tokens, std::string_view owner,
                                        std::chrono::milliseconds ttl) {
  return {primitive_script_call<redis_set_extend_script>({set, tokens}, {std::string(owner), primitive_ms(ttl)}), set,
          "extend"};
}

class RedisClient;
/// Runs release call `c` (a lease set's release script, which may publish on
/// `channel`) on `node`: true if the lease was released, false if it was not
/// held. A refused PUBLISH is noted in node.facts(), not thrown.
/// (src/redis/redis_primitives.cpp; RedisBackend and RedisAdmin use it.)
bool run_release_call(RedisClient& node, const PrimitiveCall& c, const std::string& channel);

inline PrimitiveCall reader_release_call(const RedisPrimitiveKeys& k, std::string_view owner) {
  return member_release_call(k.rw_readers, k.rw_tokens, k.channel, owner, true);
}
inline PrimitiveCall reader_extend_call(const RedisPrimitiveKeys& k, std::string_view owner,
                                        std::chrono::milliseconds ttl) {
  return member_extend_call(k.rw_readers, k.rw_tokens, owner, ttl);
}

// ---- semaphore ----

inline PrimitiveCall permit_acquire_call(const RedisPrimitiveKeys& k, const AcquireRequest& r,
                                         std::chrono::milliseconds fence_ttl, std::uint32_t permits) {
  return {
      primitive_script_call<redis_sem_acquire_script>({k.sem_permits, k.sem_count, k.fence, k.sem_tokens},
                                                      primitive_acquire_args(r, fence_ttl, std::to_string(permits))),
      k.sem_permits, "permit acquire"};
}
inline PrimitiveCall permit_release_call(const RedisPrimitiveKeys& k, std::string_view owner) {
  return member_release_call(k.sem_permits, k.sem_tokens, k.channel, owner, false);
}
inline PrimitiveCall permit_extend_call(const RedisPrimitiveKeys& k, std::string_view owner,
                                        std::chrono::milliseconds ttl) {
  return member_extend_call(k.sem_permits, k.sem_tokens, owner, ttl);
}

// ---- election ----

inline PrimitiveCall leader_acquire_call(const RedisPrimitiveKeys& k, const AcquireRequest& r,
                                         std::chrono::milliseconds fence_ttl, std::string_view candidate) {
  return {primitive_script_call<redis_leader_acquire_script>(
              {k.leader, k.fence, k.leader_info}, primitive_acquire_args(r, fence_ttl, std::string(candidate))),
          k.leader, "campaign"};
}
inline PrimitiveCall leader_release_call(const RedisPrimitiveKeys& k, std::string_view owner) {
  return {
      primitive_script_call<redis_leader_release_script>({k.leader, k.leader_info}, {std::string(owner), k.channel}),
      k.leader, "resign"};
}
inline PrimitiveCall leader_extend_call(const RedisPrimitiveKeys& k, std::string_view owner,
                                        std::chrono::milliseconds ttl) {
  return {primitive_script_call<redis_leader_extend_script>({k.leader, k.leader_info},
                                                            {std::string(owner), primitive_ms(ttl)}),
          k.leader, "extend"};
}

/// Redlock's fence raise of a leader's grant (`token`, its lease ttl, the
/// node's fence_ttl floor): also writes the token as the term of `owner`'s info.
inline PrimitiveCall leader_raise_call(const RedisPrimitiveKeys& k, std::string_view owner, std::uint64_t token,
                                       std::chrono::milliseconds ttl, std::chrono::milliseconds fence_floor) {
  return {primitive_script_call<redis_leader_raise_script>(
              {k.fence, k.leader, k.leader_info},
              {std::to_string(token), primitive_ms(fence_pttl(ttl, fence_floor)), std::string(owner)}),
          k.leader, "leader fence raise"};
}
/// Redlock's read of who leads on one node: {candidate, term, owner id} or nil.
inline PrimitiveCall redlock_leader_read_call(const RedisPrimitiveKeys& k) {
  return {primitive_script_call<redlock_leader_read_script>({k.leader, k.leader_info}, {}), k.leader, "leader read"};
}

// ---- fair mode (the mutex's key `lock` with the name's queue) ----

inline PrimitiveCall fair_acquire_call(const std::string& lock, const RedisPrimitiveKeys& k, const AcquireRequest& r,
                                       std::chrono::milliseconds fence_ttl, std::chrono::milliseconds waiter_ttl) {
  return {
      primitive_script_call<redis_fair_acquire_script>({lock, k.fence, k.fair_queue, k.fair_deadlines},
                                                       primitive_acquire_args(r, fence_ttl, primitive_ms(waiter_ttl))),
      lock, "fair acquire"};
}
inline PrimitiveCall fair_release_call(const std::string& lock, const RedisPrimitiveKeys& k, std::string_view owner) {
  return {primitive_script_call<redis_fair_release_script>({lock, k.fair_queue, k.fair_deadlines},
                                                           {std::string(owner), k.channel}),
          lock, "release"};
}
inline PrimitiveCall fair_leave_call(const std::string& lock, const RedisPrimitiveKeys& k, std::string_view owner) {
  return {primitive_script_call<redis_fair_leave_script>({lock, k.fair_queue, k.fair_deadlines},
                                                         {std::string(owner), k.channel}),
          lock, "queue leave"};
}

}  // namespace dlock::detail
