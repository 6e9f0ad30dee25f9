// proxy_pump.hpp: the forwarding core of the loopback TCP proxies in the test
// and bench trees: tests/chaos/chaos_proxy.cpp (faults on command) and
// bench/latency_proxy.cpp (a fixed delay). One io_context thread; the Faults
// object is read by every pump at each step and must outlive them.
#pragma once

#include <utility>  // before Asio 1.74, which uses std::exchange without it under C++20

#include <boost/asio.hpp>

#include <array>
#include <chrono>
#include <deque>
#include <memory>
#include <vector>

namespace dlock::test_proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

inline tcp::endpoint loopback(unsigned short port) { return {asio::ip::make_address_v4("127.0.0.1"), port}; }

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
  // Closes both sockets with a TCP RST (SO_LINGER 0).
  void reset() {
    boost::system::error_code ignored;
    for (auto* s : {from_.get(), to_.get()}) {
      s->set_option(asio::socket_base::linger(true, 0), ignored);
      s->close(ignored);
    }
  }
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

/// Connects `client` to 127.0.0.1:target and starts a pump each way: [0] up
/// (client -> server), [1] down. Both null if the target refused (the client
/// is then reset).
inline std::array<std::shared_ptr<Pump>, 2> splice(tcp::socket client, unsigned short target, const Faults& faults) {
  auto down = std::make_shared<tcp::socket>(std::move(client));
  auto up = std::make_shared<tcp::socket>(down->get_executor());
  boost::system::error_code ec;
  up->connect(loopback(target), ec);
  if (ec) {
    down->set_option(asio::socket_base::linger(true, 0), ec);
    down->close(ec);
    return {};
  }
  up->set_option(tcp::no_delay(true), ec);
  down->set_option(tcp::no_delay(true), ec);
  std::array<std::shared_ptr<Pump>, 2> pumps{std::make_shared<Pump>(down, up, faults, 0),
                                             std::make_shared<Pump>(up, down, faults, 1)};
  for (auto& p : pumps) p->start();
  return pumps;
}

}  // namespace dlock::test_proxy
