// dlockctl etcd list|inspect|release: the locks EtcdBackend keeps in etcd
// (keys <prefix>NAME, value the owner id, a lease, create revision the token).
#include <chrono>
#include <optional>
#include <ostream>

#include <fmt/format.h>

#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/etcd.hpp>

#include "cli.hpp"
#include "etcd/etcd_client.hpp"
#include "output.hpp"

namespace dlockctl {

namespace {

namespace d = dlock::detail;

std::string quoted(std::string_view name) { return "\"" + escape_text(name) + "\""; }

struct EtcdLock {
  std::string name;
  d::EtcdKv kv;
  long long ttl_ms = -2;  ///< the lease's remaining TTL; -1: no lease; -2: unknown
};

// The remaining TTL of the key's lease, or -1 when the key has none.
long long lease_ttl_ms(d::EtcdClient& c, std::int64_t lease) {
  if (lease == 0) return -1;
  const auto left =
      d::parse_etcd_time_to_live(c.call("/v3/lease/timetolive", d::etcd_lease_id_request(lease), "lease"));
  return left < 0 ? -2 : left * 1000;
}

std::vector<EtcdLock> read_locks(d::EtcdClient& c, const std::string& key, bool prefix, std::size_t strip) {
  std::vector<EtcdLock> out;
  for (auto& kv : d::parse_etcd_range(c.call("/v3/kv/range", d::etcd_range_request(key, prefix), "range"))) {
    EtcdLock l{.name = kv.key.substr(std::min(strip, kv.key.size())), .kv = std::move(kv)};
    l.ttl_ms = lease_ttl_ms(c, l.kv.lease);
    out.push_back(std::move(l));
  }
  return out;
}

void write_lock_json(JsonWriter& j, const EtcdLock& l) {
  j.begin_object().name("name", l.name).name("owner", l.kv.value).key("ttl_ms").value(l.ttl_ms);
  j.key("token").value(static_cast<long long>(l.kv.create_revision));
  j.key("lease").value(fmt::format("{:x}", l.kv.lease)).end_object();
}

void print_not_held(Context& ctx, const dlock::EtcdOptions& o, std::string_view name, std::string_view endpoints) {
  if (ctx.json) {
    JsonWriter j;
    j.begin_object().key("endpoint").value(endpoints).name("prefix", o.key_prefix).name("name", name);
    j.key("held").value(false).end_object();
    ctx.out << j.str() << "\n";
  } else {
    ctx.out << "lock " << quoted(name) << " is not held on " << endpoints << " (prefix " << quoted(o.key_prefix)
            << ")\n";
  }
}

}  // namespace

dlock::EtcdOptions etcd_options(const Context& ctx) {
  dlock::EtcdOptions o;
  std::string endpoints;
  if (const auto v = ctx.args.get("etcd")) {
    endpoints = *v;
  } else if (const char* env = ctx.getenv("DLOCK_ETCD"); env && *env) {
    endpoints = env;
  }
  if (!endpoints.empty()) o.endpoints = split_list(endpoints);
  if (const auto v = ctx.args.get("prefix")) o.key_prefix = *v;
  if (const auto v = ctx.args.get("user")) o.username = *v;
  if (const auto v = ctx.args.get("password")) {
    o.password = *v;
  } else if (const char* env = ctx.getenv("DLOCK_ETCD_PASSWORD"); env && *env) {
    o.password = env;
  }
  const auto cacert = ctx.args.get("cacert");
  const auto cert = ctx.args.get("cert");
  const auto key = ctx.args.get("key");
  if (cacert || cert || key) {
    o.tls =
        dlock::TlsOptions{.ca_file = cacert.value_or(""), .cert_file = cert.value_or(""), .key_file = key.value_or("")};
  }
  o.dial_timeout = o.request_timeout = timeout_of(ctx);
  o.pool_size = 2;
  try {
    d::validate(o);
  } catch (const dlock::InvalidArgument& e) {
    throw UsageError(e.what());
  }
  return o;
}

int cmd_etcd_list(Context& ctx) {
  const auto o = etcd_options(ctx);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::EtcdBackend etcd(o);
    const auto locks = read_locks(etcd.client(), o.key_prefix, true, o.key_prefix.size());
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(etcd.endpoint()).name("prefix", o.key_prefix).key("locks").begin_array();
      for (const auto& l : locks) write_lock_json(j, l);
      j.end_array().end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    Table t({"NAME", "OWNER", "TTL", "TOKEN", "LEASE"});
    for (const auto& l : locks) {
      t.add({escape_text(l.name), escape_text(l.kv.value), format_ttl(l.ttl_ms), std::to_string(l.kv.create_revision),
             fmt::format("{:x}", l.kv.lease)});
    }
    if (!t.empty()) ctx.out << t.render();
    ctx.out << fmt::format("{} lock{} under prefix {} on {}\n", locks.size(), locks.size() == 1 ? "" : "s",
                           quoted(o.key_prefix), etcd.endpoint());
    return exit_ok;
  });
}

int cmd_etcd_inspect(Context& ctx) {
  const auto o = etcd_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::EtcdBackend etcd(o);
    const auto locks = read_locks(etcd.client(), etcd.key(name), false, o.key_prefix.size());
    if (locks.empty()) {
      print_not_held(ctx, o, name, etcd.endpoint());
      return exit_not_found;
    }
    const EtcdLock& l = locks.front();
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(etcd.endpoint()).name("prefix", o.key_prefix).name("name", name);
      j.name("key", l.kv.key).key("held").value(true).name("owner", l.kv.value).key("ttl_ms").value(l.ttl_ms);
      j.key("token").value(static_cast<long long>(l.kv.create_revision));
      j.key("mod_revision").value(static_cast<long long>(l.kv.mod_revision));
      j.key("lease").value(fmt::format("{:x}", l.kv.lease)).end_object();
      ctx.out << j.str() << "\n";
      return exit_ok;
    }
    ctx.out << "lock     " << quoted(name) << "\n"
            << "key      " << escape_text(l.kv.key) << " on " << etcd.endpoint() << "\n"
            << "owner    " << escape_text(l.kv.value) << "\n"
            << "ttl      " << format_ttl(l.ttl_ms) << " (lease " << fmt::format("{:x}", l.kv.lease) << ")\n"
            << "token    " << l.kv.create_revision << " (create revision; last modified at " << l.kv.mod_revision
            << ")\n";
    return exit_ok;
  });
}

int cmd_etcd_release(Context& ctx) {
  if (!ctx.args.has("force"))
    throw UsageError("release breaks a lock that someone may still hold: give --force (and --yes to do it)");
  const auto o = etcd_options(ctx);
  const std::string name = ctx.args.positionals().at(0);
  return guarded(ctx, secrets_of(ctx), [&]() -> int {
    dlock::EtcdBackend etcd(o);
    const std::string key = etcd.key(name);
    const auto locks = read_locks(etcd.client(), key, false, o.key_prefix.size());
    if (locks.empty()) {
      print_not_held(ctx, o, name, etcd.endpoint());
      return exit_not_found;
    }
    const EtcdLock& l = locks.front();
    if (!ctx.args.has("yes")) {
      ctx.err << fmt::format(
          "dlockctl: would delete {} on {} (owner {}, {} left, token {}); waiters watching it wake up; the holder is "
          "told only at its next extension and may still be working. Rerun with --yes to do it.\n",
          escape_text(key), etcd.endpoint(), escape_text(l.kv.value), format_ttl(l.ttl_ms), l.kv.create_revision);
      return exit_usage;
    }
    // The incarnation shown above only: a lock taken again meanwhile is not broken.
    const bool deleted = d::parse_etcd_txn_succeeded(etcd.client().call(
        "/v3/kv/txn", d::etcd_release_request(key, l.kv.value, l.kv.create_revision), "force release"));
    if (!deleted) {
      print_not_held(ctx, o, name, etcd.endpoint());
      return exit_not_found;
    }
    if (ctx.json) {
      JsonWriter j;
      j.begin_object().key("endpoint").value(etcd.endpoint()).name("prefix", o.key_prefix).name("name", name);
      j.name("key", key).key("released").value(true).name("owner", l.kv.value).key("ttl_ms").value(l.ttl_ms);
      j.key("token").value(static_cast<long long>(l.kv.create_revision)).end_object();
      ctx.out << j.str() << "\n";
    } else {
      ctx.out << fmt::format("released {}: deleted {} on {} (owner {}, {} left, token {}); waiters notified\n",
                             quoted(name), escape_text(key), etcd.endpoint(), escape_text(l.kv.value),
                             format_ttl(l.ttl_ms), l.kv.create_revision);
    }
    return exit_ok;
  });
}

}  // namespace dlockctl
