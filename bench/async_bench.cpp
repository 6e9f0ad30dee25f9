// The asynchronous API against the blocking one on Redis (issue 13), in one
// process and one run; bench/parts/async.sh runs it and prints the ratios.
//
//   async_bench URI throughput-async COROUTINES SECONDS   one io_context thread, each coroutine
//                                                       on its own lock name: acquire+release pairs/s
//   async_bench URI throughput-blocking THREADS SECONDS  the blocking API, one thread per lock name
//   async_bench URI latency-async PAIRS                  one coroutine: median pair latency in µs
//   async_bench URI latency-blocking PAIRS               one thread: median pair latency in µs
//
// Prints one number. Both forms use the same RedisOptions (pool_size 32).
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using dlock::Lock;
using dlock::RedisBackend;

namespace {

const dlock::LockOptions options{.ttl = std::chrono::seconds(10)};

std::string name(int i) { return "bench-async:" + std::to_string(i); }

double throughput_async(RedisBackend& redis, int coroutines, double seconds) {
  asio::io_context io;
  std::vector<std::unique_ptr<Lock<RedisBackend>>> locks;
  for (int i = 0; i < coroutines; ++i) locks.push_back(std::make_unique<Lock<RedisBackend>>(redis, name(i), options));
  long pairs = 0;
  bool stop = false;
  int running = coroutines;
  for (int i = 0; i < coroutines; ++i)
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          while (!stop) {
            auto g = co_await locks[i]->async_acquire(asio::use_awaitable);
            co_await g.async_release(asio::use_awaitable);
            ++pairs;
          }
          --running;
        },
        asio::detached);
  io.run_for(std::chrono::milliseconds(300));  // warm-up: links opened
  const long before = pairs;
  const auto start = Clock::now();
  io.run_for(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  const long done = pairs - before;
  stop = true;
  while (running > 0) io.run_one();
  return static_cast<double>(done) / took;
}

double throughput_blocking(RedisBackend& redis, int threads, double seconds) {
  std::atomic<bool> measuring{false}, stop{false};
  std::atomic<long> pairs{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      Lock<RedisBackend> lock(redis, name(t), options);
      while (!stop.load(std::memory_order_relaxed)) {
        lock.lock();
        lock.unlock();
        if (measuring.load(std::memory_order_relaxed)) pairs.fetch_add(1, std::memory_order_relaxed);
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // warm-up
  measuring = true;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const long done = pairs.load();
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  for (auto& w : workers) w.join();
  return static_cast<double>(done) / took;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double latency_async(RedisBackend& redis, int n) {
  asio::io_context io;
  Lock<RedisBackend> lock(redis, name(0), options);
  std::vector<double> us;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (int i = 0; i < n + 100; ++i) {
          const auto start = Clock::now();
          auto g = co_await lock.async_acquire(asio::use_awaitable);
          co_await g.async_release(asio::use_awaitable);
          if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
        }
      },
      asio::detached);
  io.run();
  return median(us);
}

double latency_blocking(RedisBackend& redis, int n) {
  Lock<RedisBackend> lock(redis, name(0), options);
  std::vector<double> us;
  for (int i = 0; i < n + 100; ++i) {
    const auto start = Clock::now();
    lock.lock();
    lock.unlock();
    if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  return median(us);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s URI MODE ARGS... (see the top of async_bench.cpp)\n", argv[0]);
    return 2;
  }
  dlock::RedisOptions base;
  base.pool_size = 32;
  RedisBackend redis(argv[1], base);
  const std::string mode = argv[2];
  const int n = std::atoi(argv[3]);
  const double seconds = argc > 4 ? std::atof(argv[4]) : 2.0;
  double out = 0;
  if (mode == "throughput-async") {
    out = throughput_async(redis, n, seconds);
  } else if (mode == "throughput-blocking") {
    out = throughput_blocking(redis, n, seconds);
  } else if (mode == "latency-async") {
    out = latency_async(redis, n);
  } else if (mode == "latency-blocking") {
    out = latency_blocking(redis, n);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::printf("%.1f\n", out);
  return 0;
}
