// dlock/redis_options.hpp: RedisOptions, the connection and key settings of
// the Redis backend (and of each Redlock node), with their validation and URI
// form (redis://, rediss:// for TLS, unix://). Included by dlock/redis.hpp and
// dlock/redlock.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "redis_ha.hpp"
#include "tls.hpp"

namespace dlock {

/// What a Redis connection does about a server that may evict keys (see
/// RedisOptions::eviction_check and docs/redis.md).
enum class EvictionCheck {
  fail,  ///< a maxmemory-policy other than noeviction fails every operation (ServerError)
  warn,  ///< ... is reported once per server on stderr, and locks are used anyway
  off,   ///< the policy is not read (no CONFIG GET, no warning)
};

struct RedisOptions {
  /// Server host name or IPv4/IPv6 address (ignored when unix_socket is set).
  std::string host = "127.0.0.1";
  /// Server TCP port, 1..65535.
  int port = 6379;
  /// Path of the server's unix socket; when set, used instead of host and port.
  std::string unix_socket{};
  /// Redis 6+ ACL user; empty: password-only AUTH (or none without a password).
  std::string username{};
  /// Password for AUTH; empty: no AUTH. Never appears in messages or endpoint().
  std::string password{};
  /// Database index selected on every connection (SELECT), >= 0.
  int database = 0;
  /// Limit for establishing a connection, including AUTH and SELECT.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(2)};
  /// Limit for one command's round trip; a connection that exceeds it is dropped.
  std::chrono::milliseconds command_timeout{std::chrono::seconds(2)};
  /// Prepended to every key and channel; must not contain '{' or '}'.
  std::string key_prefix = "dlock:";
  /// Connections kept for commands (callers beyond it wait for a free one), >= 1.
  std::size_t pool_size = 4;
  /// Least time a fencing counter is kept after the server clock passed its
  /// value (it is kept max(fence_ttl, 3 x the lock's ttl)), >= 1s; see docs/redis.md.
  std::chrono::milliseconds fence_ttl{std::chrono::seconds(10)};
  /// Each new connection reads the server's maxmemory-policy (CONFIG GET):
  /// any policy but noeviction lets the server delete lock keys before their
  /// TTL (a second owner gets in). fail: ServerError naming the server and
  /// policy; warn: one stderr line per server. A server that does not let
  /// dlock read the policy (CONFIG renamed or disabled, or forbidden by the
  /// ACL user) gets one stderr line, unless off.
  EvictionCheck eviction_check = EvictionCheck::fail;
  /// TLS (dlock/tls.hpp): when set, every connection to the server is TLS,
  /// verified by default; never a silent fallback to plain TCP. Not with
  /// unix_socket. rediss:// URIs set it.
  std::optional<TlsOptions> tls{};
  /// Redis Sentinel (dlock/redis_ha.hpp): when set, host and port are not
  /// used; each new connection asks the sentinels for the primary of
  /// sentinel->master_name, checks it with ROLE, and a `+switch-master`
  /// announcement retires every pooled connection. username, password,
  /// database and tls apply to the data nodes. redis+sentinel:// URIs set it.
  std::optional<RedisSentinelOptions> sentinel{};
  /// Redis Cluster (dlock/redis_ha.hpp): when set, host and port are not
  /// used; the slot map is read from a seed (CLUSTER SLOTS), each lock goes
  /// to the primary of its {name} slot (one pool per node), MOVED and ASK
  /// are followed. Not with sentinel, unix_socket or a database other than 0.
  /// redis+cluster:// URIs set it.
  std::optional<RedisClusterOptions> cluster{};
};

/// Parses `redis://[[user]:password@]host[:port][/db]`, the same with
/// `rediss://` (TLS: sets tls to base.tls or a default TlsOptions, which
/// verifies against the system's trust store; redis:// with base.tls set is
/// refused rather than silently dropping TLS), or
/// `redis+sentinel://[[user]:password@]host[:port],host[:port].../master-name[?db=N]`
/// (sets sentinel, keeping base.sentinel's credentials and TLS; see
/// parse_redis_sentinel_uri in dlock/redis_ha.hpp), or
/// `redis+cluster://[[user]:password@]host[:port][,host[:port]...]` (sets
/// cluster; parse_redis_cluster_uri), or
/// `unix://[[user]:password@]/path/to/socket[?db=N]` (user and password
/// percent-decoded; the credentials end at the last '@', so '/', '?', '#' and
/// '@' in a password need no encoding) into a copy of `base`, whose other
/// fields are kept. The result is validated. Throws InvalidArgument naming
/// the problem; the message never quotes any part of the URI (a misplaced
/// password would show up as "the port" or "the path").
[[nodiscard]] RedisOptions parse_redis_uri(std::string_view uri, RedisOptions base = {});

namespace detail {
/// Throws InvalidArgument naming the first invalid field and its value.
void validate(const RedisOptions& options);
/// "host:port" ("[v6]:port" for IPv6 addresses) or the socket path.
[[nodiscard]] std::string redis_endpoint(const RedisOptions& options);
/// The raw (not decoded) credentials of a Redis URI: between "://" and the
/// last '@'; empty if there are none. For masking them in messages.
[[nodiscard]] std::string_view redis_uri_userinfo(std::string_view uri);
}  // namespace detail

}  // namespace dlock
