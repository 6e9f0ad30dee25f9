// dlock/etcd.hpp: EtcdBackend, locks stored in an etcd v3 cluster through its
// HTTP/JSON gateway (etcd 3.4+; no gRPC library needed).
//
//   dlock::EtcdBackend etcd(dlock::EtcdOptions{
//       .endpoints = {"http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"}});
//   dlock::Lock<dlock::EtcdBackend> lock(etcd, "orders:42", {.ttl = 10s, .auto_extend = true});
//
// Lock N is the key `<key_prefix>N`, holding the owner id and attached to a
// lease whose TTL is the lock's TTL rounded up to whole seconds. Acquire is a
// lease grant and one transaction that creates the key only if it does not
// exist; the fencing token is the key's create revision (strictly increasing
// over the whole cluster, linearizable). Release deletes the key only if it
// still holds this owner's value and create revision, then revokes the lease.
// Extend is a lease keepalive plus an owner check (a new lease when the TTL
// asked for is longer than the lease's). Waiters watch the key. See
// docs/etcd.md for the requests, the guarantees and when to choose etcd.
//
// Link dlock::etcd. Thread-safe: share one EtcdBackend between threads; it
// keeps a pool of keep-alive HTTP connections per endpoint. A call goes to
// the endpoint that answered last and on to the next when one cannot be
// reached or has no leader; each endpoint is tried once per call with
// dial_timeout to connect and request_timeout for the answer, so a call
// takes at most endpoints x (dial_timeout + request_timeout). No endpoint
// reached: ConnectionError (nothing was done). A request sent and not
// answered: TimeoutError (its outcome is unknown). Refused credentials:
// ServerError with errc::auth. Messages name the endpoints and the lock,
// never the password or the auth token.
//
// A backend is a handle: copies share the pools. After fork(), a child drops
// the connections it inherited without sending anything and opens its own.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend.hpp"
#include "tls.hpp"

namespace dlock {

namespace detail {
class EtcdClient;
class EtcdConnection;
}  // namespace detail

struct EtcdOptions {
  /// Client URLs of the cluster's members: http://host:port or https://host:port.
  std::vector<std::string> endpoints{"http://127.0.0.1:2379"};
  /// Prepended to every lock name to form its key.
  std::string key_prefix = "dlock/";
  /// etcd user (auth enabled); empty: no authentication.
  std::string username{};
  /// The user's password; never appears in any message.
  std::string password{};
  /// TLS settings for https:// endpoints; empty: verify against the system's CAs.
  std::optional<TlsOptions> tls{};
  /// Bound of each TCP connect (and TLS handshake).
  std::chrono::milliseconds dial_timeout{1000};
  /// Bound of each request's answer from one endpoint.
  std::chrono::milliseconds request_timeout{3000};
  /// Idle keep-alive connections kept per endpoint.
  std::size_t pool_size = 8;
};

namespace detail {
/// Throws InvalidArgument naming the field (EtcdOptions::...) and its value.
void validate(const EtcdOptions& options);
}  // namespace detail

class EtcdBackend {
 public:
  /// What a held lock keeps until release.
  struct Handle {
    std::int64_t lease = 0;            ///< the lease the key is attached to
    std::int64_t lease_seconds = 0;    ///< its TTL as granted
    std::int64_t create_revision = 0;  ///< the key's create revision (the token)
  };

  /// Waits for a deletion of one lock's key (NotifiesRelease in backend.hpp):
  /// a watch on its own connection. Movable; may outlive the backend.
  class Subscription {
   public:
    Subscription(Subscription&&) noexcept;
    Subscription& operator=(Subscription&&) noexcept;
    ~Subscription();
    /// True when the key was deleted (released, expired, taken away) since
    /// subscribing or since the last wait_for() that returned true, or when the
    /// watch broke (the caller then simply tries again); false when `d` passed
    /// first. Without a watch (it could not be opened) it waits `d` and returns false.
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d);

   private:
    friend class EtcdBackend;
    explicit Subscription(std::unique_ptr<detail::EtcdConnection> c);
    std::unique_ptr<detail::EtcdConnection> watch_;
  };

  /// Validates the options (InvalidArgument). Does not connect.
  explicit EtcdBackend(EtcdOptions options);

  [[nodiscard]] std::string_view kind() const noexcept { return "etcd"; }
  /// The endpoints, comma-separated.
  [[nodiscard]] std::string_view endpoint() const noexcept;
  [[nodiscard]] const void* identity() const noexcept { return client_.get(); }

  // The Backend operations (backend.hpp): acquire is two round trips (lease
  // grant, txn), four when contended (also revoke and the holder's
  // time-to-live); release two (txn, revoke); extend two (keepalive, owner
  // check), three or four when the TTL grows past the lease's.
  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started);

  /// BatchesExtend: extends many leases in two requests per etcd_max_txn_ops
  /// items, whatever their number: ONE keepalive request carrying every
  /// lease (the gateway's keepalive stream takes one message per line), then
  /// ONE txn reading every key, whose value, create revision and lease must
  /// still be this holder's. Needs each item's `handle` (a const Handle*, as
  /// the heartbeat sets it); an item without one gets InvalidArgument. A lost
  /// item's lease is revoked (one more request each). The validity is
  /// started + min(ttl, the lease's TTL): unlike extend(), a batch never moves
  /// a key to a longer lease.
  void extend_many(std::span<ExtendItem> items) noexcept;

  /// AbandonsInDoubt: deletes the key if it holds `owner` (its lease expires
  /// by itself). Never throws.
  void abandon(std::string_view name, const OwnerId& owner) noexcept;

  /// Opens a watch of the key from the current revision and returns once
  /// etcd confirmed it, so a deletion after this call is seen. Never throws:
  /// a watch that cannot be opened gives a Subscription that only times out.
  [[nodiscard]] Subscription subscribe_release(std::string_view name);

  /// The key of lock `name`.
  [[nodiscard]] std::string key(std::string_view name) const;
  [[nodiscard]] const EtcdOptions& options() const noexcept;
  /// The cluster client, for tools and tests: POSTs a v3 JSON request.
  [[nodiscard]] detail::EtcdClient& client() noexcept { return *client_; }

 private:
  void extend_chunk(std::span<ExtendItem> items) noexcept;  // at most etcd_max_txn_ops items

  std::shared_ptr<detail::EtcdClient> client_;
};

static_assert(NotifiesRelease<EtcdBackend>);
static_assert(AbandonsInDoubt<EtcdBackend>);
static_assert(BatchesExtend<EtcdBackend>);

}  // namespace dlock
