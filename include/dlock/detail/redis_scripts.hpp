// Internal: the Lua scripts of the Redis backend (and of Redlock's nodes).
//
// Every name and value travels as KEYS/ARGV; nothing is spliced into the
// script text, so the text (and its SHA1) is the same for every lock. The
// node client loads them with SCRIPT LOAD once per connection, calls EVALSHA,
// and falls back to EVAL when the server answers NOSCRIPT (SCRIPT FLUSH).
// docs/redis.md explains each script.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <string_view>

namespace dlock::detail {

/// A script text assembled at compile time from pieces (so that the Lua
/// helpers below exist once in the source, yet every script stays one
/// self-contained text with one SHA1).
template <std::size_t N>
struct LuaText {
  std::array<char, N> chars{};
  [[nodiscard]] constexpr std::string_view view() const noexcept { return {chars.data(), N - 1}; }
};
template <std::size_t A, std::size_t B>
[[nodiscard]] constexpr LuaText<A + B - 1> lua_join(const char (&a)[A], const char (&b)[B]) noexcept {
  LuaText<A + B - 1> out;
  for (std::size_t i = 0; i + 1 < A; ++i) out.chars[i] = a[i];
  for (std::size_t i = 0; i < B; ++i) out.chars[A - 1 + i] = b[i];
  return out;
}

/// Lua helpers of the scripts that write a fencing counter.
///
/// now_us(): the server clock (TIME) in microseconds since the epoch, as a Lua
/// number. Lua numbers are doubles; this is exact because the value (about
/// 1.8e15 today) stays below 2^53 (about 9.0e15, reached in the year 2255).
/// Comparing it with tonumber(counter) is exact as well: a counter below 2^53
/// converts exactly, and one at or above 2^53 converts to a double that is
/// still at least 2^53, so it still compares as larger.
///
/// keep_counter(key, c, now, ms): sets the counter's expiry to `ms`
/// milliseconds after the server clock reaches max(c, now) microseconds
/// (rounded up to the next millisecond). Redis expires a key by the same
/// clock that TIME reads, so once the counter is gone, TIME exceeds every
/// value it ever held by `ms`: forgetting it cannot make tokens go backwards
/// (docs/safety.md, "Fencing tokens on Redis").
///
/// raise_counter(key, token, ms): raises the counter to `token` if it is lower
/// (compared exactly, as decimal strings, not as Lua doubles), never lowers
/// it, and keeps it for `ms` as keep_counter() does (Redlock's fence raise).
inline constexpr char lua_counter_helpers[] = R"lua(
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function keep_counter(key, c, now, ms)
  local v = tonumber(c) or now
  if v < now then v = now end
  redis.call('PEXPIREAT', key, string.format('%.0f', math.floor(v / 1000) + 1 + tonumber(ms)))
end
local function raise_counter(key, token, ms)
  local c = redis.call('GET', key)
  if c == false or string.len(c) < string.len(token) or (string.len(c) == string.len(token) and c < token) then
    redis.call('SET', key, token)
    c = token
  end
  keep_counter(key, c, now_us(), ms)
end
)lua";

/// KEYS[1] lock, KEYS[2] fence; ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3]
/// fence ttl ms (fence_pttl()); Redlock only: ARGV[4] the attempt's clock
/// floor in µs, ARGV[5] the lag in µs allowed to the server clock's floor.
///
/// Returns {1, token as a string} when acquired, {0, pttl of the holder} (-1:
/// the holder set no TTL) when another owner holds the lock.
///
/// The lock is tried first, with SET NX PX (so the script takes a free lock
/// exactly as a plain `SET key value NX PX ttl` client would); the holder is
/// looked at (GET, PTTL, and TYPE for the error) only when that finds the key
/// set. A grant makes five calls (SET NX PX, GET of the counter, TIME, SET of
/// the counter, its PEXPIREAT), contention three (SET NX PX, GET, PTTL).
/// SET NX PX runs under pcall: a server over maxmemory refuses a script's first
/// write (OOM), and then the key decides: another owner's is contention, this
/// owner's the in-doubt grant below (PEXPIRE and PEXPIREAT are not refused),
/// a free key the OOM error (docs/safety.md).
///
/// The token rule: counter = max(counter, floor), then + 1, where the floor is
/// the server clock in µs (TIME), or for Redlock max(ARGV[4], TIME - ARGV[5]).
/// So a token is never below the clock it was issued at, and a counter that
/// went back (restored from an old snapshot, or forgotten) is lifted above
/// every earlier token as long as the clock has passed them (docs/safety.md).
/// A counter ahead of the floor is incremented with INCR (exact for 64 bits).
/// An error after the lock was set (a counter of the wrong type, or not an
/// integer) deletes the lock before answering, so it leaves no lock behind.
///
/// When the lock already holds ARGV[1], this owner's earlier attempt ran
/// although its reply was lost (in doubt): that is a grant. The TTL is reset
/// to ARGV[2] and the counter's current value returned, which is this owner's
/// token: only an acquire that sets the lock key increments the counter, the
/// last one that did was this owner's (owner ids are unique per acquisition),
/// every other acquire since found the key held and changed nothing, and
/// Redlock's fence raise for this owner's grant only lifts it to that grant's
/// token. If the counter is gone (deleted by hand), a new token is issued.
inline constexpr auto redis_acquire_text = lua_join(lua_counter_helpers, R"lua(
local set = redis.pcall('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local refused = type(set) == 'table' and set.err
if refused then set = false end
if not set then
  local v = redis.pcall('GET', KEYS[1])
  if type(v) == 'table' and v.err then
    local t = redis.call('TYPE', KEYS[1])
    return redis.error_reply('WRONGTYPE lock key ' .. KEYS[1] .. ' holds a ' .. (t.ok or t) .. ', not a string')
  end
  if refused and not v then return redis.error_reply(refused) end
  if v ~= ARGV[1] then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local function undo(err)
  if set then redis.call('DEL', KEYS[1]) end
  return redis.error_reply(err)
end
local c = redis.pcall('GET', KEYS[2])
if type(c) == 'table' and c.err then return undo(c.err) end
local now = now_us()
if not set and c then
  keep_counter(KEYS[2], c, now, ARGV[3])
  return {1, c}
end
local floor = now - tonumber(ARGV[5] or '0')
if ARGV[4] and tonumber(ARGV[4]) > floor then floor = tonumber(ARGV[4]) end
if not c or (tonumber(c) or floor) < floor then
  c = string.format('%.0f', floor + 1)
  redis.call('SET', KEYS[2], c)
else
  local r = redis.pcall('INCR', KEYS[2])
  if type(r) == 'table' and r.err then return undo(r.err) end
  c = redis.call('GET', KEYS[2])
end
keep_counter(KEYS[2], c, now, ARGV[3])
return {1, c}
)lua");
inline constexpr std::string_view redis_acquire_script = redis_acquire_text.view();

/// KEYS[1] lock; ARGV[1] owner id, ARGV[2] release channel ('' = do not publish).
/// Deletes the lock and publishes the release if ARGV[1] holds it. Returns 1
/// if released, 0 if it had expired or another owner holds it, and
/// {1, error} if released but the PUBLISH was refused (an ACL user without
/// permission for the channel): the release does not depend on the publish.
/// Redlock passes '' to undo a failed attempt without waking waiters.
inline constexpr std::string_view redis_release_script = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    local r = redis.pcall('PUBLISH', ARGV[2], ARGV[1])
    if type(r) == 'table' and r.err then
      return {1, r.err}
    end
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
/// as decimal strings, not as Lua doubles); never lowers it; keeps it as the
/// acquire script does. Returns 1. Redlock's tokens are the maximum over the
/// nodes that granted; raising the granting nodes' counters to that maximum
/// is what makes every later quorum see it (docs/safety.md).
inline constexpr auto redis_fence_raise_text = lua_join(lua_counter_helpers, R"lua(
raise_counter(KEYS[1], ARGV[1], ARGV[2])
return 1
)lua");
inline constexpr std::string_view redis_fence_raise_script = redis_fence_raise_text.view();

/// The fencing counter's expiry beyond the server clock passing its value
/// (ARGV[3] of the acquire script): max(floor, 3 x ttl), where floor is
/// RedisOptions::fence_ttl; at most 100 years. The counter must outlive the
/// lock so that an in-doubt retry finds its token (3 x ttl); beyond that,
/// keeping it changes no token (docs/safety.md).
[[nodiscard]] constexpr std::chrono::milliseconds fence_pttl(std::chrono::milliseconds ttl,
                                                             std::chrono::milliseconds floor) noexcept {
  constexpr std::chrono::milliseconds most = std::chrono::hours(24 * 365 * 100);
  const std::chrono::milliseconds three = ttl >= most / 3 ? most : 3 * ttl;
  return std::clamp(std::max(floor, three), std::chrono::milliseconds(1), most);
}

/// Redlock's ARGV[5]: each node floors its counter at max(the attempt's floor,
/// its own TIME - 1 s). The 1 s lets clients whose clocks lag the nodes' by up
/// to that much still give every node the same floor (their counters then stay
/// equal, and a grant needs no fence-raise round). It must not exceed the
/// shortest fence_pttl (RedisOptions::fence_ttl >= 1 s): see docs/safety.md.
inline constexpr std::string_view redlock_clock_lag_us = "1000000";

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
