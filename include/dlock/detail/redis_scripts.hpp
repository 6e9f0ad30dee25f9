// Internal: the Lua scripts of the Redis backend (and of Redlock's nodes).
//
// Every name and value travels as KEYS/ARGV; nothing is spliced into the
// script text, so the text (and its SHA1) is the same for every lock. The
// node client loads them with SCRIPT LOAD once per connection, calls EVALSHA,
// and falls back to EVAL when the server answers NOSCRIPT (SCRIPT FLUSH).
// docs/redis.md explains each script.
#pragma once

#include <array>
#include <string_view>

namespace dlock::detail {

/// KEYS[1] lock, KEYS[2] fence; ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3] fence ttl ms.
/// Returns {1, token as a string} when acquired, {0, pttl of the holder} (-1:
/// the holder set no TTL) when the lock is held. The fencing counter is
/// created from the server clock (TIME, in microseconds) when missing, so
/// tokens keep increasing across its expiry; it is incremented before the
/// lock is set, so an error (e.g. a non-integer counter) leaves no lock behind.
inline constexpr std::string_view redis_acquire_script = R"lua(
local ttl = redis.call('PTTL', KEYS[1])
if ttl ~= -2 then
  local t = redis.call('TYPE', KEYS[1])
  if (t.ok or t) ~= 'string' then
    return redis.error_reply('WRONGTYPE lock key ' .. KEYS[1] .. ' holds a ' .. (t.ok or t) .. ', not a string')
  end
  return {0, ttl}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])))
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('GET', KEYS[2])}
)lua";

/// KEYS[1] lock; ARGV[1] owner id, ARGV[2] release channel ('' = do not publish).
/// Deletes the lock and publishes the release if ARGV[1] holds it. Returns 1
/// if released, 0 if it had expired or another owner holds it. Redlock
/// passes '' to undo a failed attempt without waking waiters.
inline constexpr std::string_view redis_release_script = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], ARGV[1])
  end
  return 1
end
return 0
)lua";

/// KEYS[1] lock; ARGV[1] owner id, ARGV[2] ttl ms.
/// Resets the TTL if ARGV[1] holds the lock. Returns 1 if extended, 0 if lost.
inline constexpr std::string_view redis_extend_script = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
)lua";

/// KEYS[1] fence; ARGV[1] token, ARGV[2] fence ttl ms. Used by Redlock only.
/// Raises the fencing counter to the token if it is lower (compared exactly,
/// as decimal strings, not as Lua doubles); never lowers it. Returns 1.
/// Redlock's tokens are the maximum over the nodes that granted; raising
/// the granting nodes' counters to that maximum is what makes every later
/// quorum see it (docs/safety.md).
inline constexpr std::string_view redis_fence_raise_script = R"lua(
local c = redis.call('GET', KEYS[1])
if c == false or string.len(c) < string.len(ARGV[1]) or (string.len(c) == string.len(ARGV[1]) and c < ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
)lua";

enum class RedisScript : unsigned { acquire, release, extend, fence_raise };
inline constexpr std::size_t redis_script_count = 4;

inline constexpr std::array<std::string_view, redis_script_count> redis_scripts{
    redis_acquire_script, redis_release_script, redis_extend_script, redis_fence_raise_script};

[[nodiscard]] constexpr std::string_view redis_script_name(RedisScript s) noexcept {
  switch (s) {
    case RedisScript::acquire:
      return "acquire";
    case RedisScript::release:
      return "release";
    case RedisScript::extend:
      return "extend";
    case RedisScript::fence_raise:
      return "fence raise";
  }
  return "?";
}

}  // namespace dlock::detail
