// dlock metrics over HTTP: worker threads take and release locks while a
// small Boost.Beast server exposes the MetricsRegistry at /metrics in the
// Prometheus text format, ready for a Prometheus scrape job.
//
//   dlock_metrics_http [--port N] [--seconds N]     (port 0: pick a free one)
//
// Prints "listening on http://127.0.0.1:PORT/metrics" once it accepts
// connections; stops after --seconds (default: run until killed).
#include <dlock/dlock.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

void serve(tcp::socket socket, const dlock::MetricsRegistry& metrics) {
  boost::beast::error_code ec;
  boost::beast::flat_buffer buffer;
  http::request<http::string_body> request;
  http::read(socket, buffer, request, ec);
  if (ec) return;
  http::response<http::string_body> response;
  response.version(request.version());
  response.keep_alive(false);
  if (request.method() == http::verb::get && request.target() == "/metrics") {
    response.result(http::status::ok);
    response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = metrics.prometheus_text();
  } else {
    response.result(http::status::not_found);
    response.set(http::field::content_type, "text/plain");
    response.body() = "not found; try /metrics\n";
  }
  response.prepare_payload();
  http::write(socket, response, ec);
  socket.shutdown(tcp::socket::shutdown_send, ec);
}

}  // namespace

int main(int argc, char** argv) {
  unsigned short port = 9464;
  int seconds = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view arg = argv[i];
    if (arg == "--port")
      port = static_cast<unsigned short>(std::atoi(argv[i + 1]));
    else if (arg == "--seconds")
      seconds = std::atoi(argv[i + 1]);
    else {
      fmt::print(stderr, "usage: dlock_metrics_http [--port N] [--seconds N]\n");
      return 2;
    }
  }

  auto metrics = std::make_shared<dlock::MetricsRegistry>(dlock::MetricsOptions{.next = dlock::default_observer()});
  dlock::MemoryBackend backend;
  std::atomic<bool> stop{false};

  // Workers contending for a few lock classes, so the metrics move.
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      const char* names[] = {"orders:1", "orders:2", "reports:daily"};
      dlock::Lock<dlock::MemoryBackend> lock(
          backend, names[w % 3], {.ttl = 5s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}, .observer = metrics});
      while (!stop) {
        if (auto g = lock.try_acquire_for(100ms)) std::this_thread::sleep_for(2ms);
        std::this_thread::sleep_for(1ms);
      }
    });
  }

  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  fmt::print("listening on http://127.0.0.1:{}/metrics\n", acceptor.local_endpoint().port());
  std::fflush(stdout);

  std::thread server([&] {
    while (!stop) {
      boost::system::error_code ec;
      tcp::socket socket(io);
      acceptor.accept(socket, ec);
      if (ec) break;
      serve(std::move(socket), *metrics);
    }
  });

  if (seconds > 0) {
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
  } else {
    for (;;) std::this_thread::sleep_for(1h);
  }
  stop = true;
  {  // wake the blocking accept with one last connection
    tcp::socket wake(io);
    boost::system::error_code ignored;
    wake.connect(acceptor.local_endpoint(), ignored);
  }
  server.join();
  for (auto& t : workers) t.join();
  return 0;
}
