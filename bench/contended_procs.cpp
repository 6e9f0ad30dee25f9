// contended_procs: N processes contending for one lock on one backend, the
// way separate services would (bench/parts/contended.sh runs it on Redis,
// PostgreSQL and etcd in the same run and prints one table).
//
//   contended_procs redis|postgres|etcd TARGET [PROCESSES=8] [SECONDS=3]
//
// TARGET: a redis:// URI, a libpq conninfo, or comma-separated etcd client
// URLs. Each child process opens its own backend after fork(), waits for the
// start, then loops lock() (try_lock_for 1 s) + unlock() with zero hold for
// SECONDS, timing each wait. Prints one line:
//   handoffs/s p50_wait_ms p99_wait_ms fewest_acquisitions most_acquisitions
#include <dlock/dlock.hpp>
#include <dlock/etcd.hpp>
#include <dlock/postgres.hpp>
#include <dlock/redis.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace std::chrono_literals;

template <class B>
std::vector<double> contend(B& backend, std::chrono::seconds duration) {
  std::vector<double> waits;
  dlock::Lock<B> lock(backend, "contended-procs", {.ttl = 30s});
  const auto end = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < end) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!lock.try_lock_for(1s)) continue;
    waits.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    lock.unlock();
  }
  return waits;
}

std::vector<double> child(std::string_view kind, const std::string& target, std::chrono::seconds duration) {
  if (kind == "redis") {
    dlock::RedisBackend b(
        dlock::parse_redis_uri(target, dlock::RedisOptions{.key_prefix = "dlock-bench:", .pool_size = 1}));
    return contend(b, duration);
  }
  if (kind == "postgres") {
    dlock::PostgresBackend b(dlock::PostgresOptions{.conninfo = target, .lock_namespace = "bench", .pool_size = 2});
    return contend(b, duration);
  }
  dlock::EtcdOptions o{.endpoints = {}, .key_prefix = "dlock-bench/"};
  for (std::size_t from = 0; from <= target.size();) {
    const auto comma = std::min(target.find(',', from), target.size());
    o.endpoints.push_back(target.substr(from, comma - from));
    from = comma + 1;
  }
  dlock::EtcdBackend b(o);
  return contend(b, duration);
}

bool write_all(int fd, const void* p, std::size_t n) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w <= 0) return false;
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: contended_procs redis|postgres|etcd TARGET [PROCESSES=8] [SECONDS=3]\n");
    return 2;
  }
  const std::string_view kind = argv[1];
  const std::string target = argv[2];
  const int n = argc > 3 ? std::max(1, std::atoi(argv[3])) : 8;
  const auto duration = std::chrono::seconds(argc > 4 ? std::max(1, std::atoi(argv[4])) : 3);
  int start[2];
  if (::pipe(start) != 0) return 1;
  std::vector<int> results;
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    int out[2];
    if (::pipe(out) != 0) return 1;
    const pid_t pid = ::fork();
    if (pid < 0) return 1;
    if (pid == 0) {
      ::close(start[1]);
      ::close(out[0]);
      char c;
      (void)::read(start[0], &c, 1);  // EOF: every contender exists, go
      int rc = 0;
      try {
        const auto waits = child(kind, target, duration);
        const std::uint64_t count = waits.size();
        if (!write_all(out[1], &count, sizeof count) || !write_all(out[1], waits.data(), count * sizeof(double)))
          rc = 1;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "contended_procs: %s\n", e.what());
        rc = 1;
      }
      ::_exit(rc);
    }
    ::close(out[1]);
    results.push_back(out[0]);
    pids.push_back(pid);
  }
  ::close(start[0]);
  ::close(start[1]);  // the start signal
  std::vector<double> all;
  std::size_t least = SIZE_MAX, most = 0;
  bool ok = true;
  for (const int fd : results) {
    std::uint64_t count = 0;
    std::vector<double> w;
    if (read_all(fd, &count, sizeof count)) {
      w.resize(count);
      ok = read_all(fd, w.data(), count * sizeof(double)) && ok;
    } else {
      ok = false;
    }
    ::close(fd);
    least = std::min(least, w.size());
    most = std::max(most, w.size());
    all.insert(all.end(), w.begin(), w.end());
  }
  for (const pid_t p : pids) {
    int status = 0;
    (void)::waitpid(p, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  const double secs = std::chrono::duration<double>(duration).count();
  const double handoffs = static_cast<double>(all.size()) / secs;
  const double p50 = dlock::bench::percentile(all, 0.50);
  const double p99 = dlock::bench::percentile(all, 0.99);
  std::printf("%.1f %.3f %.3f %zu %zu\n", handoffs, p50, p99, least, most);
  return ok ? 0 : 1;
}
