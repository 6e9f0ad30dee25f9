// Multi-process lock traffic for the failover tests (issue 14): forked
// worker processes (the pattern of redis_fair_test), each with a
// RedisBackend of its own, lock names in turn while the test fails servers
// over. Shared memory (an anonymous MAP_SHARED mapping made before the fork)
// holds:
//   - a fenced resource per name: it accepts a token only above the last it
//     accepted (a compare-and-set on a lock-free atomic, which works across
//     processes); a token at or below one it saw is counted as stale;
//   - a counter per name, incremented inside the lock with a load, a
//     sched_yield and a store, so that two holders at once lose an update;
//   - each process's completed cycles and its first error.
// Children get PR_SET_PDEATHSIG and leave with _exit (never back into
// GoogleTest); stop() reaps them and reports any that crashed.
#pragma once

#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_ha.hpp"

namespace dlock::test {

class ProcessTraffic {
 public:
  static constexpr int max_processes = 8;
  static constexpr int max_names = 64;
  using MakeBackend = std::function<std::unique_ptr<RedisBackend>()>;

  /// Forks `processes` workers that lock `names` in turn (process p's i-th
  /// cycle takes names[(p * 7 + i * 13) % names.size()]) until stop();
  /// `make` builds each worker's backend in the child. ttl 2 s (a lock
  /// whose release met the failover frees soon), acquire_timeout 20 s.
  ProcessTraffic(int processes, std::vector<std::string> names, const MakeBackend& make) : names_(std::move(names)) {
    if (processes > max_processes || names_.empty() || names_.size() > static_cast<std::size_t>(max_names))
      throw std::invalid_argument("ProcessTraffic: too many processes or names");
    void* m = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("ProcessTraffic: mmap failed");
    shared_ = new (m) Shared();
    for (int p = 0; p < processes; ++p) {
      const pid_t pid = ::fork();
      if (pid < 0) throw std::runtime_error("ProcessTraffic: fork failed");
      if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        ::_exit(work(p, make));
      }
      pids_.push_back(pid);
    }
  }
  ProcessTraffic(const ProcessTraffic&) = delete;
  ProcessTraffic& operator=(const ProcessTraffic&) = delete;
  ~ProcessTraffic() {
    stop();
    shared_->~Shared();
    ::munmap(shared_, sizeof(Shared));
  }

  /// Cycles completed by every process.
  [[nodiscard]] long cycles() const {
    long n = 0;
    for (const auto& c : shared_->cycles) n += c.load();
    return n;
  }
  /// `by` more cycles completed within `within` (false also once a worker failed).
  bool progressed(long by, std::chrono::seconds within) {
    const long from = cycles();
    return eventually([&] { return cycles() >= from + by || !errors().empty(); }, within) && errors().empty();
  }
  /// The counter of names[i]: cycles completed on that name.
  [[nodiscard]] long counter(std::size_t i) const { return shared_->counter[i].load(); }

  /// Stops the workers and waits for each (up to 30 s, then SIGKILL); a
  /// worker that exited other than with 0 is reported by errors().
  void stop() {
    shared_->stop = true;
    for (std::size_t p = 0; p < pids_.size(); ++p) {
      if (pids_[p] <= 0) continue;
      int status = 0;
      const bool done =
          eventually([&] { return ::waitpid(pids_[p], &status, WNOHANG) == pids_[p]; }, std::chrono::seconds(30));
      if (!done) {
        ::kill(pids_[p], SIGKILL);
        ::waitpid(pids_[p], &status, 0);
        exits_.push_back("worker " + std::to_string(p) + " did not stop within 30 s");
      } else if (WIFSIGNALED(status)) {
        exits_.push_back("worker " + std::to_string(p) + " died of signal " + std::to_string(WTERMSIG(status)));
      } else if (WEXITSTATUS(status) != 0) {
        exits_.push_back("worker " + std::to_string(p) + " exited with " + std::to_string(WEXITSTATUS(status)));
      }
      pids_[p] = -1;
    }
  }

  /// The workers' first errors and abnormal exits; empty: none.
  [[nodiscard]] std::string errors() const {
    std::string out;
    for (const auto& e : shared_->error)
      if (e[0] != '\0') out += std::string(e) + "\n";
    for (const auto& e : exits_) out += e + "\n";
    return out;
  }
  /// Tokens the fenced resource received at or below one it had accepted.
  [[nodiscard]] int stale_tokens() const { return shared_->stale.load(); }
  /// The per-name counters' sum minus the cycles the processes counted:
  /// 0 unless two holders of one name overlapped (a lost update).
  [[nodiscard]] long lost_updates() const {
    long sum = 0;
    for (std::size_t i = 0; i < names_.size(); ++i) sum += shared_->counter[i].load();
    return cycles() - sum;
  }

 private:
  struct Shared {
    std::atomic<bool> stop{false};
    std::atomic<long> cycles[max_processes]{};
    std::atomic<std::uint64_t> last_token[max_names]{};  // the fenced resource
    std::atomic<int> stale{0};
    std::atomic<long> counter[max_names]{};
    char error[max_processes][512]{};
  };
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<long>::is_always_lock_free,
                "shared between processes: the atomics must be lock-free");

  // The fenced resource: accepts `token` only above the last accepted (CAS).
  void fenced_write(std::size_t n, std::uint64_t token) {
    std::uint64_t last = shared_->last_token[n].load();
    do {
      if (token <= last) {
        ++shared_->stale;
        return;
      }
    } while (!shared_->last_token[n].compare_exchange_weak(last, token));
  }

  int work(int p, const MakeBackend& make) noexcept {
    using namespace std::chrono_literals;
    try {
      const std::unique_ptr<RedisBackend> redis = make();
      const auto quiet = std::make_shared<Quiet>();
      for (std::size_t i = 0; !shared_->stop; ++i) {
        const std::size_t n = (static_cast<std::size_t>(p) * 7 + i * 13) % names_.size();
        Lock<RedisBackend> lock(*redis, names_[n],
                                {.ttl = 2s,
                                 .retry = {.initial_delay = 5ms, .max_delay = 100ms},
                                 .acquire_timeout = 20s,
                                 .observer = quiet});
        lock.lock();
        fenced_write(n, lock.fencing_token());
        const long c = shared_->counter[n].load(std::memory_order_relaxed);
        ::sched_yield();
        shared_->counter[n].store(c + 1, std::memory_order_relaxed);
        ++shared_->cycles[p];
        try {
          (void)lock.release();
        } catch (const ConnectionError&) {  // the failover broke the release: the lock expires by its TTL
        } catch (const TimeoutError&) {     // ... or the paused primary never answered it
        }
      }
      return 0;
    } catch (const std::exception& e) {
      std::snprintf(shared_->error[p], sizeof shared_->error[p], "worker %d: %s", p, e.what());
      return 1;
    }
  }

  std::vector<std::string> names_;
  Shared* shared_ = nullptr;
  std::vector<pid_t> pids_;
  std::vector<std::string> exits_;
};

}  // namespace dlock::test
