// Internal: the Lua scripts and key layout of the primitives beyond the mutex
// on Redis: the read-write lock, the semaphore with leased permits, and fair
// (FIFO) mode of the mutex. docs/primitives.md explains each one.
//
// The scripts are tested directly against a real redis-server
// (tests/integration/redis/redis_primitive_scripts_test.cpp); RedisBackend
// calls them through its client (src/redis/redis_primitives.cpp: the
// primitives, and LockOptions::fair).
//
// Conventions as in redis_scripts.hpp: every name and value travels as
// KEYS/ARGV, never spliced into the text; all keys of one name share the hash
// tag {name}; every fencing counter follows the mutex's token rule
// (counter = max(counter, TIME in µs) + 1, kept by keep_counter(); docs/safety.md
// "Fencing tokens on Redis"), and shares the mutex's counter key P{N}:fence.
// Lease sets are sorted sets of owner ids scored by their expiry in server
// milliseconds (TIME), so each member expires on its own: every script first
// drops the members whose score has passed, and keeps the set's own key
// alive exactly until its latest member's expiry.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "redis_keys.hpp"
#include "redis_scripts.hpp"

namespace dlock::detail {

/// The keys of one name's primitives (prefix P, name N), beside the mutex's
/// P{N}, P{N}:fence and P{N}:released (redis_keys()).
struct RedisPrimitiveKeys {
  std::string fence;           ///< P{N}:fence, shared with the mutex
  std::string channel;         ///< P{N}:released, shared with the mutex
  std::string rw_writer;       ///< P{N}:rw:writer    string: the writer's owner id, PX ttl
  std::string rw_readers;      ///< P{N}:rw:readers   zset: reader owner id -> expiry (ms)
  std::string rw_waiting;      ///< P{N}:rw:waiting   string: a blocked writer's owner id, PX its ttl
  std::string sem_permits;     ///< P{N}:sem:permits  zset: permit owner id -> expiry (ms)
  std::string sem_count;       ///< P{N}:sem:count    string: the operator's permit count (absent: the caller's)
  std::string fair_queue;      ///< P{N}:queue        zset: waiter owner id -> arrival (µs)
  std::string fair_deadlines;  ///< P{N}:queue:ttl    zset: waiter owner id -> expiry (ms)
  std::string leader;          ///< P{N}:leader       string: the leader's owner id, PX ttl
  std::string leader_info;     ///< P{N}:leader:info  hash: candidate, term; same expiry as leader
  std::string rw_tokens;       ///< P{N}:rw:tokens    hash: reader owner id -> its lease's token; expiry as rw_readers
  std::string sem_tokens;      ///< P{N}:sem:tokens   hash: permit owner id -> its lease's token; expiry as sem_permits
};

[[nodiscard]] inline RedisPrimitiveKeys redis_primitive_keys(std::string_view prefix, std::string_view name) {
  RedisKeys k = redis_keys(prefix, name);
  return RedisPrimitiveKeys{k.fence,
                            k.channel,
                            k.lock + ":rw:writer",
                            k.lock + ":rw:readers",
                            k.lock + ":rw:waiting",
                            k.lock + ":sem:permits",
                            k.lock + ":sem:count",
                            k.lock + ":queue",
                            k.lock + ":queue:ttl",
                            k.lock + ":leader",
                            k.lock + ":leader:info",
                            k.lock + ":rw:tokens",
                            k.lock + ":sem:tokens"};
}

/// lua_join() for a text already joined: a LuaText followed by a literal.
template <std::size_t A, std::size_t B>
[[nodiscard]] constexpr LuaText<A + B - 1> lua_join(const LuaText<A>& a, const char (&b)[B]) noexcept {
  LuaText<A + B - 1> out;
  for (std::size_t i = 0; i + 1 < A; ++i) out.chars[i] = a.chars[i];
  for (std::size_t i = 0; i < B; ++i) out.chars[A - 1 + i] = b[i];
  return out;
}

/// Lua helpers of the primitives' scripts (after lua_counter_helpers).
///
/// next_token(key, now): the mutex's token rule: sets the counter to
/// max(counter, now) + 1 and returns it as a string (INCR when the counter is
/// ahead, so a non-integer counter is an error before anything is written).
/// reader_token(key, now): max(counter, now), written back, not incremented:
/// a reader's token (docs/primitives.md, "What a reader's token means").
/// prune(zset, now_ms): drops the members whose expiry has passed.
/// keep_set(zset[, tokens]): expires the set's key (and its token hash) with
/// its latest member.
/// prune_leases(zset, tokens, now_ms): prune() that also drops the expired
/// members' tokens from the lease set's token hash (one call when none expired).
/// grant_lease(zset, tokens, fence, owner, ttl_ms, c, fence_ms, drawn): records
/// the lease of `owner` in the set with its token c (kept so that an in-doubt
/// retry gets its own token back), keeps the counter alive (`drawn`: c is the
/// counter's value, just drawn; else the counter is read; `alone`: the set was
/// empty, so this lease's expiry is the set's) and returns {1, c}.
/// first_expiry(zset, now_ms): ms until the earliest member expires (-1: none).
/// expiry(ttl_ms): the server-ms score of a lease or waiter that lives ttl_ms
/// from now, rounded up, so that it is never earlier than TIME + ttl (and so
/// never earlier than the client's started + ttl). A member counts as expired
/// once its score <= now_ms (TIME rounded down), as a key with PX does.
/// int(x): x as an integer string. Lua numbers handed to redis.call() are
/// converted with 14 significant digits, too few for µs since the epoch.
inline constexpr auto lua_primitive_helpers = lua_join(lua_counter_helpers, R"lua(
local function int(x)
  return string.format('%.0f', x)
end
local function next_token(key, now)
  local c = redis.call('GET', key)
  if not c or (tonumber(c) or now) < now then
    c = int(now + 1)
    redis.call('SET', key, c)
  else
    local n = redis.call('INCR', key)
    if n < 9007199254740992 then c = int(n) else c = redis.call('GET', key) end
  end
  return c
end
local function reader_token(key, now)
  local c = redis.call('GET', key)
  if c and not tonumber(c) then
    return redis.error_reply('ERR fencing counter ' .. key .. ' is not an integer')
  end
  if not c or tonumber(c) < now then
    c = int(now)
    redis.call('SET', key, c)
  end
  return c
end
local function prune(zset, now_ms)
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now_ms)
end
local function keep_set(zset, tokens)
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', zset, last[2])
    if tokens then redis.call('PEXPIREAT', tokens, last[2]) end
  end
end
local function prune_leases(zset, tokens, now_ms)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms)
  if #dead == 0 then return end
  for i = 1, #dead, 1000 do
    redis.call('HDEL', tokens, unpack(dead, i, math.min(i + 999, #dead)))
  end
  prune(zset, now_ms)
end
local function first_expiry(zset, now_ms)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) - now_ms end
  return -1
end
local now = now_us()
local now_ms = math.floor(now / 1000)
local function expiry(ttl_ms)
  return int(math.ceil(now / 1000) + tonumber(ttl_ms))
end
local function grant_lease(zset, tokens, fence, owner, ttl_ms, c, fence_ms, drawn, alone)
  keep_counter(fence, drawn and c or redis.call('GET', fence) or c, now, fence_ms)
  local e = expiry(ttl_ms)
  redis.call('ZADD', zset, e, owner)
  redis.call('HSET', tokens, owner, c)
  if alone then
    redis.call('PEXPIREAT', zset, e)
    redis.call('PEXPIREAT', tokens, e)
  else
    keep_set(zset, tokens)
  end
  return {1, c}
end
)lua");

// ---- read-write lock ----

/// KEYS[1] rw_writer, KEYS[2] rw_readers, KEYS[3] rw_waiting, KEYS[4] fence,
/// KEYS[5] rw_tokens; ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3] fence ttl ms
/// (fence_pttl()).
/// A read lease: granted unless a writer holds the name or a writer is
/// waiting (writer preference). Returns {1, token} or {0, ms until the writer
/// or the waiting mark expires}. Token: reader_token(), kept with the lease
/// in KEYS[5]. A reader already in the set (an in-doubt retry) is granted
/// again, whatever waits, with its lease's own token.
inline constexpr auto redis_rw_read_acquire_text = lua_join(lua_primitive_helpers, R"lua(
prune_leases(KEYS[2], KEYS[5], now_ms)
local c
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  c = redis.call('HGET', KEYS[5], ARGV[1])
else
  local w = redis.call('PTTL', KEYS[1])
  if w ~= -2 then return {0, w} end
  local waiting = redis.call('PTTL', KEYS[3])
  if waiting ~= -2 then return {0, waiting} end
end
local drawn = not c
if drawn then
  c = reader_token(KEYS[4], now)
  if type(c) == 'table' then return c end
end
return grant_lease(KEYS[2], KEYS[5], KEYS[4], ARGV[1], ARGV[2], c, ARGV[3], drawn)
)lua");
inline constexpr std::string_view redis_rw_read_acquire_script = redis_rw_read_acquire_text.view();

/// KEYS[1] rw_writer, KEYS[2] rw_readers, KEYS[3] rw_waiting, KEYS[4] fence;
/// ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3] fence ttl ms, ARGV[4] the waiting
/// mark's ttl ms. The write lease: granted when no writer and no live reader
/// holds the name; the token is next_token() (as the mutex's). A writer that
/// finds readers sets the waiting mark (unless another writer's is there) so
/// that no new reader enters, and gets {0, ms until the first reader
/// expires}. Any writer's grant clears the mark. A writer that already holds
/// (in-doubt retry) gets its TTL reset and the counter's current value.
inline constexpr auto redis_rw_write_acquire_text = lua_join(lua_primitive_helpers, R"lua(
local held = redis.call('PTTL', KEYS[1])
if held ~= -2 then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, held} end
  local c = redis.call('GET', KEYS[4])
  if c then
    keep_counter(KEYS[4], c, now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, c}
  end
end
prune(KEYS[2], now_ms)
local first = first_expiry(KEYS[2], now_ms)
if first >= 0 then
  local waiting = redis.call('GET', KEYS[3])
  if not waiting or waiting == ARGV[1] then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4]) end
  return {0, first}
end
local c = next_token(KEYS[4], now)
keep_counter(KEYS[4], c, now, ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, c}
)lua");
inline constexpr std::string_view redis_rw_write_acquire_script = redis_rw_write_acquire_text.view();

// The writer's release and extension are the mutex's scripts on KEYS[1] =
// rw_writer: redis_release_script and redis_extend_script.

// ---- leases in a sorted set: readers and permits ----

/// KEYS[1] the lease set, KEYS[2] its token hash; ARGV[1] owner id, ARGV[2]
/// release channel ('' = do not publish), ARGV[3] '1': publish only when the
/// set is left empty (the last reader; what a writer waits for), '0': on
/// every release (a permit).
/// Removes ARGV[1] (and its token) if its lease is live. Returns 1
/// (released), 0 (expired or not there), or {1, error} when released but the
/// PUBLISH was refused.
inline constexpr auto redis_set_release_text = lua_join(lua_primitive_helpers, R"lua(
prune_leases(KEYS[1], KEYS[2], now_ms)
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' and (ARGV[3] ~= '1' or redis.call('ZCARD', KEYS[1]) == 0) then
  local r = redis.pcall('PUBLISH', ARGV[2], ARGV[1])
  if type(r) == 'table' and r.err then return {1, r.err} end
end
return 1
)lua");
inline constexpr std::string_view redis_set_release_script = redis_set_release_text.view();

/// KEYS[1] the lease set, KEYS[2] its token hash; ARGV[1] owner id, ARGV[2]
/// ttl ms. Resets the member's expiry to now + ttl if its lease is live.
/// Returns 1, or 0 if lost.
inline constexpr auto redis_set_extend_text = lua_join(lua_primitive_helpers, R"lua(
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) <= now_ms then return 0 end
redis.call('ZADD', KEYS[1], 'XX', expiry(ARGV[2]), ARGV[1])
keep_set(KEYS[1], KEYS[2])
return 1
)lua");
inline constexpr std::string_view redis_set_extend_script = redis_set_extend_text.view();

// ---- semaphore ----

/// KEYS[1] sem_permits, KEYS[2] sem_count, KEYS[3] fence, KEYS[4]
/// sem_tokens; ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3] fence ttl ms,
/// ARGV[4] the caller's permit count.
/// One permit: granted while fewer than N live permits are held, N = the
/// count key if set, else ARGV[4]. Returns {1, token} (next_token(), kept
/// with the lease in KEYS[4]), or {0, ms until the first permit expires (-1:
/// none held, N = 0)}. A permit already held by ARGV[1] (in-doubt retry) is
/// granted again with its lease's own token. Release and extension: the
/// lease-set scripts (release with ARGV[3] = '0').
inline constexpr auto redis_sem_acquire_text = lua_join(lua_primitive_helpers, R"lua(
prune_leases(KEYS[1], KEYS[4], now_ms)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local c
if held then c = redis.call('HGET', KEYS[4], ARGV[1]) or redis.call('GET', KEYS[3]) end
local drawn = not c
local alone = false
if drawn then
  local n = tonumber(redis.call('GET', KEYS[2]) or ARGV[4])
  if not n then return redis.error_reply('ERR permit count ' .. KEYS[2] .. ' is not a number') end
  if not held then
    local count = redis.call('ZCARD', KEYS[1])
    if count >= n then return {0, first_expiry(KEYS[1], now_ms)} end
    alone = count == 0
  end
  c = next_token(KEYS[3], now)
end
return grant_lease(KEYS[1], KEYS[4], KEYS[3], ARGV[1], ARGV[2], c, ARGV[3], drawn, alone)
)lua");
inline constexpr std::string_view redis_sem_acquire_script = redis_sem_acquire_text.view();

// ---- fair (FIFO) mode of the mutex ----

/// KEYS[1] the lock (P{N}, as the mutex), KEYS[2] fence, KEYS[3] fair_queue,
/// KEYS[4] fair_deadlines; ARGV[1] owner id, ARGV[2] ttl ms, ARGV[3] fence
/// ttl ms, ARGV[4] waiter ttl ms.
/// Waiters whose deadline has passed are dropped first (a dead waiter leaves
/// the queue within its ttl; a live one renews it with every attempt, so the
/// waiter ttl must exceed the longest wait between two attempts). The lock is
/// granted only when it is free and the caller is the queue's head (or the
/// queue is empty); the token and the in-doubt case are the mutex's. Otherwise
/// the caller joins the queue at the back (keeping its place if it is in it)
/// and gets {0, ms}: the holder's pttl, or while the lock is free the time
/// until the head's deadline (the head takes it, or drops out, by then).
inline constexpr auto redis_fair_acquire_text = lua_join(lua_primitive_helpers, R"lua(
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_ms)
for _, w in ipairs(dead) do redis.call('ZREM', KEYS[3], w) end
prune(KEYS[4], now_ms)
local function wait(ms)
  redis.call('ZADD', KEYS[3], 'NX', int(now), ARGV[1])
  redis.call('ZADD', KEYS[4], expiry(ARGV[4]), ARGV[1])
  keep_set(KEYS[4])
  redis.call('PEXPIREAT', KEYS[3], redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2])
  return {0, ms}
end
local held = redis.call('PTTL', KEYS[1])
local c
if held ~= -2 then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return wait(held) end
  c = redis.call('GET', KEYS[2])
else
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head and head ~= ARGV[1] then
    return wait(tonumber(redis.call('ZSCORE', KEYS[4], head)) - now_ms)
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if not c then c = next_token(KEYS[2], now) end
keep_counter(KEYS[2], c, now, ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, c}
)lua");
inline constexpr std::string_view redis_fair_acquire_script = redis_fair_acquire_text.view();

/// KEYS[1] the lock, KEYS[2] fair_queue, KEYS[3] fair_deadlines; ARGV[1] owner
/// id, ARGV[2] release channel ('' = do not publish).
/// Deletes the lock if ARGV[1] holds it and publishes the live head's owner id
/// ('' when nobody waits) on the channel: the message names the one waiter
/// that can take the lock, so a client wakes only that waiter. Returns as
/// redis_release_script. Extension: redis_extend_script.
inline constexpr auto redis_fair_release_text = lua_join(lua_primitive_helpers, R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
for _, w in ipairs(dead) do redis.call('ZREM', KEYS[2], w) end
prune(KEYS[3], now_ms)
if ARGV[2] ~= '' then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
  local r = redis.pcall('PUBLISH', ARGV[2], head)
  if type(r) == 'table' and r.err then return {1, r.err} end
end
return 1
)lua");
inline constexpr std::string_view redis_fair_release_script = redis_fair_release_text.view();

/// KEYS[1] the lock, KEYS[2] fair_queue, KEYS[3] fair_deadlines; ARGV[1] owner
/// id, ARGV[2] release channel ('' = do not publish).
/// A waiter that gives up (deadline, cancellation) leaves the queue at once
/// instead of blocking it for its waiter ttl; if it was the head and the lock
/// is free, the new head is woken as on a release. Returns 1 if it was queued.
inline constexpr auto redis_fair_leave_text = lua_join(lua_primitive_helpers, R"lua(
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if head == ARGV[1] and ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.pcall('PUBLISH', ARGV[2], redis.call('ZRANGE', KEYS[2], 0, 0)[1] or '')
end
return 1
)lua");
inline constexpr std::string_view redis_fair_leave_script = redis_fair_leave_text.view();

// ---- election ----

/// KEYS[1] leader, KEYS[2] fence, KEYS[3] leader_info; ARGV[1] owner id,
/// ARGV[2] ttl ms, ARGV[3] fence ttl ms, ARGV[4] candidate id.
/// Leadership is a mutex on KEYS[1] (token = term, by next_token(); an
/// in-doubt retry by the leader gets its own term back from the info hash)
/// that also records {candidate, term} in KEYS[3] with the same expiry, for
/// observers. Returns {1, term} or {0, pttl of the leader}.
inline constexpr auto redis_leader_acquire_text = lua_join(lua_primitive_helpers, R"lua(
local held = redis.call('PTTL', KEYS[1])
local c
if held ~= -2 then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, held} end
  c = redis.call('HGET', KEYS[3], 'term')
end
if not c then c = next_token(KEYS[2], now) end
keep_counter(KEYS[2], c, now, ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'candidate', ARGV[4], 'term', c)
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {1, c}
)lua");
inline constexpr std::string_view redis_leader_acquire_script = redis_leader_acquire_text.view();

/// KEYS[1] leader, KEYS[2] leader_info; ARGV[1] owner id, ARGV[2] ttl ms.
/// Extends both if ARGV[1] leads. Returns 1, or 0 if leadership was lost.
inline constexpr std::string_view redis_leader_extend_script = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
)lua";

/// KEYS[1] leader, KEYS[2] leader_info; ARGV[1] owner id, ARGV[2] release
/// channel ('' = do not publish). Resigns if ARGV[1] leads: deletes both and
/// publishes. Returns as redis_release_script.
inline constexpr std::string_view redis_leader_release_script = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[2] ~= '' then
  local r = redis.pcall('PUBLISH', ARGV[2], ARGV[1])
  if type(r) == 'table' and r.err then return {1, r.err} end
end
return 1
)lua";

/// KEYS[1] fence, KEYS[2] leader, KEYS[3] leader_info; ARGV[1] token,
/// ARGV[2] fence ttl ms, ARGV[3] owner id. Redlock's fence raise for a
/// leader's grant: raises the counter as redis_fence_raise_script does and,
/// if ARGV[3] still leads here, writes the token as the term into its info
/// (never into another leader's), so that every node raised reports the
/// grant's token as its term (docs/primitives.md, "Redlock"). Returns 1.
inline constexpr auto redis_leader_raise_text = lua_join(lua_counter_helpers, R"lua(
raise_counter(KEYS[1], ARGV[1], ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('HSET', KEYS[3], 'term', ARGV[1]) end
return 1
)lua");
inline constexpr std::string_view redis_leader_raise_script = redis_leader_raise_text.view();

/// KEYS[1] leader, KEYS[2] leader_info. Who leads: {candidate, term}, or nil
/// when nobody does (the info is read only while the leader key exists).
inline constexpr std::string_view redis_leader_read_script = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HMGET', KEYS[2], 'candidate', 'term')
)lua";

/// KEYS[1] leader, KEYS[2] leader_info. Who leads, for Redlock: {candidate,
/// term, owner id}, or nil when nobody does (Redlock counts the nodes by the
/// leader's owner id: redlock_judge_leader()).
inline constexpr std::string_view redlock_leader_read_script = R"lua(
local owner = redis.call('GET', KEYS[1])
if not owner then return false end
local info = redis.call('HMGET', KEYS[2], 'candidate', 'term')
return {info[1], info[2], owner}
)lua";

}  // namespace dlock::detail
