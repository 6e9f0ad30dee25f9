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
#include <boost/asio.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <deque>
#include <exception>
#include <list>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Faults {
  bool blackhole = false;
  Clock::duration delay[2]{};  // [0]: client -> server ("up"), [1]: server -> client ("down")
};

// One direction of a connection: reads from `from`, writes to `to` when due and not black-holed.
class Pump : public std::enable_shared_from_this<Pump> {
 public:
  Pump(std::shared_ptr<tcp::socket> from, std::shared_ptr<tcp::socket> to, const Faults& faults, int dir)
      : from_(std::move(from)), to_(std::move(to)), faults_(faults), dir_(dir), timer_(from_->get_executor()) {}

  void start() { read(); }
  // Called after the faults changed: held bytes may now be due.
  void kick() {
    if (!busy_ && !queue_.empty()) schedule();
  }

 private:
  struct Chunk {
    Clock::time_point due;
    std::vector<char> bytes;
  };

  void read() {
    from_->async_read_some(
        asio::buffer(buffer_), [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
          if (ec) return self->close();
          self->queue_.push_back(
              Chunk{Clock::now() + self->faults_.delay[self->dir_], {self->buffer_.data(), self->buffer_.data() + n}});
          self->kick();
          self->read();
        });
  }

  void schedule() {
    if (faults_.blackhole) return;  // held until `pass` kicks
    busy_ = true;
    timer_.expires_at(queue_.front().due);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec) return self->close();
      if (self->faults_.blackhole) {
        self->busy_ = false;
        return;
      }
      self->out_.clear();
      const auto now = Clock::now();
      while (!self->queue_.empty() && self->queue_.front().due <= now) {
        auto& b = self->queue_.front().bytes;
        self->out_.insert(self->out_.end(), b.begin(), b.end());
        self->queue_.pop_front();
      }
      asio::async_write(*self->to_, asio::buffer(self->out_), [self](boost::system::error_code wec, std::size_t) {
        self->busy_ = false;
        if (wec) return self->close();
        self->kick();
      });
    });
  }

  void close() {
    boost::system::error_code ignored;
    from_->close(ignored);
    to_->close(ignored);
    timer_.cancel();
  }

  std::shared_ptr<tcp::socket> from_, to_;
  const Faults& faults_;
  int dir_;
  asio::steady_timer timer_;
  std::array<char, 65536> buffer_{};
  std::deque<Chunk> queue_;
  std::vector<char> out_;
  bool busy_ = false;
};

struct Connection {
  std::shared_ptr<tcp::socket> down, up;
  std::weak_ptr<Pump> pumps[2];
};

class Proxy {
 public:
  Proxy(asio::io_context& io, unsigned short listen, unsigned short target, unsigned short control)
      : acceptor_(io, endpoint(listen), true), control_(io, endpoint(control), true), target_(target) {}

  void start() {
    accept();
    accept_control();
  }

 private:
  static tcp::endpoint endpoint(unsigned short port) { return {asio::ip::make_address_v4("127.0.0.1"), port}; }

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket client) {
      if (!ec) {
        auto down = std::make_shared<tcp::socket>(std::move(client));
        auto up = std::make_shared<tcp::socket>(acceptor_.get_executor());
        boost::system::error_code cec;
        up->connect(endpoint(target_), cec);
        if (cec) {
          reset(*down);
        } else {
          up->set_option(tcp::no_delay(true));
          down->set_option(tcp::no_delay(true));
          auto p0 = std::make_shared<Pump>(down, up, faults_, 0);
          auto p1 = std::make_shared<Pump>(up, down, faults_, 1);
          p0->start();
          p1->start();
          connections_.remove_if([](const Connection& c) { return c.pumps[0].expired() && c.pumps[1].expired(); });
          connections_.push_back(Connection{down, up, {p0, p1}});
        }
      }
      accept();
    });
  }

  static void reset(tcp::socket& s) {
    boost::system::error_code ignored;
    s.set_option(asio::socket_base::linger(true, 0), ignored);
    s.close(ignored);
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
      for (auto& c : connections_) {
        reset(*c.down);
        reset(*c.up);
      }
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
      for (auto& w : c.pumps)
        if (auto p = w.lock()) p->kick();
  }

  tcp::acceptor acceptor_, control_;
  unsigned short target_;
  Faults faults_;
  std::list<Connection> connections_;
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
