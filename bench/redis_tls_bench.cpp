// TLS against plain TCP on one redis-server, for bench/parts/redis_tls.sh.
//
//   redis_tls_bench [ROUNDS] [SECONDS]      (defaults 5 and 1)
//
// Starts one throw-away redis-server with the integration tests' harness
// (tests/integration/support/redis_server.hpp: a throw-away CA and server
// certificate made with the openssl CLI) serving TLS on one port and plain
// TCP on another, so both paths reach the same server process. Then, for
// ROUNDS rounds:
//   tcp, tls:   try_lock + unlock pairs per second on one thread, SECONDS
//               each (in 20 alternating slices, so that both paths see the
//               same load), on a backend (pool_size 1) whose connection is
//               already open: the TLS handshake is excluded.
//   connect:    20 fresh backends each way, the median time of their first
//               PING, which opens the connection: TCP connect + the Redis
//               handshake (AUTH/SELECT/SCRIPT LOAD, the eviction check), and
//               for TLS also the TLS handshake (certificate verified).
// Prints one line per round: tcp pairs/s, tls pairs/s, tcp connect µs, tls
// connect µs.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "support/ports.hpp"
#include "support/redis_server.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// try_lock + unlock pairs for `seconds`: {pairs, seconds taken}.
std::pair<double, double> pairs_for(dlock::Lock<dlock::RedisBackend>& lock, std::chrono::duration<double> seconds) {
  std::uint64_t n = 0;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration_cast<Clock::duration>(seconds);
  while (Clock::now() < until) {
    if (!lock.try_lock()) throw std::runtime_error("try_lock failed on a free lock");
    lock.unlock();
    ++n;
  }
  return {static_cast<double>(n), std::chrono::duration<double>(Clock::now() - t0).count()};
}

double median_connect_us(const dlock::RedisOptions& o) {
  std::vector<double> us;
  for (int i = 0; i < 20; ++i) {
    dlock::RedisBackend redis(o);
    const auto t0 = Clock::now();
    if (redis.node().command({"PING"}).str != "PONG") throw std::runtime_error("PING failed");
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::nth_element(us.begin(), us.begin() + static_cast<std::ptrdiff_t>(us.size() / 2), us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  const std::chrono::duration<double> seconds(argc > 2 ? std::max(0.1, std::atof(argv[2])) : 1.0);

  const int plain_port = dlock::test::free_loopback_port();
  const dlock::test::RedisServer server({"--port", std::to_string(plain_port)}, dlock::test::TlsMode::on);
  dlock::RedisOptions tls = server.options();
  tls.key_prefix = "dlock-bench:";
  tls.pool_size = 1;
  dlock::RedisOptions tcp = tls;
  tcp.tls.reset();
  tcp.port = plain_port;

  dlock::RedisBackend tcp_redis(tcp), tls_redis(tls);
  dlock::Lock<dlock::RedisBackend> tcp_lock(tcp_redis, "tls-bench-tcp", {.ttl = 30s});
  dlock::Lock<dlock::RedisBackend> tls_lock(tls_redis, "tls-bench-tls", {.ttl = 30s});
  (void)pairs_for(tcp_lock, 100ms);  // connect, warm up
  (void)pairs_for(tls_lock, 100ms);
  // The machine may be shared and noisy: each round alternates 20 slices of
  // each path, so both see the same load.
  constexpr int slices = 20;
  for (int r = 0; r < rounds; ++r) {
    double tcp_n = 0, tcp_s = 0, tls_n = 0, tls_s = 0;
    for (int i = 0; i < slices; ++i) {
      const auto [a, as] = pairs_for(i % 2 == 0 ? tcp_lock : tls_lock, seconds / slices);
      const auto [b, bs] = pairs_for(i % 2 == 0 ? tls_lock : tcp_lock, seconds / slices);
      (i % 2 == 0 ? tcp_n : tls_n) += a;
      (i % 2 == 0 ? tcp_s : tls_s) += as;
      (i % 2 == 0 ? tls_n : tcp_n) += b;
      (i % 2 == 0 ? tls_s : tcp_s) += bs;
    }
    const double tcp_pairs = tcp_n / tcp_s, tls_pairs = tls_n / tls_s;
    const double tcp_us = median_connect_us(tcp), tls_us = median_connect_us(tls);
    std::printf("%.0f %.0f %.0f %.0f\n", tcp_pairs, tls_pairs, tcp_us, tls_us);
    std::fflush(stdout);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "redis_tls_bench: %s\n", e.what());
  return 1;
}
