// RedisOptions: validation, endpoint text and the URI form.
#include <dlock/detail/redis_options.hpp>

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/error.hpp>
#include <dlock/options.hpp>

namespace dlock {
namespace detail {

void validate(const RedisOptions& o) {
  if (o.unix_socket.empty()) {
    if (o.host.empty()) invalid_field("RedisOptions.host", "must not be empty (or set unix_socket)", "\"\"");
    if (o.port < 1 || o.port > 65535)
      invalid_field("RedisOptions.port", "must be in 1..65535", fmt::format("{}", o.port));
  } else if (o.unix_socket.front() != '/') {
    invalid_field("RedisOptions.unix_socket", "must be an absolute path", fmt::format("\"{}\"", o.unix_socket));
  }
  if (!o.username.empty() && o.password.empty())
    invalid_field("RedisOptions.username", "needs a password (ACL AUTH takes user and password)",
                  fmt::format("\"{}\" with an empty password", o.username));
  if (o.database < 0) invalid_field("RedisOptions.database", "must not be negative", fmt::format("{}", o.database));
  if (o.connect_timeout <= o.connect_timeout.zero())
    invalid_field("RedisOptions.connect_timeout", "must be positive", format_duration(o.connect_timeout));
  if (o.command_timeout <= o.command_timeout.zero())
    invalid_field("RedisOptions.command_timeout", "must be positive", format_duration(o.command_timeout));
  if (o.key_prefix.find_first_of("{}") != std::string::npos)
    invalid_field("RedisOptions.key_prefix", "must not contain '{' or '}' (they would break the {name} hash tag)",
                  fmt::format("\"{}\"", o.key_prefix));
  if (o.pool_size < 1 || o.pool_size > 1024)
    invalid_field("RedisOptions.pool_size", "must be in 1..1024", fmt::format("{}", o.pool_size));
  if (o.fence_ttl < std::chrono::seconds(1))
    invalid_field("RedisOptions.fence_ttl", "must be at least 1s", format_duration(o.fence_ttl));
}

std::string redis_endpoint(const RedisOptions& o) {
  if (!o.unix_socket.empty()) return o.unix_socket;
  if (o.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", o.host, o.port);
  return fmt::format("{}:{}", o.host, o.port);
}

}  // namespace detail

namespace {

// The URI with any credentials after "://" and before the last '@' replaced
// by "user:***" (or "***"), for messages. Over-redacts rather than under.
std::string redact(std::string_view uri) {
  const auto at = uri.rfind('@');
  if (at == std::string_view::npos) return std::string(uri);
  const auto scheme_end = uri.find("://");
  const std::size_t start = scheme_end == std::string_view::npos || scheme_end > at ? 0 : scheme_end + 3;
  const std::string_view userinfo = uri.substr(start, at - start);
  const auto colon = userinfo.find(':');
  if (colon == std::string_view::npos) return fmt::format("{}***{}", uri.substr(0, start), uri.substr(at));
  return fmt::format("{}{}:***{}", uri.substr(0, start), userinfo.substr(0, colon), uri.substr(at));
}

[[noreturn]] void bad_uri(std::string_view uri, std::string_view problem) {
  throw InvalidArgument(fmt::format("dlock: invalid Redis URI \"{}\": {}", redact(uri), problem));
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view uri, std::string_view s, std::string_view what) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 2 < s.size() ? hex_digit(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? hex_digit(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) bad_uri(uri, fmt::format("bad percent-encoding in the {}", what));
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

int parse_int(std::string_view uri, std::string_view s, std::string_view what, int min, int max) {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || v < min || v > max)
    bad_uri(uri, fmt::format("{} must be a number in {}..{} (got \"{}\")", what, min, max, s));
  return v;
}

// "user:password", ":password" -> options; returns false if there is no userinfo.
void parse_userinfo(std::string_view uri, std::string_view userinfo, RedisOptions& o) {
  const auto colon = userinfo.find(':');
  if (colon == std::string_view::npos) bad_uri(uri, "credentials must be written user:password@ or :password@");
  o.username = percent_decode(uri, userinfo.substr(0, colon), "user name");
  o.password = percent_decode(uri, userinfo.substr(colon + 1), "password");
}

void parse_query(std::string_view uri, std::string_view query, RedisOptions& o) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    const auto eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    if (key == "db") {
      o.database = parse_int(uri, value, "db", 0, 1 << 30);
    } else {
      bad_uri(uri, fmt::format("unknown parameter \"{}\" (only db is understood)", key));
    }
  }
}

}  // namespace

RedisOptions parse_redis_uri(std::string_view uri, RedisOptions base) {
  RedisOptions o = std::move(base);
  const auto scheme_end = uri.find("://");
  if (scheme_end == std::string_view::npos) bad_uri(uri, "expected redis://host:port/db or unix:///path/to/socket");
  const std::string_view scheme = uri.substr(0, scheme_end);
  std::string_view rest = uri.substr(scheme_end + 3);
  o.username.clear();
  o.password.clear();

  if (scheme == "unix" || scheme == "redis+unix") {
    if (!rest.empty() && rest.front() != '/') {
      const auto at = rest.rfind('@');
      if (at == std::string_view::npos)
        bad_uri(uri, "a unix socket URI needs an absolute path: unix:///path/to/socket");
      parse_userinfo(uri, rest.substr(0, at), o);
      rest = rest.substr(at + 1);
    }
    const auto q = rest.find('?');
    o.unix_socket = percent_decode(uri, rest.substr(0, q), "socket path");
    if (o.unix_socket.empty() || o.unix_socket.front() != '/')
      bad_uri(uri, "a unix socket URI needs an absolute path: unix:///path/to/socket");
    if (q != std::string_view::npos) parse_query(uri, rest.substr(q + 1), o);
  } else if (scheme == "redis") {
    o.unix_socket.clear();
    const auto authority_end = rest.find_first_of("/?");
    std::string_view authority = rest.substr(0, authority_end);
    std::string_view tail = authority_end == std::string_view::npos ? std::string_view{} : rest.substr(authority_end);
    const auto at = authority.rfind('@');
    if (at != std::string_view::npos) {
      parse_userinfo(uri, authority.substr(0, at), o);
      authority = authority.substr(at + 1);
    }
    std::string_view port;
    if (!authority.empty() && authority.front() == '[') {  // [IPv6]:port
      const auto close = authority.find(']');
      if (close == std::string_view::npos) bad_uri(uri, "unterminated [IPv6 address]");
      o.host = std::string(authority.substr(1, close - 1));
      const std::string_view after = authority.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') bad_uri(uri, "expected :port after the [IPv6 address]");
        port = after.substr(1);
        if (port.empty()) bad_uri(uri, "empty port");
      }
    } else {
      const auto colon = authority.rfind(':');
      o.host = std::string(authority.substr(0, colon));
      if (colon != std::string_view::npos) {
        port = authority.substr(colon + 1);
        if (port.empty()) bad_uri(uri, "empty port");
      }
    }
    if (o.host.empty()) bad_uri(uri, "the host is missing");
    o.port = port.empty() ? 6379 : parse_int(uri, port, "port", 1, 65535);
    const auto q = tail.find('?');
    std::string_view path = tail.substr(0, q);
    if (!path.empty()) path.remove_prefix(1);  // the '/'
    if (!path.empty()) o.database = parse_int(uri, path, "database (path)", 0, 1 << 30);
    if (q != std::string_view::npos) parse_query(uri, tail.substr(q + 1), o);
  } else if (scheme == "rediss") {
    bad_uri(uri, "TLS (rediss://) is not supported by this build of dlock");
  } else {
    bad_uri(uri, fmt::format("unknown scheme \"{}\" (expected redis or unix)", scheme));
  }
  detail::validate(o);
  return o;
}

}  // namespace dlock
