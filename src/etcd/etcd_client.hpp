// Internal: the HTTP/1.1 transport of EtcdBackend (Boost.Beast, blocking
// calls with deadlines) and the client that spreads requests over the
// cluster's endpoints: one pool of keep-alive connections per endpoint,
// failover to the next endpoint, the auth token.
//
// Each connection owns a private io_context: a call starts Beast's async
// operations and runs that context on the calling thread until they finish
// or the deadline passes (beast::tcp_stream's expiry). No thread of dlock's
// own does etcd I/O. A watch (a streaming response) keeps its read pending
// between waits, so a wait that times out loses nothing.
#pragma once

#include <dlock/backend.hpp>
#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/etcd.hpp>

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

namespace dlock::detail {

/// Why an exchange failed. `sent`: the request left completely, so the
/// server may have executed it.
struct HttpFailure {
  bool sent = false;
  bool timed_out = false;
  std::string reason;
};

class EtcdConnection {
 public:
  struct Reply {
    unsigned status = 0;
    std::string body;
  };

  /// `tls_context` and `tls` are used for https endpoints only.
  EtcdConnection(const EtcdEndpoint& endpoint, boost::asio::ssl::context* tls_context, const TlsOptions* tls);
  EtcdConnection(const EtcdConnection&) = delete;
  EtcdConnection& operator=(const EtcdConnection&) = delete;
  /// Closes the socket; sends nothing (no TLS close_notify).
  ~EtcdConnection();

  /// TCP connect (and TLS handshake) by `deadline`; throws HttpFailure{sent = false}.
  void connect(TimePoint deadline);
  /// One POST with a JSON body and its whole reply by `deadline`; throws HttpFailure.
  Reply post(std::string_view target, const std::string& body, const std::string& token, TimePoint deadline);
  /// Sends a POST whose reply is a stream of newline-separated JSON messages
  /// and reads the reply's header. A non-200 reply is read whole and returned.
  std::optional<Reply> open_stream(std::string_view target, const std::string& body, const std::string& token,
                                   TimePoint deadline);
  /// The next message of the stream, or nullopt when `deadline` passed first
  /// (the read stays pending for the next call). Throws HttpFailure when the
  /// stream broke or ended.
  std::optional<std::string> next_message(TimePoint deadline);

  [[nodiscard]] bool reusable() const noexcept { return reusable_; }
  [[nodiscard]] bool reused() const noexcept { return exchanges_ > 0; }
  /// True when the server closed the idle connection (a restart, an idle timeout).
  [[nodiscard]] bool closed_by_peer() noexcept;
  /// In a child after fork(): moves the io_context off the parent's epoll
  /// instance so that dropping the connection cannot disturb the parent's.
  void forget_after_fork() noexcept;
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

 private:
  boost::beast::tcp_stream& tcp() noexcept;
  /// Runs the io_context until the started operations are done (the stream's
  /// expiry, set before they started, bounds them).
  void run();
  /// f(stream) with the TLS stream or the plain one.
  template <class F>
  void on_stream(F&& f) {
    if (tls_) {
      f(*tls_);
    } else {
      f(*plain_);
    }
  }
  /// Runs one Beast operation, started by start(stream, completion handler),
  /// until it completes or `deadline` passes; returns its error.
  template <class Start>
  boost::system::error_code exchange(Start&& start, TimePoint deadline) {
    boost::system::error_code result;
    tcp().expires_at(deadline);  // before the operation: Beast arms the timer when it starts
    on_stream([&](auto& s) { start(s, [&result](boost::system::error_code e, std::size_t) { result = e; }); });
    run();
    return result;
  }
  void write(std::string_view target, const std::string& body, const std::string& token, TimePoint deadline);
  [[noreturn]] void fail(bool sent, const boost::system::error_code& ec, std::string_view doing);
  std::optional<std::string> take_message();

  boost::asio::io_context ioc_;  // first: the streams below deregister from it when destroyed
  EtcdEndpoint endpoint_;
  const TlsOptions* tls_options_;
  std::optional<boost::beast::tcp_stream> plain_;
  std::optional<boost::asio::ssl::stream<boost::beast::tcp_stream>> tls_;
  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::response_parser<boost::beast::http::string_body>> stream_;
  std::size_t consumed_ = 0;
  bool read_pending_ = false;
  boost::system::error_code stream_error_;
  bool reusable_ = true;
  std::size_t exchanges_ = 0;
  pid_t pid_;
};

/// Idle keep-alive connections to one endpoint.
class EtcdEndpointPool {
 public:
  EtcdEndpointPool(EtcdEndpoint endpoint, boost::asio::ssl::context* tls_context, const TlsOptions* tls,
                   std::size_t max_idle);
  ~EtcdEndpointPool();
  /// An idle connection, or a new one connected by `deadline` (throws HttpFailure).
  std::unique_ptr<EtcdConnection> take(TimePoint deadline);
  /// A new connection, never an idle one (watches).
  std::unique_ptr<EtcdConnection> open(TimePoint deadline);
  void give(std::unique_ptr<EtcdConnection> c) noexcept;
  [[nodiscard]] const EtcdEndpoint& endpoint() const noexcept { return endpoint_; }

 private:
  EtcdEndpoint endpoint_;
  boost::asio::ssl::context* tls_context_;
  const TlsOptions* tls_;
  std::size_t max_idle_;
  std::mutex mu_;
  std::vector<std::unique_ptr<EtcdConnection>> idle_;
  pid_t pid_;
};

/// The cluster: every request goes to the endpoint that answered last and on
/// to the next one when it cannot serve it.
class EtcdClient {
 public:
  explicit EtcdClient(const EtcdOptions& options);  // options validated by the caller
  ~EtcdClient();

  /// POSTs `body` to `target` and returns the 200 reply's body. Each endpoint
  /// is tried at most once (one more time with a fresh connection when a
  /// kept-alive one failed), each with dial_timeout to connect and
  /// request_timeout for the reply. Every request dlock sends is safe to
  /// repeat on another member. Throws ConnectionError (no endpoint received
  /// it, or a connection broke after sending it: the message then says the
  /// outcome is unknown), TimeoutError (one received it and did not answer in
  /// time, or answered that raft timed out: outcome unknown),
  /// ServerError (errc::auth for refused credentials). `what` names the
  /// operation and lock for the message.
  std::string call(std::string_view target, const std::string& body, std::string_view what);
  /// A watch stream whose "created" message was read (throws as call()).
  std::unique_ptr<EtcdConnection> open_watch(const std::string& body, std::string_view what);

  [[nodiscard]] const std::string& endpoints_text() const noexcept { return endpoints_text_; }
  [[nodiscard]] const EtcdOptions& options() const noexcept { return options_; }

 private:
  std::string token();
  void authenticate(EtcdConnection& c, TimePoint deadline);
  /// How far the failed attempts of a call got: ordered, the worst one counts.
  enum class Sent { no, broken, unanswered };
  [[noreturn]] void give_up(std::string_view what, Sent sent, const std::vector<std::string>& reasons) const;

  EtcdOptions options_;
  std::string endpoints_text_;
  std::optional<boost::asio::ssl::context> tls_context_;
  TlsOptions tls_options_;
  std::vector<std::unique_ptr<EtcdEndpointPool>> pools_;
  std::atomic<std::size_t> preferred_{0};
  std::mutex token_mu_;
  std::string token_;
};

}  // namespace dlock::detail
