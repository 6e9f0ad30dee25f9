// Conformance fixture of EtcdBackend: one three-member etcd cluster for the
// suite (support/etcd_server.hpp) with a FaultProxy in front of each member's
// client port; each test has its own key prefix, deleted afterwards.
#pragma once

#include <dlock/etcd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conformance.hpp"
#include "integration/support/etcd_server.hpp"
#include "integration/support/fault_proxy.hpp"

namespace dlock::conformance {

class EtcdFixture {
 public:
  using Backend = EtcdBackend;
  static constexpr Traits traits{.threads = 4, .cycles = 50, .processes = 8, .process_cycles = 40};

  static void start_servers() {
    cluster() = std::make_unique<test::EtcdCluster>();
    for (int i = 0; i < cluster()->size(); ++i)
      proxies().push_back(std::make_unique<test::FaultProxy>(cluster()->client_port(i)));
  }
  static void stop_servers() {
    proxies().clear();
    cluster().reset();
  }
  void set_up(const std::string& id) {
    prefix_ = "dlock-conformance/" + id + "/";
    admin_ = std::make_unique<EtcdBackend>(cluster()->options(prefix_));
  }
  void tear_down() {
    heal();
    try {
      (void)admin_->client().call("/v3/kv/deleterange", detail::etcd_range_request(prefix_, true), "clean-up");
    } catch (const std::exception&) {
    }
  }

  Backend make() { return EtcdBackend(cluster()->options(prefix_)); }
  Backend make_faulty() {
    EtcdOptions o = cluster()->options(prefix_);
    o.endpoints.clear();
    for (auto& p : proxies()) o.endpoints.push_back("http://127.0.0.1:" + std::to_string(p->port()));
    o.request_timeout = std::chrono::milliseconds(300);  // three endpoints tried per call
    return EtcdBackend(o);
  }
  void cut() {
    for (auto& p : proxies()) p->cut();
  }
  void silence() {
    for (auto& p : proxies()) p->silence();
  }
  void heal() {
    for (auto& p : proxies()) p->heal();
  }
  /// Deletes the lock's key, as an operator would.
  void force_delete(std::string_view name) {
    (void)admin_->client().call("/v3/kv/deleterange", detail::etcd_range_request(admin_->key(name), false),
                                "force delete");
  }

 private:
  static std::unique_ptr<test::EtcdCluster>& cluster() {
    static std::unique_ptr<test::EtcdCluster> c;
    return c;
  }
  static std::vector<std::unique_ptr<test::FaultProxy>>& proxies() {
    static std::vector<std::unique_ptr<test::FaultProxy>> p;
    return p;
  }
  std::string prefix_;
  std::unique_ptr<EtcdBackend> admin_;
};

}  // namespace dlock::conformance
