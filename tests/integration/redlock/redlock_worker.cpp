// A worker process for the Redlock cross-process tests (redlock_process_test):
//   redlock_worker MODE PORTS KEY_PREFIX LOCK_NAME CYCLES DIR
// PORTS is a comma-separated list of redis-server ports on 127.0.0.1.
// MODE file: each cycle takes the lock, reads DIR/counter, waits a little,
//   writes the value + 1 back (a non-atomic read-then-write kept outside
//   Redis), and appends its fencing token to DIR/tokens, all inside the
//   critical section.
// MODE handoff: each cycle takes the lock and releases it at once.
// Exit status 0 on success; a message on stderr if not.
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

long long read_counter(const std::string& path) {
  std::ifstream in(path);
  long long n = 0;
  if (in) in >> n;
  return n;
}

void write_counter(const std::string& path, long long n) {
  std::ofstream out(path, std::ios::trunc);
  out << n << '\n';
  if (!out) throw std::runtime_error("cannot write " + path);
}

void append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  const std::string text = line + "\n";
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!ok) throw std::runtime_error("cannot append to " + path);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 7) {
    std::fprintf(stderr, "usage: redlock_worker file|handoff PORTS KEY_PREFIX LOCK_NAME CYCLES DIR\n");
    return 2;
  }
  try {
    const std::string mode = argv[1];
    dlock::RedlockOptions o{.key_prefix = argv[3]};
    std::stringstream ports(argv[2]);
    for (std::string p; std::getline(ports, p, ',');) o.nodes.push_back({.host = "127.0.0.1", .port = std::stoi(p)});
    dlock::RedlockBackend rl(o);
    dlock::Lock<dlock::RedlockBackend> lock(rl, argv[4],
                                            {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
    const int cycles = std::atoi(argv[5]);
    const std::string dir = argv[6];
    for (int i = 0; i < cycles; ++i) {
      std::scoped_lock hold(lock);
      if (mode == "file") {
        const long long n = read_counter(dir + "/counter");
        std::this_thread::sleep_for(100us);  // widen the window a broken lock would let others into
        write_counter(dir + "/counter", n + 1);
        append_line(dir + "/tokens", std::to_string(lock.fencing_token()));
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redlock_worker: %s\n", e.what());
    return 1;
  }
}
