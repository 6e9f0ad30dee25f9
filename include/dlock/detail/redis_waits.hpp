// Internal: the wait records RedisBackend publishes for cross-process
// deadlock detection (RecordsWaits in backend.hpp), and their encoding. Pure,
// no I/O; docs/redis.md ("Wait records") specifies the format and
// tests/unit/redis_waits_test.cpp pins it.
//
// One record per blocked acquisition, the string key
//
//   <prefix>waiting:<waiter owner id>        with PX = WaitRecord::ttl
//
// whose value is a line of length-prefixed fields (any bytes in names):
//
//   v1 agent=<n>:<bytes> waiter=<n>:<bytes> lock=<n>:<bytes> holds=<k>[ name=<n>:<bytes> owner=<n>:<bytes>]*k
//
// <n> and <k> are decimal without leading zeros; each <bytes> is exactly <n>
// bytes, taken verbatim (quotes, spaces, newlines, braces, NUL, non-UTF-8).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../backend.hpp"

namespace dlock::detail {

/// The key-name part after the prefix: "<prefix>waiting:<waiter>".
inline constexpr std::string_view redis_waiting_infix = "waiting:";

[[nodiscard]] inline std::string redis_waiting_key(std::string_view prefix, std::string_view waiter) {
  std::string key;
  key.reserve(prefix.size() + redis_waiting_infix.size() + waiter.size());
  key.append(prefix).append(redis_waiting_infix).append(waiter);
  return key;
}

/// A decoded wait record (owning copy of WaitRecord without the ttl).
struct WaitInfo {
  struct Held {
    std::string name;
    std::string owner;
    friend bool operator==(const Held&, const Held&) = default;
  };
  std::string agent;        ///< "host:pid:thread" of the waiting thread
  std::string waiter;       ///< owner id of the blocked acquisition
  std::string lock;         ///< the lock it waits for
  std::vector<Held> holds;  ///< locks its thread holds on the same backend
  friend bool operator==(const WaitInfo&, const WaitInfo&) = default;
};

namespace wait_codec {
inline void put_field(std::string& out, std::string_view tag, std::string_view bytes) {
  out.append(tag).append(1, '=').append(std::to_string(bytes.size())).append(1, ':').append(bytes);
}

// Reads a decimal number without leading zeros (at most 9 digits) at `pos`.
inline bool get_number(std::string_view in, std::size_t& pos, std::size_t& value) {
  const std::size_t start = pos;
  value = 0;
  while (pos < in.size() && in[pos] >= '0' && in[pos] <= '9' && pos - start < 10) {
    value = value * 10 + static_cast<std::size_t>(in[pos] - '0');
    ++pos;
  }
  const std::size_t digits = pos - start;
  return digits >= 1 && digits <= 9 && !(digits > 1 && in[start] == '0');
}

inline bool expect(std::string_view in, std::size_t& pos, std::string_view literal) {
  if (in.substr(pos, literal.size()) != literal) return false;
  pos += literal.size();
  return true;
}

// Reads " <tag>=<n>:<bytes>" (the leading space unless `first`).
inline bool get_field(std::string_view in, std::size_t& pos, std::string_view tag, std::string& out) {
  std::size_t n = 0;
  if (!expect(in, pos, " ") || !expect(in, pos, tag) || !expect(in, pos, "=") || !get_number(in, pos, n) ||
      !expect(in, pos, ":") || in.size() - pos < n)
    return false;
  out.assign(in.substr(pos, n));
  pos += n;
  return true;
}
}  // namespace wait_codec

/// The value stored for `record` (see the format above).
[[nodiscard]] inline std::string encode_wait_record(const WaitRecord& record) {
  std::string out = "v1 ";
  wait_codec::put_field(out, "agent", record.agent);
  out.append(1, ' ');
  wait_codec::put_field(out, "waiter", record.waiter);
  out.append(1, ' ');
  wait_codec::put_field(out, "lock", record.lock);
  out.append(" holds=").append(std::to_string(record.holds.size()));
  for (const HeldLockRef& h : record.holds) {
    out.append(1, ' ');
    wait_codec::put_field(out, "name", h.name);
    out.append(1, ' ');
    wait_codec::put_field(out, "owner", h.owner);
  }
  return out;
}

/// Decodes a value written by encode_wait_record(); nullopt if it is not
/// exactly one well-formed v1 record (truncated, trailing bytes, bad numbers).
[[nodiscard]] inline std::optional<WaitInfo> decode_wait_record(std::string_view in) {
  WaitInfo w;
  std::size_t pos = 0, count = 0;
  if (!wait_codec::expect(in, pos, "v1")) return std::nullopt;
  if (!wait_codec::get_field(in, pos, "agent", w.agent) || !wait_codec::get_field(in, pos, "waiter", w.waiter) ||
      !wait_codec::get_field(in, pos, "lock", w.lock))
    return std::nullopt;
  if (!wait_codec::expect(in, pos, " holds=") || !wait_codec::get_number(in, pos, count)) return std::nullopt;
  // Each held lock takes at least 16 bytes: bounds the reservation by the input.
  if (count > in.size() / 16 + 1) return std::nullopt;
  w.holds.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    WaitInfo::Held h;
    if (!wait_codec::get_field(in, pos, "name", h.name) || !wait_codec::get_field(in, pos, "owner", h.owner))
      return std::nullopt;
    w.holds.push_back(std::move(h));
  }
  if (pos != in.size()) return std::nullopt;
  return w;
}

}  // namespace dlock::detail
