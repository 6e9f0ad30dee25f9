// dlock/redis_ha.hpp: how to reach a Redis deployment that is more than one
// server (issue 14): RedisSentinelOptions (a primary found through Redis
// Sentinel) and RedisClusterOptions (a Redis Cluster's seed nodes), their
// validation, and their URI forms:
//
//   redis+sentinel://[[user]:password@]host[:port],host[:port].../master-name[?db=N]
//   redis+cluster://[[user]:password@]host[:port][,host[:port]...]
//
// The credentials in a URI are the data nodes' (the primary's, or every
// cluster node's), like redis://; sentinels that need their own credentials
// or TLS get them from RedisSentinelOptions fields. Sentinel ports default
// to 26379, cluster ports to 6379. A cluster has only database 0.
//
// Both are wired into RedisBackend: RedisOptions::sentinel and
// RedisOptions::cluster, and parse_redis_uri takes both URI forms
// (docs/redis.md, "Deployments", says what each guarantees).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tls.hpp"

namespace dlock {

/// A server's host (name, IPv4, or IPv6 address without brackets) and port.
struct RedisAddress {
  std::string host{};
  int port = 0;
  friend bool operator==(const RedisAddress&, const RedisAddress&) = default;
};

struct RedisSentinelOptions {
  /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
  std::string master_name{};
  /// The sentinels to ask, at least one (three or more in production); every
  /// discovery asks each of them, and a majority must answer (the primary of
  /// the highest configuration epoch is taken: docs/safety.md).
  std::vector<RedisAddress> sentinels{};
  /// ACL user for the sentinels (`sentinel sentinel-user`); empty: password-only AUTH.
  std::string username{};
  /// Password for the sentinels (`requirepass` in sentinel.conf); empty: no AUTH.
  /// Never appears in messages.
  std::string password{};
  /// TLS to the sentinels; nullopt: plain TCP.
  std::optional<TlsOptions> tls{};
};

struct RedisClusterOptions {
  /// Nodes to read the slot map from (CLUSTER SLOTS), at least one; any
  /// node of the cluster will do, the others are found from the map.
  std::vector<RedisAddress> seeds{};
};

/// The parts of a redis+sentinel:// URI: where to find the primary, and the
/// data node's credentials and database.
struct RedisSentinelUri {
  RedisSentinelOptions sentinel{};
  std::string username{};
  std::string password{};
  int database = 0;
};

/// The parts of a redis+cluster:// URI.
struct RedisClusterUri {
  RedisClusterOptions cluster{};
  std::string username{};
  std::string password{};
};

/// Parses a redis+sentinel:// URI; `base` supplies the sentinel credentials
/// and TLS (its master name and sentinels are replaced). The credentials end
/// at the last '@' and are percent-decoded, as in parse_redis_uri. Throws
/// InvalidArgument naming the problem, never quoting any part of the URI.
[[nodiscard]] RedisSentinelUri parse_redis_sentinel_uri(std::string_view uri, RedisSentinelOptions base = {});
/// Parses a redis+cluster:// URI, as parse_redis_sentinel_uri.
[[nodiscard]] RedisClusterUri parse_redis_cluster_uri(std::string_view uri);

namespace detail {
/// Throws InvalidArgument naming the first invalid field ("RedisSentinelOptions.master_name")
/// and its value (never a password).
void validate(const RedisSentinelOptions& options);
void validate(const RedisClusterOptions& options);
}  // namespace detail

}  // namespace dlock
