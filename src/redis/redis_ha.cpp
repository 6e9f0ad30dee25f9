// RedisSentinelOptions and RedisClusterOptions: validation and URI forms.
#include <dlock/redis_ha.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <dlock/error.hpp>
#include <dlock/detail/uri.hpp>
#include <dlock/options.hpp>

namespace dlock {
namespace detail {

namespace {

bool name_ok(std::string_view s) {
  return !s.empty() &&
         std::none_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; });
}

void validate_addresses(const std::vector<RedisAddress>& list, std::string_view field) {
  if (list.empty()) invalid_field(field, "must name at least one server", "none");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const RedisAddress& a = list[i];
    if (!name_ok(a.host))
      invalid_field(fmt::format("{}[{}].host", field, i), "must be a host name or address without spaces",
                    fmt::format("\"{}\"", a.host));
    if (a.port < 1 || a.port > 65535)
      invalid_field(fmt::format("{}[{}].port", field, i), "must be in 1..65535", fmt::format("{}", a.port));
  }
}

}  // namespace

void validate(const RedisSentinelOptions& o) {
  if (!name_ok(o.master_name))
    invalid_field("RedisSentinelOptions.master_name", "must be a non-empty name without spaces",
                  fmt::format("\"{}\"", o.master_name));
  validate_addresses(o.sentinels, "RedisSentinelOptions.sentinels");
  if (!o.username.empty() && o.password.empty())
    invalid_field("RedisSentinelOptions.username", "needs a password (ACL AUTH takes user and password)",
                  fmt::format("\"{}\" with an empty password", o.username));
  if (o.tls) validate_tls(*o.tls, "RedisSentinelOptions.tls");
}

void validate(const RedisClusterOptions& o) { validate_addresses(o.seeds, "RedisClusterOptions.seeds"); }

}  // namespace detail

namespace {

// As parse_redis_uri: messages name the part of the URI that is wrong and
// never quote it (a password written unencoded could land anywhere).
[[noreturn]] void bad_uri(std::string_view problem) {
  throw InvalidArgument(
      fmt::format("dlock: invalid Redis URI (not shown: it may contain a password): {}; expected "
                  "redis+sentinel://[[user]:password@]host[:port],host[:port].../master-name[?db=N] or "
                  "redis+cluster://[[user]:password@]host[:port][,host[:port]...]",
                  problem));
}

std::string decode(std::string_view s, std::string_view what) {
  auto out = detail::percent_decoded(s);
  if (!out) bad_uri(fmt::format("bad percent-encoding in the {}", what));
  return std::move(*out);
}

int number(std::string_view s, std::string_view what, int min, int max) {
  const auto v = detail::decimal_in(s, min, max);
  if (!v) bad_uri(fmt::format("the {} must be a number in {}..{}", what, min, max));
  return *v;
}

struct Parts {
  std::string username, password;
  std::vector<RedisAddress> hosts;
  std::string_view path;   // after the first '/', before '?'; empty if none
  std::string_view query;  // after '?'
  bool has_path = false;
};

// scheme://[userinfo@]host[:port],host[:port]...[/path][?query]
Parts split(std::string_view uri, std::string_view scheme, int default_port) {
  const auto scheme_end = uri.find("://");
  if (scheme_end == std::string_view::npos) bad_uri("the scheme is missing");
  if (uri.substr(0, scheme_end) != scheme)
    bad_uri(fmt::format("the scheme must be {}", scheme));  // quotes ours, not the URI's
  std::string_view rest = uri.substr(scheme_end + 3);
  Parts parts;
  // The credentials end at the LAST '@' (no '@' can follow in host lists,
  // a master name or db=N), so '@', '/', '?', '#' need no encoding in a password.
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view userinfo = rest.substr(0, at);
    const auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) bad_uri("credentials must be written user:password@ or :password@");
    parts.username = decode(userinfo.substr(0, colon), "user name");
    parts.password = decode(userinfo.substr(colon + 1), "password");
    if (!parts.username.empty() && parts.password.empty()) bad_uri("a user name needs a password (user:password@)");
    rest = rest.substr(at + 1);
  }
  const auto hosts_end = rest.find_first_of("/?");
  std::string_view hosts = rest.substr(0, hosts_end);
  std::string_view tail = hosts_end == std::string_view::npos ? std::string_view{} : rest.substr(hosts_end);
  if (hosts.empty()) bad_uri("no host is given");
  for (std::size_t n = 1;; ++n) {
    const auto comma = hosts.find(',');
    const std::string_view item = hosts.substr(0, comma);
    RedisAddress a{.host = {}, .port = default_port};
    std::string_view port;
    bool has_port = false;
    if (!item.empty() && item.front() == '[') {
      const auto close = item.find(']');
      if (close == std::string_view::npos) bad_uri(fmt::format("host {}: unterminated [IPv6 address]", n));
      a.host = std::string(item.substr(1, close - 1));
      const std::string_view after = item.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') bad_uri(fmt::format("host {}: expected :port after the [IPv6 address]", n));
        port = after.substr(1);
        has_port = true;
      }
    } else {
      const auto colon = item.rfind(':');
      a.host = std::string(item.substr(0, colon));
      if (colon != std::string_view::npos) {
        port = item.substr(colon + 1);
        has_port = true;
      }
      if (a.host.find(':') != std::string::npos) bad_uri(fmt::format("host {}: write an IPv6 address in [ ]", n));
    }
    if (a.host.empty()) bad_uri(fmt::format("host {} is empty", n));
    if (!std::all_of(a.host.begin(), a.host.end(),
                     [](char c) { return static_cast<unsigned char>(c) > ' ' && c != 0x7f && c != '%'; }))
      bad_uri(fmt::format("host {} contains a space, control character or '%'", n));
    if (has_port) a.port = number(port, fmt::format("port of host {}", n), 1, 65535);
    parts.hosts.push_back(std::move(a));
    if (comma == std::string_view::npos) break;
    hosts = hosts.substr(comma + 1);
  }
  const auto q = tail.find('?');
  if (!tail.empty() && tail.front() == '/') {
    parts.has_path = true;
    parts.path = tail.substr(1, q == std::string_view::npos ? std::string_view::npos : q - 1);
  }
  if (q != std::string_view::npos) parts.query = tail.substr(q + 1);
  return parts;
}

}  // namespace

RedisSentinelUri parse_redis_sentinel_uri(std::string_view uri, RedisSentinelOptions base) {
  Parts p = split(uri, "redis+sentinel", 26379);
  RedisSentinelUri out{
      .sentinel = std::move(base), .username = std::move(p.username), .password = std::move(p.password), .database = 0};
  out.sentinel.sentinels = std::move(p.hosts);
  if (!p.has_path || p.path.empty()) bad_uri("the master name (the path) is missing");
  out.sentinel.master_name = decode(p.path, "master name");
  if (!std::all_of(out.sentinel.master_name.begin(), out.sentinel.master_name.end(),
                   [](char c) { return static_cast<unsigned char>(c) > ' ' && c != 0x7f; }))
    bad_uri("the master name contains a space or control character");
  while (!p.query.empty()) {
    const auto amp = p.query.find('&');
    const std::string_view item = p.query.substr(0, amp);
    p.query = amp == std::string_view::npos ? std::string_view{} : p.query.substr(amp + 1);
    if (item.substr(0, 3) != "db=") bad_uri("unknown query parameter (only db=N is understood)");
    out.database = number(item.substr(3), "db parameter", 0, 1 << 30);
  }
  // Every field taken from the URI is checked above; what validate() can
  // still reject (and quote) comes from `base`.
  detail::validate(out.sentinel);
  return out;
}

RedisClusterUri parse_redis_cluster_uri(std::string_view uri) {
  Parts p = split(uri, "redis+cluster", 6379);
  if ((p.has_path && !p.path.empty()) || !p.query.empty())
    bad_uri("a cluster URI takes no path or parameters (a cluster has only database 0)");
  RedisClusterUri out{
      .cluster = {.seeds = std::move(p.hosts)}, .username = std::move(p.username), .password = std::move(p.password)};
  detail::validate(out.cluster);
  return out;
}

}  // namespace dlock
