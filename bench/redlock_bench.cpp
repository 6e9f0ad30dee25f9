// RedlockBackend over five nodes against RedisBackend on one, for bench/parts/redlock.sh.
//
//   DLOCK_BENCH_REDLOCK_PORTS=7001,7002,7003,7004,7005 redlock_bench
//
// BM_redis_single_uncontended: one thread, try_lock + unlock pairs on one
//   lock with RedisBackend on the first node: two round trips per pair.
// BM_redlock_uncontended: the same with RedlockBackend over all nodes: two
//   parallel rounds per pair (each one pipelined request per node).
// BM_floor_parallel/N: the floor any Redlock client has on this machine:
//   raw blocking hiredis, no dlock, the same two scripts (acquire, release)
//   with the same keys sent to the first N nodes at once and the replies
//   read in order. /1 is the single-node floor, /5 the five-node one.
// BM_floor_serial/5: the same, one node after the other (what a client that
//   does not fan out in parallel would cost).
// BM_redlock_contended/8/H: 8 contenders, each with its own backend (as 8
//   processes would have) and Lock on one name: lock(), H microseconds of
//   work (a sleep; /0: none), unlock(), for DLOCK_BENCH_SECONDS (default 5).
//   Reports handoffs/s, the p50/p99 wait of lock(), and the fewest/most
//   acquisitions of a contender.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>

#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_scripts.hpp>

#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace std::chrono_literals;

std::vector<int> ports() {
  const char* p = std::getenv("DLOCK_BENCH_REDLOCK_PORTS");
  std::vector<int> out;
  std::stringstream in(p ? p : "7001,7002,7003,7004,7005");
  for (std::string s; std::getline(in, s, ',');) out.push_back(std::stoi(s));
  return out;
}

dlock::RedlockOptions redlock_options() {
  dlock::RedlockOptions o{.allow_fewer_than_three = true, .key_prefix = "dlock-bench:"};  // 1..N nodes for experiments
  for (int p : ports()) o.nodes.push_back({.host = "127.0.0.1", .port = p, .pool_size = 1});
  return o;
}

void BM_redis_single_uncontended(benchmark::State& state) {
  dlock::RedisBackend redis(
      dlock::RedisOptions{.host = "127.0.0.1", .port = ports().at(0), .key_prefix = "dlock-bench:", .pool_size = 1});
  dlock::bench::lock_unlock_pairs(state, redis);
}
BENCHMARK(BM_redis_single_uncontended)->UseRealTime();

void BM_redlock_uncontended(benchmark::State& state) {
  dlock::RedlockBackend rl(redlock_options());
  dlock::bench::lock_unlock_pairs(state, rl);
}
BENCHMARK(BM_redlock_uncontended)->UseRealTime();

// Raw hiredis connections to the first n nodes with dlock's acquire and
// release scripts loaded: the floor's client.
class RawNodes {
 public:
  explicit RawNodes(std::size_t n) {
    const auto all = ports();
    for (std::size_t i = 0; i < n && i < all.size(); ++i) {
      redisContext* c = redisConnect("127.0.0.1", all[i]);
      if (c == nullptr || c->err != 0)
        throw std::runtime_error("floor: cannot connect to port " + std::to_string(all[i]));
      nodes_.push_back(c);
      acquire_sha_ = load(c, dlock::detail::redis_acquire_script);
      release_sha_ = load(c, dlock::detail::redis_release_script);
    }
    if (nodes_.size() != n) throw std::runtime_error("floor: fewer nodes than asked for");
  }
  RawNodes(const RawNodes&) = delete;
  RawNodes& operator=(const RawNodes&) = delete;
  ~RawNodes() {
    for (redisContext* c : nodes_) redisFree(c);
  }

  // One acquire and one release round, in parallel or one node after the other.
  // Returns false unless every node granted and released.
  bool pair(bool parallel) {
    bool ok = true;
    const char* fence_ttl = "86400000";
    round(
        parallel, ok,
        [&](redisContext* c) {
          redisAppendCommand(c, "EVALSHA %s 2 %b %b %b %s %s", acquire_sha_.c_str(), keys_.lock.data(),
                             keys_.lock.size(), keys_.fence.data(), keys_.fence.size(), owner_.data(), owner_.size(),
                             "30000", fence_ttl);
        },
        [](const redisReply* r) {
          return r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 1;
        });
    round(
        parallel, ok,
        [&](redisContext* c) {
          redisAppendCommand(c, "EVALSHA %s 1 %b %b %b", release_sha_.c_str(), keys_.lock.data(), keys_.lock.size(),
                             owner_.data(), owner_.size(), keys_.channel.data(), keys_.channel.size());
        },
        [](const redisReply* r) { return r->type == REDIS_REPLY_INTEGER && r->integer == 1; });
    return ok;
  }

 private:
  static std::string load(redisContext* c, std::string_view script) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "SCRIPT LOAD %b", script.data(), script.size()));
    if (r == nullptr || r->type != REDIS_REPLY_STRING) throw std::runtime_error("floor: SCRIPT LOAD failed");
    std::string sha(r->str, r->len);
    freeReplyObject(r);
    return sha;
  }

  template <class Append, class Check>
  void round(bool parallel, bool& ok, Append append, Check check) {
    const auto reply = [&](redisContext* c) {
      void* r = nullptr;
      if (redisGetReply(c, &r) != REDIS_OK || r == nullptr) {
        ok = false;
        return;
      }
      ok = ok && check(static_cast<redisReply*>(r));
      freeReplyObject(r);
    };
    for (redisContext* c : nodes_) {
      append(c);
      if (parallel) {
        int done = 0;
        while (done == 0 && redisBufferWrite(c, &done) == REDIS_OK) {
        }
      } else {
        reply(c);
      }
    }
    if (parallel)
      for (redisContext* c : nodes_) reply(c);
  }

  std::vector<redisContext*> nodes_;
  std::string acquire_sha_, release_sha_;
  const dlock::detail::RedisKeys keys_ = dlock::detail::redis_keys("dlock-bench:", "floor");
  const std::string owner_ = "01936b8e-7c3a-7d2e-9f01-2b3c4d5e6f70";
};

void floor_pairs(benchmark::State& state, bool parallel) {
  RawNodes nodes(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    if (!nodes.pair(parallel)) {
      state.SkipWithError("floor: a node did not grant or release a free lock");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_floor_parallel(benchmark::State& state) { floor_pairs(state, true); }
BENCHMARK(BM_floor_parallel)->Arg(1)->Arg(5)->UseRealTime();

void BM_floor_serial(benchmark::State& state) { floor_pairs(state, false); }
BENCHMARK(BM_floor_serial)->Arg(5)->UseRealTime();

void BM_redlock_contended(benchmark::State& state) {
  std::vector<std::unique_ptr<dlock::RedlockBackend>> backends;
  for (std::int64_t i = 0; i < state.range(0); ++i)
    backends.push_back(std::make_unique<dlock::RedlockBackend>(redlock_options()));
  dlock::bench::contended(state, backends, {.ttl = 30s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}},
                          std::chrono::microseconds(state.range(1)));
}
BENCHMARK(BM_redlock_contended)
    ->Args({8, 0})
    ->Args({8, 1000})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
