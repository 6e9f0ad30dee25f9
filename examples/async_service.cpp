// examples/async_service.cpp: an HTTP service on one thread whose handler
// takes a per-resource lock with co_await (Lock::async_acquire on a
// MemoryBackend), holds it across an asynchronous operation (a timer standing
// in for a database call) and answers with the fencing token.
//
//   dlock_async_service [--port N] [--seconds N]     (port 0: pick a free one)
//   curl http://127.0.0.1:PORT/lock/orders           -> "orders 7\n"
//
// Prints "listening on http://127.0.0.1:PORT/" once it accepts. A request
// that found another one inside the same resource's critical section, or a
// token not above the resource's last one, answers 500 (it never should). tests/examples/async_service_test.sh sends
// concurrent requests and checks the tokens. See docs/async.md.
#include <dlock/dlock.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <string_view>

namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

struct Service {
  dlock::MemoryBackend locks;
  std::set<std::string> inside;                     // resources whose critical section runs now (one thread: no mutex)
  std::map<std::string, std::uint64_t> last_token;  // per resource: tokens must increase
};

// GET /lock/<resource>: the resource's token, taken under its lock.
asio::awaitable<http::response<http::string_body>> handle(Service& svc, const http::request<http::string_body>& req) {
  http::response<http::string_body> res{http::status::ok, req.version()};
  res.set(http::field::content_type, "text/plain");
  const std::string_view target(req.target().data(), req.target().size());
  constexpr std::string_view prefix = "/lock/";
  if (req.method() != http::verb::get || !target.starts_with(prefix) || target.size() == prefix.size()) {
    res.result(http::status::not_found);
    res.body() = "GET /lock/<resource>\n";
    co_return res;
  }
  const std::string resource(target.substr(prefix.size()));
  try {
    // One Lock object per request (they share the backend): docs/async.md.
    dlock::Lock<dlock::MemoryBackend> lock(svc.locks, "resource:" + resource, {.ttl = 10s, .acquire_timeout = 20s});
    auto guard = co_await lock.async_acquire(asio::use_awaitable);
    const std::uint64_t token = guard.fencing_token();
    const bool entered = svc.inside.insert(resource).second;  // nobody else inside
    const bool ok = entered && token > svc.last_token[resource];
    svc.last_token[resource] = token;
    asio::steady_timer work(co_await asio::this_coro::executor, 5ms);  // the protected asynchronous operation
    co_await work.async_wait(asio::use_awaitable);
    if (entered) svc.inside.erase(resource);
    co_await guard.async_release(asio::use_awaitable);
    if (!ok) res.result(http::status::internal_server_error);
    res.body() = fmt::format("{} {}\n", resource, token);
  } catch (const std::exception& e) {
    res.result(http::status::service_unavailable);
    res.body() = fmt::format("{}\n", e.what());
  }
  co_return res;
}

asio::awaitable<void> session(tcp::socket socket, Service& svc) {
  boost::beast::flat_buffer buffer;
  for (;;) {
    boost::system::error_code ec;
    http::request<http::string_body> req;
    co_await http::async_read(socket, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    auto res = co_await handle(svc, req);
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    co_await http::async_write(socket, res, asio::redirect_error(asio::use_awaitable, ec));
    if (ec || !res.keep_alive()) co_return;
  }
}

asio::awaitable<void> listen(tcp::acceptor& acceptor, Service& svc) {
  for (;;) {
    tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
    asio::co_spawn(acceptor.get_executor(), session(std::move(socket), svc), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  unsigned short port = 8080;
  int seconds = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view arg = argv[i];
    if (arg == "--port") {
      port = static_cast<unsigned short>(std::atoi(argv[i + 1]));
    } else if (arg == "--seconds") {
      seconds = std::atoi(argv[i + 1]);
    } else {
      fmt::print(stderr, "usage: dlock_async_service [--port N] [--seconds N]\n");
      return 2;
    }
  }
  asio::io_context io(1);
  Service svc;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  fmt::print("listening on http://127.0.0.1:{}/\n", acceptor.local_endpoint().port());
  std::fflush(stdout);
  asio::co_spawn(io, listen(acceptor, svc), asio::detached);
  asio::steady_timer stop(io);
  if (seconds > 0) {
    stop.expires_after(std::chrono::seconds(seconds));
    stop.async_wait([&](const boost::system::error_code&) { io.stop(); });
  }
  io.run();
  return 0;
}
