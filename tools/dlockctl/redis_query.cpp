#include "redis_query.hpp"

#include <algorithm>
#include <set>

#include <fmt/format.h>

#include <dlock/detail/redis_keys.hpp>
#include <dlock/error.hpp>

namespace dlockctl {

using dlock::detail::RedisClient;
using dlock::detail::RedisValue;

namespace {

constexpr std::size_t batch_size = 500;

// KEYS: lock1, fence1, lock2, fence2, ... For each pair {owner, pttl, token,
// wrong type}; owner false (nil) when missing.
constexpr std::string_view lock_states_script = R"lua(
local out = {}
for i = 1, #KEYS, 2 do
  local t = redis.call('TYPE', KEYS[i])
  t = t.ok or t
  local fence = false
  local f = redis.call('TYPE', KEYS[i + 1])
  if (f.ok or f) == 'string' then fence = redis.call('GET', KEYS[i + 1]) end
  if t == 'string' then
    out[#out + 1] = {redis.call('GET', KEYS[i]), redis.call('PTTL', KEYS[i]), fence, ''}
  elseif t == 'none' then
    out[#out + 1] = {false, -2, fence, ''}
  else
    out[#out + 1] = {false, -2, fence, t}
  end
end
return out
)lua";

// KEYS[1] lock; ARGV[1] channel, ARGV[2] required owner ('' = any).
constexpr std::string_view force_release_script = R"lua(
local t = redis.call('TYPE', KEYS[1])
if (t.ok or t) ~= 'string' then return false end
local owner = redis.call('GET', KEYS[1])
if ARGV[2] ~= '' and owner ~= ARGV[2] then return false end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], owner)
return {owner, ttl}
)lua";

RedisValue checked(RedisClient& node, std::span<const std::string_view> args, std::string_view what) {
  RedisValue r = node.command(args);
  dlock::detail::throw_if_error(r, node.endpoint(), what);
  return r;
}

[[noreturn]] void unexpected(RedisClient& node, std::string_view what) {
  throw dlock::ServerError(fmt::format("dlockctl: unexpected reply to {} from Redis at {}", what, node.endpoint()));
}

}  // namespace

std::string glob_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::optional<std::string> lock_name_of_key(std::string_view prefix, std::string_view key) {
  if (key.size() < prefix.size() + 3 || key.substr(0, prefix.size()) != prefix || key[prefix.size()] != '{' ||
      key.back() != '}')
    return std::nullopt;
  return std::string(key.substr(prefix.size() + 1, key.size() - prefix.size() - 2));
}

std::vector<std::string> scan_keys(RedisClient& node, const std::string& pattern) {
  std::set<std::string> keys;  // SCAN may return a key more than once
  std::string cursor = "0";
  do {
    const std::string_view args[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
    const RedisValue r = checked(node, args, "SCAN");
    if (r.type != RedisValue::Type::array || r.elements.size() != 2 || r.elements[1].type != RedisValue::Type::array)
      unexpected(node, "SCAN");
    cursor = r.elements[0].str;
    for (const auto& k : r.elements[1].elements) keys.insert(k.str);
  } while (cursor != "0");
  return {keys.begin(), keys.end()};
}

std::vector<std::string> scan_lock_names(RedisClient& node, std::string_view prefix) {
  std::vector<std::string> names;
  for (const auto& key : scan_keys(node, glob_escape(prefix) + "{*}"))
    if (auto name = lock_name_of_key(prefix, key)) names.push_back(std::move(*name));
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<LockState> lock_states(RedisClient& node, std::string_view prefix, std::span<const std::string> names) {
  std::vector<LockState> out;
  out.reserve(names.size());
  for (std::size_t begin = 0; begin < names.size(); begin += batch_size) {
    const std::size_t end = std::min(names.size(), begin + batch_size);
    std::vector<std::string> keys;
    for (std::size_t i = begin; i < end; ++i) {
      auto k = dlock::detail::redis_keys(prefix, names[i]);
      keys.push_back(std::move(k.lock));
      keys.push_back(std::move(k.fence));
    }
    const std::string count = std::to_string(keys.size());
    std::vector<std::string_view> args{"EVAL", lock_states_script, count};
    args.insert(args.end(), keys.begin(), keys.end());
    const RedisValue r = checked(node, args, "the lock-state script");
    if (r.type != RedisValue::Type::array || r.elements.size() != end - begin)
      unexpected(node, "the lock-state script");
    for (std::size_t i = begin; i < end; ++i) {
      const RedisValue& e = r.elements[i - begin];
      if (e.type != RedisValue::Type::array || e.elements.size() != 4) unexpected(node, "the lock-state script");
      LockState s;
      s.name = names[i];
      if (e.elements[0].type == RedisValue::Type::string) s.owner = e.elements[0].str;
      s.pttl_ms = e.elements[1].integer;
      if (e.elements[2].type == RedisValue::Type::string) s.token = e.elements[2].str;
      s.wrong_type = e.elements[3].str;
      if (!s.owner) s.pttl_ms = -2;
      out.push_back(std::move(s));
    }
  }
  return out;
}

WaitRecords wait_records(RedisClient& node, std::string_view prefix) {
  WaitRecords out;
  const auto keys = scan_keys(node, glob_escape(prefix) + glob_escape(dlock::detail::redis_waiting_infix) + "*");
  for (std::size_t begin = 0; begin < keys.size(); begin += batch_size) {
    const std::size_t end = std::min(keys.size(), begin + batch_size);
    std::vector<std::string_view> args{"MGET"};
    for (std::size_t i = begin; i < end; ++i) args.push_back(keys[i]);
    const RedisValue r = checked(node, args, "MGET of wait records");
    if (r.type != RedisValue::Type::array || r.elements.size() != end - begin) unexpected(node, "MGET");
    for (const auto& v : r.elements) {
      if (v.type == RedisValue::Type::nil) continue;  // expired since the SCAN (or not a string)
      if (auto w = dlock::detail::decode_wait_record(v.str)) {
        out.records.push_back(std::move(*w));
      } else {
        ++out.malformed;
      }
    }
  }
  return out;
}

std::optional<Removed> force_release(RedisClient& node, std::string_view prefix, std::string_view name,
                                     std::optional<std::string_view> owner) {
  const auto keys = dlock::detail::redis_keys(prefix, name);
  const std::string_view args[] = {"EVAL", force_release_script, "1", keys.lock, keys.channel, owner.value_or("")};
  const RedisValue r = checked(node, args, "the force-release script");
  if (r.type == RedisValue::Type::nil) return std::nullopt;
  if (r.type != RedisValue::Type::array || r.elements.size() != 2) unexpected(node, "the force-release script");
  return Removed{r.elements[0].str, r.elements[1].integer};
}

}  // namespace dlockctl
