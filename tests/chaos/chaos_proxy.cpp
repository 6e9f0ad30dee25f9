// chaos_proxy: a TCP proxy on loopback that injects network faults on command,
// for the fault-injection run (scripts/chaos); this kernel has no netem.
//
//   chaos_proxy LISTEN_PORT TARGET_PORT CONTROL_PORT
//
// Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT. Commands, one per
// line on 127.0.0.1:CONTROL_PORT (each answered "ok"):
//   reset           close every open connection with a TCP RST (SO_LINGER 0)
//   blackhole       accept and read, but forward nothing (new connections too)
//                   until `pass`: a partition; held bytes flow after it, late,
//                   as TCP retransmission would deliver them
//   delay up MS     delay bytes towards the server by MS ms (down: towards the client)
//   pass            no faults: forward everything at once
// Prints "ready" on stdout once listening; runs until killed. One thread.
// (bench/latency_proxy.cpp is the fixed-delay, both-directions variant for benchmarks.)
#include <cstdio>
#include <exception>
#include <list>
#include <memory>
#include <sstream>
#include <string>

#include "proxy_pump.hpp"

namespace {

using namespace dlock::test_proxy;

class Proxy {
 public:
  Proxy(asio::io_context& io, unsigned short listen, unsigned short target, unsigned short control)
      : acceptor_(io, loopback(listen), true), control_(io, loopback(control), true), target_(target) {}

  void start() {
    accept();
    accept_control();
  }

 private:
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket client) {
      if (!ec) {
        auto pumps = splice(std::move(client), target_, faults_);
        connections_.remove_if([](const auto& c) { return c[0].expired() && c[1].expired(); });
        if (pumps[0]) connections_.push_back({pumps[0], pumps[1]});
      }
      accept();
    });
  }

  void accept_control() {
    control_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (!ec) serve(std::make_shared<tcp::socket>(std::move(s)), std::make_shared<asio::streambuf>());
      accept_control();
    });
  }

  void serve(std::shared_ptr<tcp::socket> s, std::shared_ptr<asio::streambuf> buf) {
    asio::async_read_until(*s, *buf, '\n', [this, s, buf](boost::system::error_code ec, std::size_t) {
      if (ec) return;
      std::istream in(buf.get());
      std::string line;
      std::getline(in, line);
      command(line);
      auto reply = std::make_shared<std::string>("ok\n");
      asio::async_write(*s, asio::buffer(*reply), [this, s, buf, reply](boost::system::error_code wec, std::size_t) {
        if (!wec) serve(s, buf);
      });
    });
  }

  void command(const std::string& line) {
    std::istringstream words(line);
    std::string verb, dir;
    long ms = 0;
    words >> verb;
    if (verb == "reset") {
      for (auto& c : connections_)
        if (auto p = c[0].lock()) p->reset();
      connections_.clear();
    } else if (verb == "blackhole") {
      faults_.blackhole = true;
    } else if (verb == "pass") {
      faults_ = Faults{};
    } else if (verb == "delay" && (words >> dir >> ms)) {
      faults_.delay[dir == "down" ? 1 : 0] = std::chrono::milliseconds(ms);
    } else {
      std::fprintf(stderr, "chaos_proxy: unknown command '%s'\n", line.c_str());
    }
    for (auto& c : connections_)
      for (auto& w : c)
        if (auto p = w.lock()) p->kick();
  }

  tcp::acceptor acceptor_, control_;
  unsigned short target_;
  Faults faults_;
  std::list<std::array<std::weak_ptr<Pump>, 2>> connections_;  // [0] up, [1] down
};

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::fprintf(stderr, "usage: chaos_proxy LISTEN_PORT TARGET_PORT CONTROL_PORT\n");
    return 2;
  }
  auto port = [](const char* s) { return static_cast<unsigned short>(std::stoi(s)); };
  asio::io_context io;
  Proxy proxy(io, port(argv[1]), port(argv[2]), port(argv[3]));
  proxy.start();
  std::printf("ready\n");
  std::fflush(stdout);
  io.run();
} catch (const std::exception& e) {
  std::fprintf(stderr, "chaos_proxy: %s\n", e.what());
  return 1;
}
