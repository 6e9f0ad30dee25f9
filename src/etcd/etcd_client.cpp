// The HTTP transport and the failover client of EtcdBackend (etcd_client.hpp).
#include "etcd_client.hpp"

#include <dlock/detail/time.hpp>
#include <dlock/detail/tls_context.hpp>
#include <dlock/error.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

namespace dlock::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {
std::string ms_text(std::chrono::milliseconds d) { return fmt::format("{} ms", d.count()); }
}  // namespace

// ---- EtcdConnection ----

EtcdConnection::EtcdConnection(const EtcdEndpoint& endpoint, asio::ssl::context* tls_context, const TlsOptions* tls)
    : endpoint_(endpoint), tls_options_(tls), pid_(::getpid()) {
  if (endpoint_.tls) {
    tls_.emplace(ioc_, *tls_context);
  } else {
    plain_.emplace(ioc_);
  }
}

EtcdConnection::~EtcdConnection() = default;

beast::tcp_stream& EtcdConnection::tcp() noexcept { return tls_ ? tls_->next_layer() : *plain_; }

void EtcdConnection::run() {
  ioc_.restart();
  ioc_.run();
}

void EtcdConnection::fail(bool sent, const boost::system::error_code& ec, std::string_view doing) {
  reusable_ = false;
  HttpFailure f{.sent = sent, .timed_out = ec == beast::error::timeout, .reason = {}};
  f.reason = f.timed_out ? fmt::format("no answer to {}", doing) : fmt::format("{} failed: {}", doing, ec.message());
  throw f;
}

void EtcdConnection::connect(TimePoint deadline) {
  boost::system::error_code ec;
  std::vector<tcp::endpoint> targets;
  const auto address = asio::ip::make_address(endpoint_.host, ec);
  const auto port = static_cast<unsigned short>(std::stoi(endpoint_.port));
  if (!ec) {
    targets.emplace_back(address, port);
  } else {
    tcp::resolver resolver(ioc_);
    const auto found = resolver.resolve(endpoint_.host, endpoint_.port, ec);
    if (ec) fail(false, ec, "name resolution");
    for (const auto& e : found) targets.push_back(e.endpoint());
  }
  boost::system::error_code result;
  tcp().expires_at(deadline);  // before the operation: Beast arms the timer when it starts
  tcp().async_connect(targets, [&](boost::system::error_code e, const tcp::endpoint&) { result = e; });
  run();
  if (result) fail(false, result, "connect");
  tcp().socket().set_option(tcp::no_delay(true), ec);
  if (tls_) {
    if (!prepare_tls_stream(*tls_, *tls_options_, endpoint_.host)) {
      reusable_ = false;
      throw HttpFailure{.sent = false, .timed_out = false, .reason = "TLS set-up (server name) failed"};
    }
    tcp().expires_at(deadline);
    tls_->async_handshake(asio::ssl::stream_base::client, [&](boost::system::error_code e) { result = e; });
    run();
    if (result == beast::error::timeout) fail(false, result, "the TLS handshake");
    if (result) {
      reusable_ = false;
      throw HttpFailure{
          .sent = false, .timed_out = false, .reason = "TLS handshake failed: " + tls_failure_reason(*tls_, result)};
    }
  }
}

void EtcdConnection::write(std::string_view target, const std::string& body, const std::string& token,
                           TimePoint deadline) {
  http::request<http::string_body> req{http::verb::post, beast::string_view(target.data(), target.size()), 11};
  req.set(http::field::host, endpoint_.host + ":" + endpoint_.port);
  req.set(http::field::content_type, "application/json");
  // Without it, a member that has lost its leader answers only after its
  // request timeout (about 7 s); with it, "no leader" at once.
  req.set("Grpc-Metadata-hasleader", "true");
  if (!token.empty()) req.set(http::field::authorization, token);
  req.keep_alive(true);
  req.body() = body;
  req.prepare_payload();
  const auto result = exchange([&](auto& s, auto done) { http::async_write(s, req, done); }, deadline);
  // An incomplete request is never executed.
  if (result) fail(false, result, "sending the request");
  ++exchanges_;
}

EtcdConnection::Reply EtcdConnection::post(std::string_view target, const std::string& body, const std::string& token,
                                           TimePoint deadline) {
  write(target, body, token, deadline);
  http::response<http::string_body> res;
  const auto result = exchange([&](auto& s, auto done) { http::async_read(s, buffer_, res, done); }, deadline);
  if (result) fail(true, result, "reading the reply");
  if (res.need_eof()) reusable_ = false;
  return Reply{res.result_int(), std::move(res.body())};
}

std::optional<EtcdConnection::Reply> EtcdConnection::open_stream(std::string_view target, const std::string& body,
                                                                 const std::string& token, TimePoint deadline) {
  reusable_ = false;  // a stream is never handed back to a pool
  write(target, body, token, deadline);
  stream_.emplace();
  stream_->body_limit(boost::none);
  auto result = exchange([&](auto& s, auto done) { http::async_read_header(s, buffer_, *stream_, done); }, deadline);
  if (result) fail(true, result, "reading the reply");
  if (stream_->get().result_int() == 200) {
    tcp().expires_never();
    return std::nullopt;
  }
  result = exchange([&](auto& s, auto done) { http::async_read(s, buffer_, *stream_, done); }, deadline);
  if (result) fail(true, result, "reading the reply");
  return Reply{stream_->get().result_int(), std::move(stream_->get().body())};
}

std::optional<std::string> EtcdConnection::take_message() {
  std::string& body = stream_->get().body();
  const auto nl = body.find('\n', consumed_);
  if (nl == std::string::npos) return std::nullopt;
  std::string line = body.substr(consumed_, nl - consumed_);
  consumed_ = nl + 1;
  if (consumed_ > 65536) {
    body.erase(0, consumed_);
    consumed_ = 0;
  }
  return line;
}

std::optional<std::string> EtcdConnection::next_message(TimePoint deadline) {
  for (;;) {
    if (auto m = take_message()) return m;
    if (stream_error_) {
      throw HttpFailure{
          .sent = true, .timed_out = false, .reason = "the watch stream broke: " + stream_error_.message()};
    }
    if (stream_->is_done()) throw HttpFailure{.sent = true, .timed_out = false, .reason = "the watch stream ended"};
    if (!read_pending_) {
      read_pending_ = true;
      auto done = [this](boost::system::error_code e, std::size_t) {
        read_pending_ = false;
        if (e) stream_error_ = e;
      };
      on_stream([&](auto& s) { http::async_read_some(s, buffer_, *stream_, done); });
    }
    if (ioc_.stopped()) ioc_.restart();
    while (read_pending_ && std::chrono::steady_clock::now() < deadline) ioc_.run_one_until(deadline);
    if (read_pending_) return std::nullopt;
  }
}

bool EtcdConnection::closed_by_peer() noexcept {
  char c;
  const ssize_t n = ::recv(tcp().socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return tls_ ? false : true;  // plain HTTP: nothing is due between exchanges
  return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

void EtcdConnection::forget_after_fork() noexcept {
  try {
    ioc_.notify_fork(asio::execution_context::fork_child);
  } catch (...) {  // then the objects are leaked rather than touch the parent's epoll set
  }
}

// ---- EtcdEndpointPool ----

EtcdEndpointPool::EtcdEndpointPool(EtcdEndpoint endpoint, asio::ssl::context* tls_context, const TlsOptions* tls,
                                   std::size_t max_idle)
    : endpoint_(std::move(endpoint)), tls_context_(tls_context), tls_(tls), max_idle_(max_idle), pid_(::getpid()) {}

EtcdEndpointPool::~EtcdEndpointPool() {
  if (pid_ != ::getpid()) {
    for (auto& c : idle_) c->forget_after_fork();
  }
}

std::unique_ptr<EtcdConnection> EtcdEndpointPool::open(TimePoint deadline) {
  auto c = std::make_unique<EtcdConnection>(endpoint_, tls_context_, tls_);
  c->connect(deadline);
  return c;
}

std::unique_ptr<EtcdConnection> EtcdEndpointPool::take(TimePoint deadline) {
  {
    std::lock_guard lk(mu_);
    if (pid_ != ::getpid()) {
      // A child process: the idle connections are the parent's sockets too.
      // Drop them without sending anything.
      for (auto& c : idle_) c->forget_after_fork();
      idle_.clear();
      pid_ = ::getpid();
    }
    while (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      if (!c->closed_by_peer()) return c;
    }
  }
  return open(deadline);
}

void EtcdEndpointPool::give(std::unique_ptr<EtcdConnection> c) noexcept {
  if (!c || !c->reusable()) return;
  std::lock_guard lk(mu_);
  if (c->pid() != pid_) {  // checked out by the parent before fork()
    c->forget_after_fork();
    return;
  }
  if (idle_.size() < max_idle_) idle_.push_back(std::move(c));
}

// ---- EtcdClient ----

EtcdClient::EtcdClient(const EtcdOptions& options) : options_(options) {
  bool any_tls = false;
  std::vector<EtcdEndpoint> parsed;
  for (const auto& url : options_.endpoints) {
    parsed.push_back(parse_etcd_endpoint(url, "EtcdOptions::endpoints"));
    any_tls = any_tls || parsed.back().tls;
    endpoints_text_ += (endpoints_text_.empty() ? "" : ",") + url;
  }
  tls_options_ = options_.tls.value_or(TlsOptions{});
  if (any_tls) tls_context_.emplace(make_tls_context(tls_options_, "EtcdOptions::tls"));
  for (auto& e : parsed) {
    pools_.push_back(std::make_unique<EtcdEndpointPool>(std::move(e), tls_context_ ? &*tls_context_ : nullptr,
                                                        &tls_options_, options_.pool_size));
  }
}

EtcdClient::~EtcdClient() = default;

std::string EtcdClient::token() {
  std::lock_guard lk(token_mu_);
  return token_;
}

void EtcdClient::authenticate(EtcdConnection& c, TimePoint deadline) {
  const auto reply =
      c.post("/v3/auth/authenticate", etcd_authenticate_request(options_.username, options_.password), {}, deadline);
  if (reply.status != 200) {
    const auto e = parse_etcd_error(reply.body);
    const std::string why = e ? e->message : fmt::format("HTTP status {}", reply.status);
    if (e && classify_etcd_error(*e) == EtcdErrorAction::next_endpoint) {
      throw HttpFailure{.sent = false, .timed_out = false, .reason = "authentication: " + why};
    }
    throw ServerError(
        fmt::format("etcd at {} refused authentication as user '{}': {}", endpoints_text_, options_.username, why),
        errc::auth);
  }
  std::string t;
  try {
    t = parse_etcd_auth_token(reply.body);
  } catch (const std::exception&) {
    throw ServerError(fmt::format("etcd at {} sent an authentication reply without a token", endpoints_text_),
                      errc::auth);
  }
  std::lock_guard lk(token_mu_);
  token_ = std::move(t);
}

void EtcdClient::give_up(std::string_view what, Sent sent, const std::vector<std::string>& reasons) const {
  std::string list;
  for (const auto& r : reasons) list += (list.empty() ? "" : "; ") + r;
  if (sent == Sent::unanswered) {
    throw TimeoutError(
        fmt::format("etcd {}: the request was sent but not answered (request_timeout {}), so its "
                    "outcome is unknown: {}",
                    what, ms_text(options_.request_timeout), list));
  }
  throw ConnectionError(fmt::format(
      "etcd {}: no endpoint could serve the request (dial_timeout {}, "
      "request_timeout {}); {}: {}",
      what, ms_text(options_.dial_timeout), ms_text(options_.request_timeout),
      sent == Sent::broken ? "a connection broke after sending it, so its outcome is unknown" : "nothing was done",
      list));
}

std::string EtcdClient::call(std::string_view target, const std::string& body, std::string_view what) {
  const std::size_t n = pools_.size();
  const std::size_t start = preferred_.load(std::memory_order_relaxed) % n;
  const bool auth = !options_.username.empty();
  std::vector<std::string> reasons;
  Sent sent = Sent::no;
  bool reauthenticated = false;
  bool fresh_retry = false;
  for (std::size_t i = 0; i < n;) {
    const std::size_t idx = (start + i) % n;
    EtcdEndpointPool& pool = *pools_[idx];
    const auto now = std::chrono::steady_clock::now();
    const auto reply_by = saturating_add(now, options_.request_timeout);
    std::unique_ptr<EtcdConnection> c;
    try {
      c = fresh_retry ? pool.open(saturating_add(now, options_.dial_timeout))
                      : pool.take(saturating_add(now, options_.dial_timeout));
      std::string tok = auth ? token() : std::string();
      if (auth && tok.empty()) {
        authenticate(*c, reply_by);
        tok = token();
      }
      const auto reply = c->post(target, body, tok, reply_by);
      // A streamed reply (keepalive) reports errors as {"error": {...}} with status 200.
      if (reply.status == 200 && !reply.body.starts_with("{\"error\"")) {
        pool.give(std::move(c));
        preferred_.store(idx, std::memory_order_relaxed);
        return reply.body;
      }
      pool.give(std::move(c));
      const auto e = parse_etcd_error(reply.body);
      if (!e) {
        throw ServerError(fmt::format("etcd {}: {} answered HTTP status {}", what, pool.endpoint().url, reply.status));
      }
      switch (classify_etcd_error(*e)) {
        case EtcdErrorAction::reauthenticate:
          if (auth && !reauthenticated) {
            reauthenticated = true;
            std::lock_guard lk(token_mu_);
            token_.clear();
            continue;  // the same endpoint, with a new token
          }
          throw ServerError(fmt::format("etcd {}: {} refused the request: {}", what, pool.endpoint().url, e->message),
                            errc::auth);
        case EtcdErrorAction::auth_failed:
          throw ServerError(fmt::format("etcd {}: {} refused the request: {}", what, pool.endpoint().url, e->message),
                            errc::auth);
        case EtcdErrorAction::fail:
          throw ServerError(fmt::format("etcd {}: {} refused the request: {}", what, pool.endpoint().url, e->message));
        case EtcdErrorAction::in_doubt:
          sent = Sent::unanswered;
          [[fallthrough]];
        case EtcdErrorAction::next_endpoint:
          reasons.push_back(fmt::format("{}: {}", pool.endpoint().url, e->message));
          break;
      }
    } catch (const HttpFailure& f) {
      const bool was_reused = c && c->reused() && !fresh_retry;
      if (f.sent) sent = std::max(sent, f.timed_out ? Sent::unanswered : Sent::broken);
      if (was_reused && !f.timed_out) {  // a kept-alive connection the server had dropped: once more, fresh
        fresh_retry = true;
        continue;
      }
      reasons.push_back(fmt::format("{}: {}", pool.endpoint().url, f.reason));
    }
    fresh_retry = false;
    preferred_.store((idx + 1) % n, std::memory_order_relaxed);  // the next call starts elsewhere
    ++i;
  }
  give_up(what, sent, reasons);
}

std::unique_ptr<EtcdConnection> EtcdClient::open_watch(const std::string& body, std::string_view what) {
  const std::size_t n = pools_.size();
  const std::size_t start = preferred_.load(std::memory_order_relaxed) % n;
  const bool auth = !options_.username.empty();
  std::vector<std::string> reasons;
  bool reauthenticated = false;
  for (std::size_t i = 0; i < n;) {
    const std::size_t idx = (start + i) % n;
    EtcdEndpointPool& pool = *pools_[idx];
    const auto now = std::chrono::steady_clock::now();
    const auto reply_by = saturating_add(now, options_.request_timeout);
    try {
      auto c = pool.open(saturating_add(now, options_.dial_timeout));
      std::string tok = auth ? token() : std::string();
      if (auth && tok.empty()) {
        authenticate(*c, reply_by);
        tok = token();
        c = pool.open(saturating_add(std::chrono::steady_clock::now(), options_.dial_timeout));
      }
      auto error_reply = c->open_stream("/v3/watch", body, tok, reply_by);
      std::string first;
      if (!error_reply) {
        auto m = c->next_message(reply_by);
        if (!m) throw HttpFailure{.sent = true, .timed_out = true, .reason = "no answer to the watch request"};
        first = std::move(*m);
      } else {
        first = std::move(error_reply->body);
      }
      if (const auto e = parse_etcd_error(first); e && (error_reply || first.find("\"result\"") == std::string::npos)) {
        if (classify_etcd_error(*e) == EtcdErrorAction::reauthenticate && auth && !reauthenticated) {
          reauthenticated = true;
          std::lock_guard lk(token_mu_);
          token_.clear();
          continue;
        }
        reasons.push_back(fmt::format("{}: {}", pool.endpoint().url, e->message));
      } else if (parse_etcd_watch_message(first).created) {
        return c;
      } else {
        reasons.push_back(fmt::format("{}: the watch was not created", pool.endpoint().url));
      }
    } catch (const HttpFailure& f) {
      reasons.push_back(fmt::format("{}: {}", pool.endpoint().url, f.reason));
    }
    ++i;
  }
  give_up(what, Sent::no, reasons);
}

}  // namespace dlock::detail
