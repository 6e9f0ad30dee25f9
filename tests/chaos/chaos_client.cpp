// chaos_client: one client process of the fault-injection run (scripts/chaos).
//
//   chaos_client --backend redis|redlock|postgres --endpoints E[,E...] --store PORT
//                --id ID --ops N --history FILE [--name NAME] [--ttl MS] [--hold MS]
//                [--until FILE] [--pause FILE]
//
// Loops until N fenced writes were attempted (and, with --until, FILE exists): acquire (Lock<B>, auto_extend,
// ttl) -> token -> shadow enter -> hold -> fenced write with the token to the
// fenced store (chaos_store.py on 127.0.0.1:PORT) -> shadow exit -> release.
// Every step goes to FILE as one JSON object per line, with CLOCK_MONOTONIC
// (the same clock in every process on the machine) and wall-clock times, so
// that chaos_check.py can find overlapping critical sections (the unfenced
// shadow) and tell whether every lost lock was signalled to this client:
// stop_token, on_lost, release() == not_held, or an error.
// Endpoints: host:port for Redis/Redlock (one per node), a libpq conninfo for
// PostgreSQL. Uses only dlock's public API.
// --pause FILE: a GC pause on demand. The first client to find FILE inside its
// critical section (after taking its token, before writing) claims it (renames
// it to FILE.ID) and stops its whole process with SIGSTOP, heartbeat included;
// the driver sends SIGCONT after longer than the TTL.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "dlock/dlock.hpp"
#include "dlock/postgres.hpp"
#include "dlock/redis.hpp"
#include "dlock/redlock.hpp"

namespace {

using namespace std::chrono_literals;

struct Args {
  std::string backend, endpoints, id, history, until, pause, name = "chaos";
  int store_port = 0;
  long ops = 100;
  long ttl_ms = 500;
  long hold_ms = 2;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--backend")
      a.backend = v;
    else if (k == "--endpoints")
      a.endpoints = v;
    else if (k == "--store")
      a.store_port = std::stoi(v);
    else if (k == "--id")
      a.id = v;
    else if (k == "--ops")
      a.ops = std::stol(v);
    else if (k == "--history")
      a.history = v;
    else if (k == "--name")
      a.name = v;
    else if (k == "--until")
      a.until = v;
    else if (k == "--pause")
      a.pause = v;
    else if (k == "--ttl")
      a.ttl_ms = std::stol(v);
    else if (k == "--hold")
      a.hold_ms = std::stol(v);
    else
      throw std::invalid_argument("unknown option " + k);
  }
  if (a.backend.empty() || a.endpoints.empty() || a.store_port == 0 || a.id.empty() || a.history.empty())
    throw std::invalid_argument(
        "usage: chaos_client --backend B --endpoints E --store PORT --id ID --ops N --history FILE");
  return a;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const auto pos = s.find(sep, start);
    out.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) return out;
    start = pos + 1;
  }
}

dlock::RedisOptions redis_node(const std::string& hostport) {
  const auto colon = hostport.rfind(':');
  dlock::RedisOptions o;
  o.host = hostport.substr(0, colon);
  o.port = std::stoi(hostport.substr(colon + 1));
  o.connect_timeout = 200ms;
  o.command_timeout = 200ms;
  return o;
}

double mono() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
double wall() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// The history file: one JSON object per line, flushed at once (a SIGKILL
// loses nothing written).
class History {
 public:
  History(const std::string& path, std::string id) : f_(std::fopen(path.c_str(), "a")), id_(std::move(id)) {
    if (!f_) throw std::runtime_error("cannot open history " + path);
  }
  ~History() { std::fclose(f_); }
  void write(const std::string& ev, const std::string& fields = {}) {
    fmt::print(f_, "{{\"client\":\"{}\",\"ev\":\"{}\",\"mono\":{:.6f},\"wall\":{:.6f}{}{}}}\n", id_, ev, mono(), wall(),
               fields.empty() ? "" : ",", fields);
    std::fflush(f_);
  }

 private:
  std::FILE* f_;
  std::string id_;
};

std::string error_kind(const std::exception& e) {
  if (dynamic_cast<const dlock::TimeoutError*>(&e)) return "TimeoutError";
  if (dynamic_cast<const dlock::ConnectionError*>(&e)) return "ConnectionError";
  if (dynamic_cast<const dlock::LockLostError*>(&e)) return "LockLostError";
  if (dynamic_cast<const dlock::ServerError*>(&e)) return "ServerError";
  if (dynamic_cast<const dlock::Error*>(&e)) return "Error";
  return "other";
}

std::string quoted(std::string s) {
  for (auto& c : s)
    if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) c = '\'';
  return "\"" + s + "\"";
}

// A connection to the fenced store: "W <client> <resource> <token>\n" ->
// "OK\n" or "REJECT <last>\n". Reconnects once on failure.
class Store {
 public:
  explicit Store(int port) : port_(port) {}
  ~Store() {
    if (fd_ >= 0) ::close(fd_);
  }
  // "OK", "REJECT" or "ERROR".
  std::string write(const std::string& client, const std::string& resource, std::uint64_t token) {
    const auto line = fmt::format("W {} {} {}\n", client, resource, token);
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (fd_ < 0 && !connect()) continue;
      if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size())) {
        std::string reply;
        char c;
        while (::recv(fd_, &c, 1, 0) == 1 && c != '\n') reply += c;
        if (!reply.empty()) return reply.substr(0, reply.find(' '));
      }
      ::close(fd_);
      fd_ = -1;
    }
    return "ERROR";
  }

 private:
  bool connect() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  int port_;
  int fd_ = -1;
};

template <class B>
int run(B& backend, const Args& a) {
  History h(a.history, a.id);
  Store store(a.store_port);
  // Quiet observer: the history records what matters; the default one would log every fault.
  struct Quiet : dlock::Observer {
    void on_event(const dlock::Event&) noexcept override {}
  };
  dlock::LockOptions opts{.ttl = std::chrono::milliseconds(a.ttl_ms),
                          .retry = {.initial_delay = 1ms, .max_delay = 20ms},
                          .acquire_timeout = std::chrono::milliseconds(std::max(a.ttl_ms * 6, 3000L)),
                          .outage_timeout = std::chrono::milliseconds(std::max(a.ttl_ms * 4, 2000L)),
                          .auto_extend = true,
                          .observer = std::make_shared<Quiet>()};
  dlock::Lock<B> lock(backend, a.name, opts);
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<long> jitter(0, a.hold_ms);
  h.write("start", fmt::format("\"backend\":\"{}\",\"ttl_ms\":{}", a.backend, a.ttl_ms));
  long writes = 0, seq = 0;
  const auto more = [&] { return writes < a.ops || (!a.until.empty() && ::access(a.until.c_str(), F_OK) != 0); };
  while (more()) {
    ++seq;
    h.write("acquire", fmt::format("\"seq\":{}", seq));
    try {
      lock.lock();
    } catch (const std::exception& e) {
      h.write("acquire_failed",
              fmt::format("\"seq\":{},\"kind\":\"{}\",\"msg\":{}", seq, error_kind(e), quoted(e.what())));
      std::this_thread::sleep_for(5ms);  // back off: the run goes on through the outage
      continue;
    }
    auto lost = std::make_shared<std::atomic<bool>>(false);
    std::uint64_t token = 0;
    std::string signals;
    try {
      token = lock.fencing_token();
      lock.on_lost([lost](const dlock::LostEvent&) { lost->store(true); });
    } catch (const std::exception& e) {  // lost between acquire and token: a signalled loss, no write
      h.write("token_failed", fmt::format("\"seq\":{},\"kind\":\"{}\"", seq, error_kind(e)));
      lock.unlock();
      continue;
    }
    std::stop_token stop;
    try {
      stop = lock.stop_token();
    } catch (const std::exception&) {
      lost->store(true);
    }
    h.write("enter", fmt::format("\"seq\":{},\"token\":{}", seq, token));
    if (!a.pause.empty() && std::rename(a.pause.c_str(), (a.pause + "." + a.id).c_str()) == 0) {
      h.write("gc_pause", fmt::format("\"seq\":{}", seq));
      std::raise(SIGSTOP);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(a.hold_ms / 2 + jitter(rng) / 2));
    const std::string result = store.write(a.id, a.name, token);
    ++writes;
    h.write("write", fmt::format("\"seq\":{},\"token\":{},\"result\":\"{}\"", seq, token, result));
    h.write("exit", fmt::format("\"seq\":{},\"token\":{}", seq, token));
    // Signals are read after the write: a paused holder learns of its loss when
    // it resumes, possibly after a write the store rejected.
    if (stop.stop_requested()) signals += "stop_token,";
    if (lost->load()) signals += "on_lost,";
    std::string release;
    try {
      release = lock.release() == dlock::ReleaseResult::released ? "released" : "not_held";
    } catch (const std::exception& e) {
      release = "error:" + error_kind(e);
    }
    if (lost->load() && signals.find("on_lost") == std::string::npos) signals += "on_lost_late,";
    h.write("release",
            fmt::format("\"seq\":{},\"token\":{},\"result\":\"{}\",\"signals\":\"{}\"", seq, token, release, signals));
  }
  h.write("done", fmt::format("\"writes\":{}", writes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  if (a.backend == "redis") {
    dlock::RedisBackend b(redis_node(a.endpoints));
    return run(b, a);
  }
  if (a.backend == "redlock") {
    dlock::RedlockOptions o;
    for (const auto& e : split(a.endpoints, ',')) o.nodes.push_back(redis_node(e));
    o.node_timeout = 50ms;
    dlock::RedlockBackend b(std::move(o));
    return run(b, a);
  }
  if (a.backend == "postgres") {
    dlock::PostgresBackend b(
        dlock::PostgresOptions{.conninfo = a.endpoints, .connect_timeout = 1s, .statement_timeout = 1s});
    for (int i = 0;; ++i) {
      try {
        b.install_schema();
        break;
      } catch (const dlock::Error&) {
        if (i == 50) throw;
        std::this_thread::sleep_for(100ms);  // the server may be restarting
      }
    }
    return run(b, a);
  }
  throw std::invalid_argument("unknown backend " + a.backend);
} catch (const std::exception& e) {
  std::fprintf(stderr, "chaos_client: %s\n", e.what());
  return 1;
}
