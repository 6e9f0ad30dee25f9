// RedisOptions: validation, endpoint text and the URI form.
#include <dlock/redis_options.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/uri.hpp>
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
  if (o.tls) {
    if (!o.unix_socket.empty())
      invalid_field("RedisOptions.tls", "cannot be used with unix_socket (Redis serves TLS on TCP only)",
                    fmt::format("set, with unix_socket \"{}\"", o.unix_socket));
    validate_tls(*o.tls, "RedisOptions.tls");
  }
  if (o.sentinel) {
    if (!o.unix_socket.empty())
      invalid_field("RedisOptions.sentinel", "cannot be used with unix_socket (the sentinels name TCP addresses)",
                    fmt::format("set, with unix_socket \"{}\"", o.unix_socket));
    validate(*o.sentinel);
  }
  if (o.cluster) {
    if (o.sentinel)
      invalid_field("RedisOptions.cluster", "cannot be used with sentinel (a cluster finds its own primaries)", "set");
    if (!o.unix_socket.empty())
      invalid_field("RedisOptions.cluster", "cannot be used with unix_socket (cluster nodes are TCP addresses)",
                    fmt::format("set, with unix_socket \"{}\"", o.unix_socket));
    if (o.database != 0)
      invalid_field("RedisOptions.database", "must be 0 with cluster (a cluster has only database 0)",
                    fmt::format("{}", o.database));
    validate(*o.cluster);
  }
}

std::string redis_endpoint(const RedisOptions& o) {
  if (o.sentinel) return fmt::format("the primary of '{}' (Sentinel)", o.sentinel->master_name);
  if (o.cluster) {
    std::string seeds;
    for (const RedisAddress& a : o.cluster->seeds) {
      if (!seeds.empty()) seeds += ',';
      seeds += a.host.find(':') != std::string::npos ? fmt::format("[{}]:{}", a.host, a.port)
                                                     : fmt::format("{}:{}", a.host, a.port);
    }
    return fmt::format("Redis Cluster (seeds {})", seeds);
  }
  if (!o.unix_socket.empty()) return o.unix_socket;
  if (o.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", o.host, o.port);
  return fmt::format("{}:{}", o.host, o.port);
}

}  // namespace detail

namespace {

// Messages about a URI never repeat any part of it but a well-formed scheme:
// a password written unencoded ('/', '?', '#' or '@' in it) or a forgotten
// "@host" puts password characters where a host, port, path or parameter is
// expected, so those are named, never quoted.
[[noreturn]] void bad_uri(std::string_view problem) {
  throw InvalidArgument(
      fmt::format("dlock: invalid Redis URI (not shown: it may contain a password): {}; expected "
                  "redis[s]://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path/to/socket[?db=N]",
                  problem));
}

std::string percent_decode(std::string_view s, std::string_view what) {
  auto decoded = detail::percent_decoded(s);
  if (!decoded) bad_uri(fmt::format("bad percent-encoding in the {}", what));
  return std::move(*decoded);
}

int parse_int(std::string_view s, std::string_view what, int min, int max) {
  const auto v = detail::decimal_in(s, min, max);
  if (!v) bad_uri(fmt::format("the {} must be a number in {}..{}", what, min, max));
  return *v;
}

// "user:password", ":password" -> options.
void parse_userinfo(std::string_view userinfo, RedisOptions& o) {
  const auto colon = userinfo.find(':');
  if (colon == std::string_view::npos) bad_uri("credentials must be written user:password@ or :password@");
  o.username = percent_decode(userinfo.substr(0, colon), "user name");
  o.password = percent_decode(userinfo.substr(colon + 1), "password");
}

void parse_query(std::string_view query, RedisOptions& o) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    const auto eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    if (key == "db") {
      o.database = parse_int(value, "db parameter", 0, 1 << 30);
    } else {
      bad_uri("unknown query parameter (only db=N is understood)");
    }
  }
}

bool well_formed_scheme(std::string_view s) {
  if (s.empty() || s.size() > 16 || !(s.front() >= 'a' && s.front() <= 'z')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
  });
}

}  // namespace

namespace detail {

std::string_view redis_uri_userinfo(std::string_view uri) {
  const auto scheme_end = uri.find("://");
  const std::size_t start = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  const auto at = uri.rfind('@');
  if (at == std::string_view::npos || at < start) return {};
  return uri.substr(start, at - start);
}

}  // namespace detail

RedisOptions parse_redis_uri(std::string_view uri, RedisOptions base) {
  RedisOptions o = std::move(base);
  const auto scheme_end = uri.find("://");
  if (scheme_end == std::string_view::npos) bad_uri("the scheme is missing");
  const std::string_view scheme = uri.substr(0, scheme_end);
  std::string_view rest = uri.substr(scheme_end + 3);
  o.username.clear();
  o.password.clear();
  // The credentials end at the LAST '@': an unencoded '@', '/', '?' or '#'
  // in a password must not move the host, port or path into it. ('@' cannot
  // occur in what follows: a host, a port, a database number, db=N.)
  const std::string_view userinfo = detail::redis_uri_userinfo(uri);
  const bool has_userinfo = rest.find('@') != std::string_view::npos;

  if (scheme == "unix" || scheme == "redis+unix") {
    if (has_userinfo && rest.front() != '/') {  // unix:///path/with@in/it has no credentials
      parse_userinfo(userinfo, o);
      rest = rest.substr(userinfo.size() + 1);
    }
    const auto q = rest.find('?');
    o.unix_socket = percent_decode(rest.substr(0, q), "socket path");
    if (o.unix_socket.empty() || o.unix_socket.front() != '/')
      bad_uri("a unix socket URI needs an absolute path: unix:///path/to/socket");
    if (q != std::string_view::npos) parse_query(rest.substr(q + 1), o);
  } else if (scheme == "redis" || scheme == "rediss") {
    if (scheme == "rediss") {
      if (!o.tls) o.tls = TlsOptions{};  // base's TLS settings (CA, client certificate) are kept
    } else if (o.tls) {
      bad_uri("redis:// with RedisOptions tls set (write rediss:// for TLS; a TLS setting is never dropped)");
    }
    o.unix_socket.clear();
    if (has_userinfo) {
      parse_userinfo(userinfo, o);
      rest = rest.substr(userinfo.size() + 1);
    }
    const auto authority_end = rest.find_first_of("/?");
    const std::string_view authority = rest.substr(0, authority_end);
    const std::string_view tail =
        authority_end == std::string_view::npos ? std::string_view{} : rest.substr(authority_end);
    std::string_view port;
    if (!authority.empty() && authority.front() == '[') {  // [IPv6]:port
      const auto close = authority.find(']');
      if (close == std::string_view::npos) bad_uri("unterminated [IPv6 address]");
      o.host = std::string(authority.substr(1, close - 1));
      const std::string_view after = authority.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') bad_uri("expected :port after the [IPv6 address]");
        port = after.substr(1);
        if (port.empty()) bad_uri("empty port");
      }
    } else {
      const auto colon = authority.rfind(':');
      o.host = std::string(authority.substr(0, colon));
      if (colon != std::string_view::npos) {
        port = authority.substr(colon + 1);
        if (port.empty()) bad_uri("empty port");
      }
    }
    if (o.host.empty()) bad_uri("the host is missing");
    o.port = port.empty() ? 6379 : parse_int(port, "port", 1, 65535);
    const auto q = tail.find('?');
    std::string_view path = tail.substr(0, q);
    if (!path.empty()) path.remove_prefix(1);  // the '/'
    if (!path.empty()) o.database = parse_int(path, "database (the path)", 0, 1 << 30);
    if (q != std::string_view::npos) parse_query(tail.substr(q + 1), o);
  } else if (scheme == "redis+sentinel") {
    RedisSentinelUri u = parse_redis_sentinel_uri(uri, o.sentinel.value_or(RedisSentinelOptions{}));
    o.unix_socket.clear();
    o.sentinel = std::move(u.sentinel);
    o.cluster.reset();
    o.username = std::move(u.username);
    o.password = std::move(u.password);
    o.database = u.database;
  } else if (scheme == "redis+cluster") {
    RedisClusterUri u = parse_redis_cluster_uri(uri);
    o.unix_socket.clear();
    o.sentinel.reset();
    o.cluster = std::move(u.cluster);
    o.username = std::move(u.username);
    o.password = std::move(u.password);
    o.database = 0;
  } else if (well_formed_scheme(scheme)) {
    bad_uri(
        fmt::format("unknown scheme \"{}\" (expected redis, rediss, unix, redis+sentinel or redis+cluster)", scheme));
  } else {
    bad_uri("unknown scheme (expected redis, rediss, unix, redis+sentinel or redis+cluster)");
  }
  if (!o.username.empty() && o.password.empty()) bad_uri("a user name needs a password (user:password@)");
  // Every field taken from the URI is checked above; what validate() can
  // still reject (and quote) comes from `base`.
  detail::validate(o);
  return o;
}

}  // namespace dlock
