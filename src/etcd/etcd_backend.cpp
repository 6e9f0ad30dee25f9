// EtcdBackend: the Backend operations as requests of the etcd v3 JSON API
// (detail/etcd_protocol.hpp) sent through the failover client (etcd_client.hpp).
#include <dlock/etcd.hpp>

#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>

#include <algorithm>
#include <exception>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "etcd_client.hpp"

namespace dlock {

namespace detail {

void validate(const EtcdOptions& o) {
  if (o.endpoints.empty()) throw InvalidArgument("EtcdOptions::endpoints is empty: name at least one member");
  for (const auto& e : o.endpoints) (void)parse_etcd_endpoint(e, "EtcdOptions::endpoints");
  if (o.key_prefix.empty()) {
    throw InvalidArgument("EtcdOptions::key_prefix is empty: locks need a prefix of their own (e.g. \"dlock/\")");
  }
  if (o.username.empty() && !o.password.empty()) {
    throw InvalidArgument("EtcdOptions::password is set without EtcdOptions::username");
  }
  if (o.dial_timeout <= std::chrono::milliseconds::zero()) {
    throw InvalidArgument(fmt::format("EtcdOptions::dial_timeout = {} ms must be positive", o.dial_timeout.count()));
  }
  if (o.request_timeout <= std::chrono::milliseconds::zero()) {
    throw InvalidArgument(
        fmt::format("EtcdOptions::request_timeout = {} ms must be positive", o.request_timeout.count()));
  }
  if (o.tls) validate_tls(*o.tls, "EtcdOptions::tls");
}

namespace {

// A reply that is not what the v3 API promises: the server is not etcd 3.4+
// or a proxy answered.
template <class F>
auto parsed(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw ServerError(fmt::format("etcd {}: unexpected reply: {}", what, e.what()));
  }
}

// Cleanup whose failure changes nothing: an unrevoked lease expires by its TTL.
void revoke_quietly(EtcdClient& client, std::int64_t lease, std::string_view what) noexcept {
  if (lease == 0) return;
  try {
    (void)client.call("/v3/lease/revoke", etcd_lease_id_request(lease), what);
  } catch (...) {
  }
}

}  // namespace
}  // namespace detail

using detail::EtcdClient;

EtcdBackend::EtcdBackend(EtcdOptions options)
    : client_((detail::validate(options), std::make_shared<EtcdClient>(options))) {}

std::string_view EtcdBackend::endpoint() const noexcept { return client_->endpoints_text(); }

const EtcdOptions& EtcdBackend::options() const noexcept { return client_->options(); }

std::string EtcdBackend::key(std::string_view name) const { return client_->options().key_prefix + std::string(name); }

AcquireResult<EtcdBackend::Handle> EtcdBackend::try_acquire(const AcquireRequest& request) {
  const std::string what = fmt::format("acquire of lock '{}'", request.name);
  const std::string k = key(request.name);
  EtcdClient& c = *client_;
  const auto lease = detail::parsed(what, [&] {
    return detail::parse_etcd_lease_grant(
        c.call("/v3/lease/grant", detail::etcd_lease_grant_request(detail::etcd_lease_seconds(request.ttl)), what));
  });
  // Safe to send again on another member: a second run finds the key holding
  // this owner and lease, and parse_etcd_acquire counts that as granted.
  const auto reply = detail::parsed(what, [&] {
    return detail::parse_etcd_acquire(
        c.call("/v3/kv/txn", detail::etcd_acquire_request(k, request.owner.str(), lease.id), what), request.owner.str(),
        lease.id);
  });
  if (reply.granted) {
    return Grant<Handle>{
        .token = static_cast<std::uint64_t>(reply.create_revision),
        .valid_until = detail::saturating_add(request.started, request.ttl),
        .handle = Handle{.lease = lease.id, .lease_seconds = lease.ttl, .create_revision = reply.create_revision}};
  }
  detail::revoke_quietly(c, lease.id, what);
  Contended contended;
  if (reply.holder && reply.holder->lease != 0) {
    try {
      const auto left = detail::parse_etcd_time_to_live(
          c.call("/v3/lease/timetolive", detail::etcd_lease_id_request(reply.holder->lease), what));
      contended.holder_ttl = std::chrono::seconds(left < 0 ? 0 : left);
    } catch (...) {  // the holder's TTL is a hint; contention is the answer
    }
  }
  return contended;
}

ReleaseResult EtcdBackend::release(std::string_view name, Lease<Handle>& lease) {
  const std::string what = fmt::format("release of lock '{}'", name);
  EtcdClient& c = *client_;
  const bool deleted = detail::parsed(what, [&] {
    return detail::parse_etcd_txn_succeeded(c.call(
        "/v3/kv/txn", detail::etcd_release_request(key(name), lease.owner.str(), lease.handle.create_revision), what));
  });
  detail::revoke_quietly(c, lease.handle.lease, what);
  lease.handle.lease = 0;
  return deleted ? ReleaseResult::released : ReleaseResult::not_held;
}

std::optional<TimePoint> EtcdBackend::extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                             TimePoint started) {
  const std::string what = fmt::format("extension of lock '{}'", name);
  const std::string k = key(name);
  const std::string owner(lease.owner.str());
  EtcdClient& c = *client_;
  Handle& h = lease.handle;
  if (h.lease == 0) return std::nullopt;  // released
  const auto seconds = detail::etcd_lease_seconds(ttl);
  if (seconds <= h.lease_seconds) {
    // The keepalive restarts the lease's full TTL (>= ttl); the check after it
    // proves that the key is still this owner's and on this lease.
    const auto left = detail::parsed(what, [&] {
      return detail::parse_etcd_keepalive(c.call("/v3/lease/keepalive", detail::etcd_lease_id_request(h.lease), what));
    });
    if (left <= 0) return std::nullopt;
    const bool ours = detail::parsed(what, [&] {
      return detail::parse_etcd_txn_succeeded(
          c.call("/v3/kv/txn", detail::etcd_owner_check_request(k, owner, h.create_revision, h.lease), what));
    });
    if (!ours) {
      detail::revoke_quietly(c, h.lease, what);
      return std::nullopt;
    }
    return detail::saturating_add(started, ttl);
  }
  // Longer than the lease: move the key to a new lease, keeping its value and
  // create revision (so the fencing token stays).
  const auto fresh = detail::parsed(what, [&] {
    return detail::parse_etcd_lease_grant(c.call("/v3/lease/grant", detail::etcd_lease_grant_request(seconds), what));
  });
  bool moved = false;
  try {
    moved = detail::parsed(what, [&] {
      return detail::parse_etcd_txn_succeeded(
          c.call("/v3/kv/txn", detail::etcd_relet_request(k, owner, h.create_revision, fresh.id), what));
    });
  } catch (...) {
    detail::revoke_quietly(c, fresh.id, what);
    throw;
  }
  if (!moved) {
    detail::revoke_quietly(c, fresh.id, what);
    return std::nullopt;
  }
  detail::revoke_quietly(c, h.lease, what);
  h.lease = fresh.id;
  h.lease_seconds = fresh.ttl;
  return detail::saturating_add(started, ttl);
}

void EtcdBackend::extend_many(std::span<ExtendItem> items) noexcept {
  for (std::size_t from = 0; from < items.size(); from += detail::etcd_max_txn_ops) {
    extend_chunk(items.subspan(from, std::min(detail::etcd_max_txn_ops, items.size() - from)));
  }
}

void EtcdBackend::extend_chunk(std::span<ExtendItem> items) noexcept {
  EtcdClient& c = *client_;
  std::vector<std::size_t> live;  // items still to answer
  std::vector<std::int64_t> leases;
  try {
    for (std::size_t i = 0; i < items.size(); ++i) {
      ExtendItem& it = items[i];
      const auto* h = static_cast<const Handle*>(it.handle);
      if (h == nullptr) {
        it.error = std::make_exception_ptr(InvalidArgument(fmt::format(
            "etcd extension of lock '{}': ExtendItem::handle is null (EtcdBackend needs the lease's Handle)",
            it.name)));
      } else if (h->lease == 0) {
        it.valid_until = std::nullopt;  // released
      } else {
        live.push_back(i);
        leases.push_back(h->lease);
      }
    }
    if (live.empty()) return;
    const std::string what = fmt::format("extension of {} etcd locks (first '{}')", live.size(), items[live[0]].name);
    const auto ttls = detail::parsed(what, [&] {
      return detail::parse_etcd_keepalive_many(
          c.call("/v3/lease/keepalive", detail::etcd_keepalive_many_request(leases), what));
    });
    std::vector<std::size_t> kept;
    std::vector<std::string> keys;
    for (const std::size_t i : live) {
      const auto* h = static_cast<const Handle*>(items[i].handle);
      const auto t = std::find_if(ttls.begin(), ttls.end(), [&](const auto& p) { return p.first == h->lease; });
      if (t == ttls.end() || t->second <= 0) {
        items[i].valid_until = std::nullopt;  // the lease expired: the key went with it
        continue;
      }
      kept.push_back(i);
      keys.push_back(key(items[i].name));
    }
    live.clear();
    if (kept.empty()) return;
    live = kept;
    const auto kvs = detail::parsed(what, [&] {
      auto r = detail::parse_etcd_range_many(c.call("/v3/kv/txn", detail::etcd_range_many_request(keys), what));
      if (r.size() != keys.size()) throw std::runtime_error("etcd txn reply lacks some of the ranges asked for");
      return r;
    });
    live.clear();
    for (std::size_t k = 0; k < kept.size(); ++k) {
      ExtendItem& it = items[kept[k]];
      const auto* h = static_cast<const Handle*>(it.handle);
      const auto& kv = kvs[k];
      if (kv && it.owner != nullptr && kv->value == it.owner->str() && kv->create_revision == h->create_revision &&
          kv->lease == h->lease) {
        it.valid_until = detail::saturating_add(
            it.started, std::min<std::chrono::milliseconds>(it.ttl, std::chrono::seconds(h->lease_seconds)));
      } else {
        it.valid_until = std::nullopt;
        detail::revoke_quietly(c, h->lease, what);
      }
    }
  } catch (...) {
    for (const std::size_t i : live) items[i].error = std::current_exception();
  }
}

void EtcdBackend::abandon(std::string_view name, const OwnerId& owner) noexcept {
  try {
    const std::string what = fmt::format("abandon of lock '{}'", name);
    (void)client_->call("/v3/kv/txn", detail::etcd_release_request(key(name), owner.str(), 0), what);
  } catch (...) {  // best effort: what is left expires with its lease
  }
}

EtcdBackend::Subscription EtcdBackend::subscribe_release(std::string_view name) {
  try {
    return Subscription(
        client_->open_watch(detail::etcd_watch_request(key(name), 0), fmt::format("watch of lock '{}'", name)));
  } catch (...) {  // no watch: the waiter falls back to its backoff
    return Subscription(nullptr);
  }
}

EtcdBackend::Subscription::Subscription(std::unique_ptr<detail::EtcdConnection> c) : watch_(std::move(c)) {}
EtcdBackend::Subscription::Subscription(Subscription&&) noexcept = default;
EtcdBackend::Subscription& EtcdBackend::Subscription::operator=(Subscription&&) noexcept = default;
EtcdBackend::Subscription::~Subscription() = default;

bool EtcdBackend::Subscription::wait_for(std::chrono::nanoseconds d) {
  if (!watch_) {
    std::this_thread::sleep_for(d);
    return false;
  }
  const TimePoint deadline = detail::saturating_add(std::chrono::steady_clock::now(), d);
  try {
    for (;;) {
      const auto line = watch_->next_message(deadline);
      if (!line) return false;
      const auto m = detail::parse_etcd_watch_message(*line);
      if (m.canceled) {
        watch_.reset();
        return true;
      }
      if (m.deleted) return true;
    }
  } catch (...) {  // the watch broke: wake the waiter, which tries again
    watch_.reset();
    return true;
  }
}

}  // namespace dlock
