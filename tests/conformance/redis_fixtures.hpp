// Conformance fixtures of the Redis family: RedisBackend on one redis-server
// and RedlockBackend on N. Each suite starts its servers (and a FaultProxy in
// front of each) once; each test has its own key prefix, deleted afterwards.
#pragma once

#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conformance.hpp"
#include "integration/support/fault_proxy.hpp"
#include "integration/support/redis_server.hpp"

namespace dlock::conformance {

/// N redis-servers (TLS ones with `Tls` on), each with a FaultProxy in front, for the whole suite.
template <std::size_t N, test::TlsMode Tls = test::TlsMode::off>
class RedisServers {
 public:
  static void start() {
    auto& s = servers();
    for (std::size_t i = 0; i < N; ++i) {
      s.push_back(std::make_unique<test::RedisServer>(std::vector<std::string>{}, Tls));
      proxies().push_back(std::make_unique<test::FaultProxy>(s.back()->port()));
    }
  }
  static void stop() {
    proxies().clear();
    servers().clear();
  }
  /// Node i with key prefix `prefix`, directly or through its proxy.
  static RedisOptions options(std::size_t i, const std::string& prefix, bool via_proxy = false) {
    RedisOptions o = servers().at(i)->options();
    o.key_prefix = prefix;
    if (via_proxy) o.port = proxies().at(i)->port();
    return o;
  }
  static void cut() {
    for (auto& p : proxies()) p->cut();
  }
  static void silence() {
    for (auto& p : proxies()) p->silence();
  }
  static void heal() {
    for (auto& p : proxies()) p->heal();
  }

 private:
  static std::vector<std::unique_ptr<test::RedisServer>>& servers() {
    static std::vector<std::unique_ptr<test::RedisServer>> s;
    return s;
  }
  static std::vector<std::unique_ptr<test::FaultProxy>>& proxies() {
    static std::vector<std::unique_ptr<test::FaultProxy>> p;
    return p;
  }
};

/// Per-test key prefix on N nodes: admin clients, the operator's DEL, clean-up.
template <std::size_t N, test::TlsMode Tls = test::TlsMode::off>
class RedisTestKeys {
 public:
  void set_up(const std::string& id) {
    prefix_ = "dlock-conformance:" + id + ":";
    admins_.clear();
    for (std::size_t i = 0; i < N; ++i) admins_.emplace_back(RedisServers<N, Tls>::options(i, prefix_));
  }
  void tear_down() {
    RedisServers<N, Tls>::heal();
    for (auto& a : admins_) test::delete_keys(a.node(), prefix_);
  }
  /// DEL of the lock's key on every node, as an operator would.
  void force_delete(std::string_view name) {
    for (auto& a : admins_) (void)a.node().command({"DEL", detail::redis_keys(prefix_, name).lock});
  }
  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }

 private:
  std::string prefix_;
  std::vector<RedisBackend> admins_;
};

/// RedisBackend on one server; over TLS with `Tls` on (verified against the test CA).
template <test::TlsMode Tls = test::TlsMode::off>
class RedisFixtureT {
 public:
  using Backend = RedisBackend;
  static constexpr Traits traits{.threads = 4, .cycles = 100, .processes = 4, .process_cycles = 50};

  static void start_servers() { RedisServers<1, Tls>::start(); }
  static void stop_servers() { RedisServers<1, Tls>::stop(); }
  void set_up(const std::string& id) { keys_.set_up(id); }
  void tear_down() { keys_.tear_down(); }

  Backend make() { return RedisBackend(RedisServers<1, Tls>::options(0, keys_.prefix())); }
  Backend make_faulty() { return RedisBackend(RedisServers<1, Tls>::options(0, keys_.prefix(), true)); }
  void cut() { RedisServers<1, Tls>::cut(); }
  void silence() { RedisServers<1, Tls>::silence(); }
  void heal() { RedisServers<1, Tls>::heal(); }
  void force_delete(std::string_view name) { keys_.force_delete(name); }

 private:
  RedisTestKeys<1, Tls> keys_;
};
using RedisFixture = RedisFixtureT<>;
using RedisTlsFixture = RedisFixtureT<test::TlsMode::on>;

template <std::size_t N>
class RedlockFixture {
 public:
  using Backend = RedlockBackend;
  static constexpr Traits traits{.threads = 4, .cycles = 40, .processes = 4, .process_cycles = 25};

  static void start_servers() { RedisServers<N>::start(); }
  static void stop_servers() { RedisServers<N>::stop(); }
  void set_up(const std::string& id) { keys_.set_up(id); }
  void tear_down() { keys_.tear_down(); }

  Backend make() { return RedlockBackend(options(false)); }
  Backend make_faulty() { return RedlockBackend(options(true)); }
  /// Every node unreachable (a minority would not be an outage for Redlock).
  void cut() { RedisServers<N>::cut(); }
  void silence() { RedisServers<N>::silence(); }
  void heal() { RedisServers<N>::heal(); }
  void force_delete(std::string_view name) { keys_.force_delete(name); }

 private:
  RedlockOptions options(bool via_proxy) const {
    RedlockOptions o;
    for (std::size_t i = 0; i < N; ++i) o.nodes.push_back(RedisServers<N>::options(i, keys_.prefix(), via_proxy));
    o.key_prefix = keys_.prefix();
    o.node_timeout = std::chrono::milliseconds(250);  // the default 50 ms is tight on a loaded 2-core machine
    return o;
  }
  RedisTestKeys<N> keys_;
};

}  // namespace dlock::conformance
