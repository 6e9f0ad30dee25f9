// Redis Cluster throughput, for bench/parts/cluster.sh (issue 14 "Benchmarks").
//
//   cluster_bench [PRIMARIES] [SECONDS] [RUNS]     (defaults 3, 3, 3)
//
// Starts a cluster of PRIMARIES `--cluster-enabled yes` servers without
// replicas (the 16384 slots split evenly by CLUSTER ADDSLOTSRANGE, the nodes
// joined by CLUSTER MEET; redis-cli --cluster create needs three), with the
// integration tests' harness (tests/integration/support/redis_ha.hpp).
// Each run, in this order:
//   floor:  for each primary in turn, `redis-benchmark -c 8 -P 1` running
//           EVALSHA of dlock's acquire script on random keys in a hash tag
//           that primary serves; the sum over the primaries, halved (a dlock
//           acquire+release pair is two such round trips), in pairs/s;
//   dlock:  8 threads, each try_lock + unlock pairs on names of its own
//           spread over all slots (1024 per thread), through one
//           RedisBackend on `redis+cluster://` (pool_size 8 per node), for
//           SECONDS;
//   floor again; ratio = dlock / the mean of the two floors. The same floor
//   with every primary's redis-benchmark at once is measured around the
//   dlock run too ("at once"): on a machine with fewer cores than primaries
//   plus clients, the summed floor is more than the machine can serve.
// Prints one line per run and the medians. Two cores cap the absolute
// figures (the servers, redis-benchmark and the 8 threads share them); the
// ratio and its change from 1 to 3 primaries are what to read.
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_scripts.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "support/redis_ha.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::test::RedisServer;
using dlock::test::RespConn;

// PRIMARIES cluster nodes without replicas, every slot served.
class BareCluster {
 public:
  explicit BareCluster(int primaries) {
    for (int i = 0; i < primaries; ++i)
      nodes_.push_back(std::make_unique<RedisServer>(std::vector<std::string>{
          "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"}));
    const int per = dlock::detail::redis_proto::cluster_slot_count / primaries;
    for (int i = 0; i < primaries; ++i) {
      const int first = i * per;
      const int last = i + 1 == primaries ? dlock::detail::redis_proto::cluster_slot_count - 1 : first + per - 1;
      RespConn c(nodes_[static_cast<std::size_t>(i)]->port());
      const auto r = c.command({"CLUSTER", "ADDSLOTSRANGE", std::to_string(first), std::to_string(last)});
      if (r.str != "OK") throw std::runtime_error("CLUSTER ADDSLOTSRANGE: " + r.str);
      if (i > 0) (void)c.command({"CLUSTER", "MEET", "127.0.0.1", std::to_string(nodes_[0]->port())});
    }
    const bool ok = dlock::test::eventually(
        [&] {
          for (const auto& n : nodes_) {
            if (dlock::test::ClusterSetup::cluster_state(n->port()) != "ok") return false;
            if (dlock::test::ClusterSuite::slot_map(n->port()).primaries().size() != nodes_.size()) return false;
          }
          return true;
        },
        30s);
    if (!ok) throw std::runtime_error("the cluster did not become ok");
  }
  BareCluster(const BareCluster&) = delete;
  BareCluster& operator=(const BareCluster&) = delete;
  ~BareCluster() {
    for (auto& n : nodes_) n->kill();
  }
  [[nodiscard]] std::vector<int> ports() const {
    std::vector<int> out;
    for (const auto& n : nodes_) out.push_back(n->port());
    return out;
  }

 private:
  std::vector<std::unique_ptr<RedisServer>> nodes_;
};

// A hash tag whose slot `port` serves.
std::string tag_on(const dlock::detail::redis_proto::SlotMap& map, int port) {
  for (int i = 0;; ++i) {
    const std::string tag = fmt::format("t{}", i);
    if (map.primary_for_key(fmt::format("{{{}}}", tag))->port == port) return tag;
  }
}

// `redis-benchmark -c 8 -P 1` of EVALSHA of the acquire script on the node
// at `port`, on random keys in `tag`, started (read its figure with ops_of).
FILE* start_floor(int port, const std::string& sha, const std::string& tag) {
  const std::string cmd = "redis-benchmark -p " + std::to_string(port) +
                          " -c 8 -P 1 -n 40000 -r 1000000 --csv EVALSHA " + sha + " 2 'dlock-floor:{" + tag +
                          "}:__rand_int__' 'dlock-floor:{" + tag +
                          "}:__rand_int__:fence' 01936b8e-7c3a-7d2e-9f01-2b3c4d5e6f70 2000 60000 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen redis-benchmark failed");
  return p;
}

// The ops/s redis-benchmark printed (its CSV's second line).
double ops_of(FILE* p) {
  char line[512];
  double ops = 0;
  int n = 0;
  while (std::fgets(line, sizeof line, p)) {
    if (++n != 2) continue;  // the header, then "EVALSHA ...","ops/s",...
    const std::string s(line);
    const auto a = s.find("\",\"");
    if (a != std::string::npos) ops = std::atof(s.c_str() + a + 3);
  }
  ::pclose(p);
  if (ops <= 0) throw std::runtime_error("redis-benchmark gave no figure");
  return ops;
}

// The floor in pairs/s: EVALSHA ops/s halved, summed over the primaries,
// each measured alone (`together` false: the figure) or all at once
// (what the machine's cores allow the primaries together).
double floor_pairs(const std::vector<int>& ports, const std::string& sha,
                   const dlock::detail::redis_proto::SlotMap& map, bool together) {
  double sum = 0;
  std::vector<FILE*> running;
  for (int port : ports) {
    running.push_back(start_floor(port, sha, tag_on(map, port)));
    if (!together) {
      sum += ops_of(running.back());
      running.clear();
    }
  }
  for (FILE* p : running) sum += ops_of(p);
  return sum / 2;
}

double dlock_pairs(dlock::RedisBackend& redis, std::chrono::seconds seconds) {
  constexpr int threads = 8;
  std::atomic<bool> stop{false};
  std::atomic<long> pairs{0};
  std::vector<std::thread> workers;
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      long mine = 0;
      for (int i = 0; !stop; ++i) {
        dlock::Lock<dlock::RedisBackend> lock(redis, "b" + std::to_string(t) + "-" + std::to_string(i % 1024),
                                              {.ttl = 10s, .observer = quiet});
        if (!lock.try_lock()) continue;
        lock.unlock();
        ++mine;
      }
      pairs += mine;
    });
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(seconds);  // the measured interval
  stop = true;
  for (auto& w : workers) w.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(pairs.load()) / s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  const int primaries = argc > 1 ? std::atoi(argv[1]) : 3;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 3;
  const int runs = argc > 3 ? std::atoi(argv[3]) : 3;
  if (primaries < 1 || seconds < 1 || runs < 1) throw std::runtime_error("PRIMARIES, SECONDS, RUNS must be >= 1");
  BareCluster cluster(primaries);
  const auto ports = cluster.ports();
  const auto map = dlock::test::ClusterSuite::slot_map(ports[0]);
  std::string sha;
  for (int port : ports) {
    const auto r = RespConn(port).command({"SCRIPT", "LOAD", dlock::detail::redis_acquire_script});
    sha = r.str;
  }
  dlock::RedisOptions base;
  base.pool_size = 8;  // as many connections per node as redis-benchmark's clients
  dlock::RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(ports[0]), base);
  (void)dlock_pairs(redis, 1s);  // warm-up: every node's pool and script cache
  std::vector<double> floors, dlocks, ratios, together, together_ratios;
  for (int run = 1; run <= runs; ++run) {
    const double a = floor_pairs(ports, sha, map, false);
    const double ta = floor_pairs(ports, sha, map, true);
    const double d = dlock_pairs(redis, std::chrono::seconds(seconds));
    const double tb = floor_pairs(ports, sha, map, true);
    const double b = floor_pairs(ports, sha, map, false);
    const double f = (a + b) / 2;
    const double t = (ta + tb) / 2;
    floors.push_back(f);
    together.push_back(t);
    dlocks.push_back(d);
    ratios.push_back(d / f);
    together_ratios.push_back(d / t);
    std::printf(
        "run %d: %d primaries, 8 threads: dlock %.0f pairs/s; floor summed over the primaries %.0f pairs/s "
        "(ratio %.2f); floor of the primaries at once %.0f pairs/s (ratio %.2f)\n",
        run, primaries, d, f, d / f, t, d / t);
    std::fflush(stdout);
  }
  std::printf(
      "median over %d runs, %d primaries: dlock %.0f pairs/s; summed floor %.0f pairs/s, ratio %.2f; "
      "floor at once %.0f pairs/s, ratio %.2f\n",
      runs, primaries, median(dlocks), median(floors), median(ratios), median(together), median(together_ratios));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "cluster_bench: %s\n", e.what());
  return 1;
}
