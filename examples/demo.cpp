// dlock demo: worker processes contend for one distributed lock and increment
// a counter kept in a plain file with a deliberately non-atomic
// read-then-write inside the lock. Each acquisition prints the worker, its
// wait and its fencing token; the summary shows acquisitions per worker, wait
// percentiles, how often the owner changed between two acquisitions, whether
// the counter is exact and whether the tokens (in the order the critical
// sections ran) only went up. On Redis and PostgreSQL the round runs twice:
// in the default (barging) mode, where a releasing worker tends to take the
// lock again before the woken ones reach the server, and in fair mode
// (LockOptions::fair), where the workers take turns.
//
//   dlock_demo --backend redis    --redis redis://127.0.0.1:6379   [options]
//   dlock_demo --backend postgres --pg "host=127.0.0.1 port=5432 dbname=dlock"
//   dlock_demo --backend redlock  --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,...
//   dlock_demo --backend memory                                    (threads in one process)
// options: --workers N (4) --cycles N (25) --hold-ms N (2) --quiet
//          --mode default|fair|both (both where the backend has fair mode, else default)
#include <dlock/dlock.hpp>
#ifdef DLOCK_DEMO_REDIS
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>
#endif
#ifdef DLOCK_DEMO_POSTGRES
#include <dlock/postgres.hpp>
#endif

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Settings {
  std::string backend = "memory";
  std::string redis = "redis://127.0.0.1:6379";
  std::string pg = "host=127.0.0.1 dbname=dlock";
  std::string nodes;  // redlock: host:port,host:port,...
  int workers = 4;
  int cycles = 25;
  int hold_ms = 2;
  bool quiet = false;
  std::string mode;   // default, fair or both ("": both where the backend has fair mode)
  bool fair = false;  // this round's (internal)
  int worker = -1;    // >= 0: run as this worker (internal)
  std::string dir;    // shared files (internal)
};

[[noreturn]] void usage() {
  fmt::print(stderr,
             "usage: dlock_demo [--backend memory|redis|postgres|redlock] [--redis URI] [--pg CONNINFO]\n"
             "                  [--nodes HOST:PORT,...]\n"
             "                  [--workers N] [--cycles N] [--hold-ms N] [--quiet] [--mode default|fair|both]\n");
  std::exit(2);
}

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "--backend")
      s.backend = value();
    else if (a == "--redis")
      s.redis = value();
    else if (a == "--pg")
      s.pg = value();
    else if (a == "--nodes")
      s.nodes = value();
    else if (a == "--workers")
      s.workers = std::max(1, std::atoi(value().c_str()));
    else if (a == "--cycles")
      s.cycles = std::max(1, std::atoi(value().c_str()));
    else if (a == "--hold-ms")
      s.hold_ms = std::max(0, std::atoi(value().c_str()));
    else if (a == "--quiet")
      s.quiet = true;
    else if (a == "--mode")
      s.mode = value();
    else if (a == "--fair")
      s.fair = true;
    else if (a == "--worker")
      s.worker = std::atoi(value().c_str());
    else if (a == "--dir")
      s.dir = value();
    else
      usage();
  }
  return s;
}

// The shared state, in files: the counter and the log of critical sections.
long read_counter(const std::string& path) {
  std::ifstream in(path);
  long v = 0;
  in >> v;
  return v;
}
void write_counter(const std::string& path, long v) { std::ofstream(path, std::ios::trunc) << v << '\n'; }
void append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) return;
  (void)!::write(fd, line.data(), line.size());
  ::close(fd);
}

// One worker's cycles on any backend.
template <class B>
void run_worker(B& backend, const Settings& s, int id) {
  dlock::Lock<B> lock(backend, "demo:counter",
                      {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 50ms}, .fair = s.fair});
  for (int c = 0; c < s.cycles; ++c) {
    const auto asked = Clock::now();
    auto guard = lock.acquire();
    const auto waited = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - asked);
    const std::uint64_t token = guard.fencing_token();
    const long seen = read_counter(s.dir + "/counter");
    std::this_thread::sleep_for(std::chrono::milliseconds(s.hold_ms));
    write_counter(s.dir + "/counter", seen + 1);
    append_line(s.dir + "/log", fmt::format("{} {} {}\n", id, token, waited.count()));
    if (!s.quiet)
      fmt::print("worker {} (pid {}) acquired token {:>6} after {:7.2f} ms\n", id, ::getpid(), token,
                 static_cast<double>(waited.count()) / 1000.0);
  }
}

int worker_main(const Settings& s) {
  try {
    if (s.backend == "memory") {
      fmt::print(stderr, "dlock_demo: the memory backend cannot span processes\n");
      return 2;
    }
#ifdef DLOCK_DEMO_REDIS
    if (s.backend == "redis") {
      dlock::RedisBackend redis(s.redis);
      run_worker(redis, s, s.worker);
      return 0;
    }
    if (s.backend == "redlock") {
      dlock::RedlockOptions options;
      std::istringstream list(s.nodes);
      for (std::string node; std::getline(list, node, ',');)
        options.nodes.push_back(
            dlock::parse_redis_uri(node.find("://") == std::string::npos ? "redis://" + node : node));
      dlock::RedlockBackend redlock(options);
      run_worker(redlock, s, s.worker);
      return 0;
    }
#endif
#ifdef DLOCK_DEMO_POSTGRES
    if (s.backend == "postgres") {
      dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = s.pg, .lock_namespace = "dlock-demo"});
      run_worker(pg, s, s.worker);
      return 0;
    }
#endif
    fmt::print(stderr, "dlock_demo: backend '{}' is not built in\n", s.backend);
    return 2;
  } catch (const dlock::Error& e) {
    fmt::print(stderr, "dlock_demo: worker {}: {}\n", s.worker, e.what());
    return 1;
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

// One round's outcome.
struct Round {
  bool ok = false;
  std::size_t acquisitions = 0;
  std::size_t owner_changes = 0;
  double p99_ms = 0;
  double per_second = 0;
};

double change_rate(const Round& r) {
  return r.acquisitions > 1 ? 100.0 * static_cast<double>(r.owner_changes) / static_cast<double>(r.acquisitions - 1)
                            : 0.0;
}

// One round: the workers' cycles (fair mode or not), then its summary.
Round run_round(Settings s, const char* self) {
  Round out;
  char tmpl[] = "/tmp/dlock-demo.XXXXXX";
  if (!::mkdtemp(tmpl)) return out;
  s.dir = tmpl;
  write_counter(s.dir + "/counter", 0);
  const std::string_view mode = s.fair ? "fair" : "default";
  fmt::print("\ndlock demo: {} workers x {} cycles on the {} backend, hold {} ms, {} mode\n", s.workers, s.cycles,
             s.backend, s.hold_ms, mode);

  const auto start = Clock::now();
  int failures = 0;
  if (s.backend == "memory") {  // threads sharing one in-process backend
    dlock::MemoryBackend memory;
    std::vector<std::thread> threads;
    for (int w = 0; w < s.workers; ++w) threads.emplace_back([&, w] { run_worker(memory, s, w); });
    for (auto& t : threads) t.join();
  } else {  // separate processes: this program again, as workers
    std::vector<pid_t> pids;
    for (int w = 0; w < s.workers; ++w) {
      std::vector<std::string> args = {self,
                                       "--worker",
                                       std::to_string(w),
                                       "--dir",
                                       s.dir,
                                       "--backend",
                                       s.backend,
                                       "--redis",
                                       s.redis,
                                       "--pg",
                                       s.pg,
                                       "--nodes",
                                       s.nodes,
                                       "--cycles",
                                       std::to_string(s.cycles),
                                       "--hold-ms",
                                       std::to_string(s.hold_ms)};
      if (s.quiet) args.emplace_back("--quiet");
      if (s.fair) args.emplace_back("--fair");
      std::vector<char*> cargs;
      for (auto& a : args) cargs.push_back(a.data());
      cargs.push_back(nullptr);
      pid_t pid = 0;
      if (::posix_spawn(&pid, self, nullptr, nullptr, cargs.data(), environ) != 0) {
        fmt::print(stderr, "dlock_demo: could not start worker {}\n", w);
        return out;
      }
      pids.push_back(pid);
    }
    for (pid_t pid : pids) {
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // The log holds one line per critical section, in the order they ran.
  std::ifstream log(s.dir + "/log");
  std::map<int, int> per_worker;
  std::vector<double> waits_ms;
  std::uint64_t last = 0;
  int previous = -1;
  bool increasing = true;
  for (std::string line; std::getline(log, line);) {
    std::istringstream in(line);
    int worker = 0;
    std::uint64_t token = 0;
    long wait_us = 0;
    in >> worker >> token >> wait_us;
    ++per_worker[worker];
    waits_ms.push_back(static_cast<double>(wait_us) / 1000.0);
    if (token <= last) increasing = false;
    last = token;
    if (previous >= 0 && worker != previous) ++out.owner_changes;
    previous = worker;
  }
  const long counter = read_counter(s.dir + "/counter");
  const long expected = static_cast<long>(s.workers) * s.cycles;
  std::vector<int> shares;
  for (int w = 0; w < s.workers; ++w) shares.push_back(per_worker[w]);
  out.acquisitions = waits_ms.size();
  out.p99_ms = percentile(waits_ms, 0.99);
  out.per_second = static_cast<double>(waits_ms.size()) / seconds;

  fmt::print("\nsummary ({} backend, {} {}, {} mode)\n", s.backend, s.workers,
             s.backend == "memory" ? "threads" : "processes", mode);
  fmt::print("  acquisitions   {} in {:.2f} s ({:.0f}/s)\n", waits_ms.size(), seconds, out.per_second);
  fmt::print("  per worker     {}\n", fmt::join(shares, " "));
  fmt::print("  owner changes  {} of {} ({:.0f}%)\n", out.owner_changes, std::max<std::size_t>(1, out.acquisitions) - 1,
             change_rate(out));
  fmt::print("  wait p50/p99   {:.2f} ms / {:.2f} ms\n", percentile(waits_ms, 0.50), out.p99_ms);
  fmt::print("  counter        {} (expected {}): {}\n", counter, expected, counter == expected ? "exact" : "WRONG");
  fmt::print("  fencing tokens {}\n",
             increasing ? "strictly increasing in the order the critical sections ran" : "NOT increasing");
  if (failures) fmt::print("  workers failed {}\n", failures);
  std::remove((s.dir + "/counter").c_str());
  std::remove((s.dir + "/log").c_str());
  ::rmdir(s.dir.c_str());
  out.ok = counter == expected && increasing && failures == 0;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s = parse(argc, argv);
  if (s.worker >= 0) return worker_main(s);

#ifdef DLOCK_DEMO_POSTGRES
  if (s.backend == "postgres") {  // the fencing sequence, created once, explicitly
    try {
      dlock::PostgresBackend(dlock::PostgresOptions{.conninfo = s.pg}).install_schema();
    } catch (const dlock::Error& e) {
      fmt::print(stderr, "dlock_demo: {}\n", e.what());
      return 1;
    }
  }
#endif
  const bool has_fair = s.backend == "redis" || s.backend == "postgres";
  if (s.mode.empty()) s.mode = has_fair ? "both" : "default";
  if (s.mode != "default" && s.mode != "fair" && s.mode != "both") usage();
  if (s.mode != "default" && !has_fair) {
    fmt::print(stderr, "dlock_demo: the {} backend has no fair mode (Redis and PostgreSQL do)\n", s.backend);
    return 2;
  }
  std::vector<std::pair<std::string_view, Round>> rounds;
  if (s.mode != "fair") {
    s.fair = false;
    rounds.emplace_back("default", run_round(s, argv[0]));
  }
  if (s.mode != "default") {
    s.fair = true;
    rounds.emplace_back("fair", run_round(s, argv[0]));
  }
  bool ok = true;
  if (rounds.size() > 1) fmt::print("\nowner-change rate by mode (the share of acquisitions that changed owner)\n");
  for (const auto& [mode, r] : rounds) {
    ok = ok && r.ok;
    if (rounds.size() > 1)
      fmt::print("  {:<8} {:3.0f}%   wait p99 {:.2f} ms   {:.0f} acquisitions/s\n", mode, change_rate(r), r.p99_ms,
                 r.per_second);
  }
  return ok ? 0 : 1;
}
