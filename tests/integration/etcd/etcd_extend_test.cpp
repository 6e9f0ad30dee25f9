// EtcdBackend::extend_many (BatchesExtend): many leases extended in two
// requests (one keepalive stream, one txn), counted with the server's own
// gRPC counters; a key deleted behind its holder's back is reported lost.
#include <dlock/etcd.hpp>
#include <dlock/lock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "support/counting_backend.hpp"
#include "support/etcd_server.hpp"
#include "unit/test_support.hpp"

namespace dlock {
namespace {

using namespace std::chrono_literals;

// Requests the member has started, of one gRPC method (its /metrics page; the
// HTTP gateway forwards every JSON request as one gRPC call or stream).
long started(EtcdBackend& b, std::string_view method) {
  const std::string page = b.client().call("/metrics", "{}", "metrics");
  const std::string needle = fmt::format("grpc_server_started_total{{grpc_method=\"{}\"", method);
  const auto at = page.find(needle);
  if (at == std::string::npos) return -1;
  const auto space = page.find(' ', page.find('}', at));
  return std::stol(page.substr(space + 1));
}
long requests(EtcdBackend& b) { return started(b, "Txn") + started(b, "LeaseKeepAlive"); }

TEST(EtcdExtendMany, TwoRequestsForManyLeasesAndALostKeyIsReported) {
  test::EtcdCluster cluster({.members = 1});
  EtcdBackend b(cluster.options());
  constexpr std::size_t n = 6;
  std::vector<OwnerId> owners;
  owners.reserve(n);
  std::vector<std::string> names;
  names.reserve(n);
  std::vector<EtcdBackend::Handle> handles;
  for (std::size_t i = 0; i < n; ++i) {
    owners.push_back(OwnerId::generate());
    names.push_back("many:" + std::to_string(i));
    auto r = b.try_acquire(
        AcquireRequest{.name = names[i], .owner = owners[i], .ttl = 30s, .started = std::chrono::steady_clock::now()});
    ASSERT_TRUE(std::holds_alternative<Grant<EtcdBackend::Handle>>(r));
    handles.push_back(std::get<Grant<EtcdBackend::Handle>>(r).handle);
  }
  auto items = [&] {
    std::vector<ExtendItem> v;
    for (std::size_t i = 0; i < n; ++i)
      v.push_back(ExtendItem{names[i], &owners[i], 20s, std::chrono::steady_clock::now(), &handles[i]});
    return v;
  };
  std::vector<ExtendItem> all = items();
  long before = requests(b);
  b.extend_many(all);
  EXPECT_EQ(requests(b) - before, 2) << "one keepalive stream and one txn for " << n << " leases";
  for (const auto& it : all) {
    EXPECT_FALSE(it.error);
    ASSERT_TRUE(it.valid_until.has_value()) << it.name;
    EXPECT_GT(*it.valid_until, it.started + 19s);
  }

  // Lock 2 is deleted behind its holder's back (an operator, dlockctl release --force).
  (void)b.client().call("/v3/kv/deleterange", fmt::format(R"({{"key":"{}"}})", detail::base64_encode(b.key(names[2]))),
                        "delete");
  all = items();
  all[4].handle = nullptr;  // a caller that did not pass the Handle
  before = requests(b);
  b.extend_many(all);
  EXPECT_EQ(requests(b) - before, 2) << "the lost lease's revoke is not a Txn or keepalive";
  for (std::size_t i = 0; i < n; ++i) {
    if (i == 4) {
      EXPECT_TRUE(all[i].error);
      EXPECT_FALSE(all[i].valid_until);
    } else if (i == 2) {
      EXPECT_FALSE(all[i].error);
      EXPECT_FALSE(all[i].valid_until.has_value()) << "a deleted key is lost";
    } else {
      EXPECT_FALSE(all[i].error) << names[i];
      EXPECT_TRUE(all[i].valid_until.has_value()) << names[i];
    }
  }
}

struct Counting : Observer {
  std::atomic<int> lost{0}, extended{0};
  void on_event(const Event& e) noexcept override {
    if (e.type == EventType::lost) ++lost;
    if (e.type == EventType::extended) ++extended;
  }
};

TEST(EtcdExtendMany, TheHeartbeatBatchesEtcdExtensions) {
  test::EtcdCluster cluster({.members = 1});
  EtcdBackend b(cluster.options());
  test::CountingBackend<EtcdBackend> counting_etcd(b);
  auto counting = std::make_shared<Counting>();
  constexpr int n = 8;
  std::vector<std::unique_ptr<Lock<test::CountingBackend<EtcdBackend>>>> locks;
  for (int i = 0; i < n; ++i) {
    locks.push_back(std::make_unique<Lock<test::CountingBackend<EtcdBackend>>>(
        counting_etcd, "hb:" + std::to_string(i), LockOptions{.ttl = 1s, .auto_extend = true, .observer = counting}));
    locks.back()->lock();
  }
  const long before = requests(b);
  // Every lock extended three times (about a second of real server time).
  ASSERT_TRUE(test::eventually([&] { return counting->extended.load() >= n * 3; }, 20s));
  const long made = requests(b) - before;
  const auto& c = counting_etcd.counts();
  EXPECT_EQ(c.single.load(), 0);
  EXPECT_EQ(counting->lost.load(), 0);
  EXPECT_LE(made, 2 * c.batches.load()) << "two requests per batch";
  EXPECT_LT(made, 2L * counting->extended.load()) << "fewer requests than two per extension";
  std::printf("%d extensions of %d etcd locks in %ld batches, %ld requests\n", counting->extended.load(), n,
              c.batches.load(), made);

  // One key deleted behind its holder's back: that lock alone is lost.
  const auto stop = locks[3]->stop_token();
  (void)b.client().call("/v3/kv/deleterange", fmt::format(R"({{"key":"{}"}})", detail::base64_encode(b.key("hb:3"))),
                        "delete");
  ASSERT_TRUE(test::eventually([&] { return stop.stop_requested(); }, 10s));
  EXPECT_EQ(counting->lost.load(), 1);
  for (int i = 0; i < n; ++i) EXPECT_EQ(locks[i]->owns_lock(), i != 3) << i;
  for (int i = 0; i < n; ++i)
    if (i != 3) locks[i]->unlock();
}

}  // namespace
}  // namespace dlock
