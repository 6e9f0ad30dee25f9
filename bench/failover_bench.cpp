// Failover time, for bench/parts/failover.sh (issue 14 "Benchmarks").
//
//   failover_bench [FAILOVERS] [sentinel|cluster]     (defaults 10, sentinel)
//
// For each failover, a fresh deployment from the integration tests' harness
// (tests/integration/support/redis_ha.hpp, SentinelSetup): one primary, two
// replicas, three sentinels with quorum 2, down-after-milliseconds 500,
// failover-timeout 2000. A RedisBackend given only the redis+sentinel:// URI
// (connect_timeout 200 ms, command_timeout 500 ms) takes and releases a lock
// to show the primary serves; then the primary is SIGKILLed and the clock
// starts; Lock::lock() (retry 5 ms doubling to 50 ms, no jitter,
// acquire_timeout 60 s) on a fresh name stops it at its first grant. That
// time is dominated by the sentinels' settings: down-after-milliseconds
// before a sentinel deems the primary down, then the quorum, the leader
// election and the promotion (about a second more), then the backend's
// next attempt after +switch-master or its next discovery.
//
// cluster: a fresh ClusterSetup per failover (3 primaries, 3 replicas,
// cluster-node-timeout 1000 ms), a RedisBackend on `redis+cluster://` with
// one seed (same timeouts), a lock taken and released on a name of the
// victim's shard; the victim primary is SIGKILLed and the clock starts;
// Lock::lock() on a fresh name of that shard stops it at its first grant,
// on the promoted replica. That time is dominated by cluster-node-timeout
// (the replicas deem the primary failed), then the replica's election
// (about a second more), then the router's next slot-map refresh.
//
// Prints one line per failover ("failover N: T ms") and then
// "p50 T ms, p99 T ms, max T ms over N failovers" (with 10 failovers the
// p99 is the maximum).
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_keys.hpp>

#include "support/redis_ha.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const dlock::LockOptions& lock_options() {
  static const dlock::LockOptions options{
      .ttl = 10s,
      .retry = {.initial_delay = 5ms, .max_delay = 50ms, .jitter = dlock::Jitter::none},
      .acquire_timeout = 60s,
      .observer = std::make_shared<dlock::test::Quiet>()};
  return options;
}

dlock::RedisOptions base_options() {
  dlock::RedisOptions base;
  base.key_prefix = "failover:";
  base.connect_timeout = 200ms;
  base.command_timeout = 500ms;
  return base;
}

// A name whose lock key the node at `port` serves, "<stem><n>".
std::string name_on(const dlock::detail::redis_proto::SlotMap& map, int port, const std::string& stem) {
  for (int n = 0;; ++n) {
    std::string name = stem + std::to_string(n);
    if (map.primary_for_key(dlock::detail::redis_keys("failover:", name).lock)->port == port) return name;
  }
}

double one_cluster_failover(int i) {
  dlock::test::ClusterSetup cluster;
  const int seed = cluster.node(0).port();
  const auto map = dlock::test::ClusterSuite::slot_map(seed);
  int victim = 0;
  for (const auto& p : map.primaries())
    if (p.port != seed) victim = p.port;  // not the seed
  dlock::RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(seed), base_options());
  {
    dlock::Lock<dlock::RedisBackend> before(redis, name_on(map, victim, "before-" + std::to_string(i) + "-"),
                                            lock_options());
    before.lock();
    before.unlock();
  }
  const std::string after_name = name_on(map, victim, "after-" + std::to_string(i) + "-");
  const auto killed = Clock::now();
  cluster.by_port(victim)->kill();
  dlock::Lock<dlock::RedisBackend> after(redis, after_name, lock_options());
  after.lock();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - killed).count();
  after.unlock();
  return ms;
}

double one_failover(int i) {
  dlock::test::SentinelSetup setup;
  if (!dlock::test::sentinels_ready(setup, 30s)) throw std::runtime_error("the sentinels did not find each other");
  dlock::RedisBackend redis(dlock::test::sentinel_uri(setup), base_options());
  const dlock::LockOptions& options = lock_options();
  {
    dlock::Lock<dlock::RedisBackend> before(redis, "before-" + std::to_string(i), options);
    before.lock();
    before.unlock();
  }
  const auto killed = Clock::now();
  setup.primary().kill();
  dlock::Lock<dlock::RedisBackend> after(redis, "after-" + std::to_string(i), options);
  after.lock();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - killed).count();
  after.unlock();
  return ms;
}

}  // namespace

int main(int argc, char** argv) try {
  const int n = argc > 1 ? std::atoi(argv[1]) : 10;
  if (n < 1) throw std::runtime_error("FAILOVERS must be at least 1");
  const std::string mode = argc > 2 ? argv[2] : "sentinel";
  if (mode != "sentinel" && mode != "cluster") throw std::runtime_error("the mode is sentinel or cluster");
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    ms.push_back(mode == "cluster" ? one_cluster_failover(i) : one_failover(i));
    std::printf("failover %d: %.0f ms\n", i + 1, ms.back());
    std::fflush(stdout);
  }
  std::sort(ms.begin(), ms.end());
  const auto at = [&](double q) {
    return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ms.size())))];
  };
  std::printf("%s: p50 %.0f ms, p99 %.0f ms, max %.0f ms over %d failovers\n", mode.c_str(), at(0.5), at(0.99),
              ms.back(), n);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "failover_bench: %s\n", e.what());
  return 1;
}
