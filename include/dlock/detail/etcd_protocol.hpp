// Internal: the etcd v3 JSON API (the grpc-gateway of etcd 3.4) as pure
// functions, without I/O: endpoint parsing, base64, the request bodies dlock
// sends and the decisions it takes from the replies. Tested with canned bytes
// (tests/unit/etcd_protocol_test.cpp). In the gateway's JSON, bytes fields
// (keys, values) are base64 and int64 fields (revisions, lease ids, TTLs) are
// strings; fields holding a zero value are omitted.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dlock::detail {

/// One etcd client URL: http://host:port or https://host:port.
struct EtcdEndpoint {
  bool tls = false;
  std::string host;
  std::string port;
  std::string url;  ///< as given, for messages (it holds no credentials)
};

/// Parses "http://host:port" / "https://host:port" ("[::1]:2379" for IPv6).
/// Throws InvalidArgument naming `field` for anything else (user info, a
/// path, no port).
[[nodiscard]] EtcdEndpoint parse_etcd_endpoint(std::string_view url, std::string_view field);

[[nodiscard]] std::string base64_encode(std::string_view bytes);
/// Throws std::invalid_argument for malformed input.
[[nodiscard]] std::string base64_decode(std::string_view text);

/// The lease TTL, in whole seconds, that covers a lock TTL (rounded up, at least 1).
[[nodiscard]] std::int64_t etcd_lease_seconds(std::chrono::milliseconds ttl) noexcept;

/// An error reply of the gateway: {"error": ..., "code": <grpc code>, "message": ...}.
struct EtcdError {
  int code = 0;  ///< gRPC status code (14 unavailable, 16 unauthenticated, ...)
  std::string message;
};
/// The error in a reply body, if it is one (also the error member of a
/// streamed message).
[[nodiscard]] std::optional<EtcdError> parse_etcd_error(std::string_view body);

/// What dlock does with an error reply.
enum class EtcdErrorAction {
  next_endpoint,   ///< not executed (no leader, member stopping): another member may serve it
  in_doubt,        ///< executed or not (request timed out in raft): outcome unknown
  reauthenticate,  ///< the auth token is invalid or expired: fetch a new one, send again
  auth_failed,     ///< wrong user name or password, or permission denied
  fail,            ///< anything else: a ServerError
};
[[nodiscard]] EtcdErrorAction classify_etcd_error(const EtcdError& e) noexcept;

// ---- requests ----
[[nodiscard]] std::string etcd_authenticate_request(std::string_view user, std::string_view password);
[[nodiscard]] std::string etcd_lease_grant_request(std::int64_t ttl_seconds);
[[nodiscard]] std::string etcd_lease_id_request(std::int64_t lease);  ///< revoke, keepalive, timetolive
/// Creates `key` = owner with `lease` if it does not exist (create_revision ==
/// 0); reads the key in either branch.
[[nodiscard]] std::string etcd_acquire_request(std::string_view key, std::string_view owner, std::int64_t lease);
/// Deletes `key` if its value is `owner` (and, when create_revision != 0, the
/// key's create revision is that one).
[[nodiscard]] std::string etcd_release_request(std::string_view key, std::string_view owner,
                                               std::int64_t create_revision);
/// Succeeds when `key` holds `owner`, was created at `create_revision` and
/// is attached to `lease` (the owner check after a keepalive).
[[nodiscard]] std::string etcd_owner_check_request(std::string_view key, std::string_view owner,
                                                   std::int64_t create_revision, std::int64_t lease);
/// Moves `key` (if it still holds owner/create_revision) to another lease,
/// keeping its value and create revision: an extension beyond the lease's TTL.
[[nodiscard]] std::string etcd_relet_request(std::string_view key, std::string_view owner, std::int64_t create_revision,
                                             std::int64_t lease);
[[nodiscard]] std::string etcd_range_request(std::string_view key, bool prefix);
/// A watch of `key` from `start_revision` (0: from the current revision on).
[[nodiscard]] std::string etcd_watch_request(std::string_view key, std::int64_t start_revision);

// ---- replies (throw std::runtime_error for a body that is not what the API promises) ----
struct EtcdLeaseGrant {
  std::int64_t id = 0;
  std::int64_t ttl = 0;  ///< seconds, as granted (the server may raise it to its minimum)
};
[[nodiscard]] EtcdLeaseGrant parse_etcd_lease_grant(std::string_view body);

/// The key as a range or txn reply shows it.
struct EtcdKv {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t lease = 0;
};

struct EtcdAcquireReply {
  bool granted = false;              ///< the key is this owner's, attached to this lease
  std::int64_t create_revision = 0;  ///< the fencing token when granted
  std::int64_t revision = 0;         ///< the store's revision when the txn ran
  std::optional<EtcdKv> holder;      ///< the key as found when not granted
};
/// Granted also when the txn failed because the key already holds this owner
/// with this lease (a retried acquire whose first reply was lost).
[[nodiscard]] EtcdAcquireReply parse_etcd_acquire(std::string_view body, std::string_view owner, std::int64_t lease);

/// The token of an authenticate reply (throws when there is none).
[[nodiscard]] std::string parse_etcd_auth_token(std::string_view body);
/// The "succeeded" of a txn reply (release, owner check, relet).
[[nodiscard]] bool parse_etcd_txn_succeeded(std::string_view body);
/// The remaining TTL of a keepalive reply's lease in seconds; 0 when the lease is gone.
[[nodiscard]] std::int64_t parse_etcd_keepalive(std::string_view body);
/// Keepalives of many leases in ONE request: the gateway's keepalive stream
/// takes newline-separated messages and answers each in turn.
[[nodiscard]] std::string etcd_keepalive_many_request(std::span<const std::int64_t> leases);
/// The remaining TTL in seconds of each lease of such a reply, as (lease, TTL)
/// in reply order; TTL 0 when the lease is gone.
[[nodiscard]] std::vector<std::pair<std::int64_t, std::int64_t>> parse_etcd_keepalive_many(std::string_view body);
/// One txn reading many keys (no compares, so it always succeeds), at most
/// etcd_max_txn_ops of them (etcd's default --max-txn-ops).
inline constexpr std::size_t etcd_max_txn_ops = 128;
[[nodiscard]] std::string etcd_range_many_request(std::span<const std::string> keys);
/// Each key of such a reply in request order; nullopt when it does not exist.
[[nodiscard]] std::vector<std::optional<EtcdKv>> parse_etcd_range_many(std::string_view body);
/// The remaining TTL of a timetolive reply in seconds; -1 when the lease is gone.
[[nodiscard]] std::int64_t parse_etcd_time_to_live(std::string_view body);
/// The keys of a range reply.
[[nodiscard]] std::vector<EtcdKv> parse_etcd_range(std::string_view body);

/// One message of a watch stream.
struct EtcdWatchMessage {
  bool created = false;
  bool canceled = false;  ///< the server ended the watch (compaction, error)
  bool deleted = false;   ///< an event deleted the key (release, lease expiry)
  std::int64_t revision = 0;
};
[[nodiscard]] EtcdWatchMessage parse_etcd_watch_message(std::string_view line);

}  // namespace dlock::detail
