// Internal, being retired (issue 12): the hiredis connection that Redlock's
// ppoll fan-out (redlock_io.hpp) and the pub/sub thread (redis_subscriber.hpp)
// still use until they move onto detail/redis_transport.hpp. RedisBackend's
// node client (redis_node.hpp) no longer uses it; nothing new should.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../redis_options.hpp"
#include "redis_scripts.hpp"
#include "redis_transport.hpp"

struct redisContext;

namespace dlock::detail {

/// What a new connection sends before its first command, after AUTH (if a
/// password is set) and SELECT (if database != 0), all in one round trip.
struct RedisHandshake {
  /// SCRIPT LOAD of the lock scripts. If the ACL refuses it, the scripts
  /// are still called by their SHA-1 (EVALSHA), with EVAL on NOSCRIPT.
  bool load_scripts = true;
  /// CONFIG GET maxmemory-policy, judged per RedisOptions::eviction_check.
  bool check_eviction = true;
  /// INFO server, for the server's run_id (into facts).
  bool identify = false;
  /// Receives the run_id and the once-per-server warnings; may be null
  /// (warnings then go to stderr every time).
  ServerFacts* facts = nullptr;
};

/// One hiredis connection. Not thread-safe; owned by one user at a time.
class RedisConnection {
 public:
  using Handshake = RedisHandshake;

  /// Connects within options.connect_timeout, sets command_timeout on the
  /// socket, and runs the handshake.
  RedisConnection(const RedisOptions& options, std::string endpoint, Handshake handshake = {});

  /// Non-blocking mode (Redlock's parallel fan-out, detail/redlock_io.hpp, and
  /// the pub/sub connections, detail/redis_subscriber.hpp): starts the connect
  /// and queues the handshake without waiting for anything; the caller queues its commands behind it
  /// and drives the socket with poll(), flush(), fill() and next_reply(). The
  /// first pending_handshake() replies are the handshake's: pass them to
  /// check_handshake() (with nothing to send, pending_handshake() is 0 while
  /// the connect may still be in progress). command() and read_reply() must
  /// not be used. Throws ConnectionError when the connect fails at once (e.g.
  /// refused on loopback).
  struct NonBlocking {};
  RedisConnection(const RedisOptions& options, std::string endpoint, NonBlocking, Handshake handshake = {});
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;
  ~RedisConnection();

  /// Sends one command and reads its reply. Error replies are returned as
  /// values; I/O failures throw ConnectionError (TimeoutError when the reply
  /// timed out) and mark the connection broken.
  RedisValue command(std::span<const std::string_view> args);
  RedisValue command(std::initializer_list<std::string_view> args) {
    return command(std::span<const std::string_view>(args.begin(), args.size()));
  }

  /// Queues a command without sending it (pipelining); read_reply() returns
  /// the replies in order after the first read flushes the queue.
  void append(std::span<const std::string_view> args);
  RedisValue read_reply();

  /// EVALSHA of a lock script, falling back to EVAL on NOSCRIPT. Error
  /// replies other than NOSCRIPT are returned as values.
  RedisValue eval(RedisScript script, std::span<const std::string_view> keys, std::span<const std::string_view> args);
  /// Appends the EVALSHA of `script` (for pipelines; see RedisNode::extend_many).
  void append_evalsha(RedisScript script, std::span<const std::string_view> keys,
                      std::span<const std::string_view> args);
  /// Appends the EVAL of `script` (the NOSCRIPT fallback in pipelines).
  void append_eval(RedisScript script, std::span<const std::string_view> keys, std::span<const std::string_view> args);

  // ---- non-blocking mode ----
  [[nodiscard]] int fd() const noexcept;
  /// Sends as much queued output as the socket takes now (send() with
  /// MSG_NOSIGNAL: a peer that went away never raises SIGPIPE). True when
  /// nothing is left to send. Throws ConnectionError (and marks it broken).
  bool flush();
  /// Reads what the socket has now (call when poll() reports it readable).
  /// Throws ConnectionError on EOF or error (and marks it broken).
  void fill();
  /// The next complete reply among those read so far, if any. Throws
  /// ConnectionError on a protocol error.
  [[nodiscard]] std::optional<RedisValue> next_reply();
  /// Replies still owed to the handshake of a new non-blocking connection.
  [[nodiscard]] std::size_t pending_handshake() const noexcept { return steps_.size(); }
  /// Judges the handshake's replies as the blocking constructor does (throws
  /// ServerError for a refused AUTH or SELECT, a failed SCRIPT LOAD, or a
  /// maxmemory-policy that evicts with EvictionCheck::fail).
  void check_handshake(std::span<const RedisValue> replies);

  /// True once an I/O error happened: the connection must not be used again.
  [[nodiscard]] bool broken() noexcept;
  /// broken(), or the server closed the connection (one non-blocking poll()).
  [[nodiscard]] bool closed_by_server() noexcept;
  void mark_broken() noexcept { broken_ = true; }
  [[nodiscard]] redisContext* raw() noexcept { return ctx_; }
  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  /// Throws the error for the context's current error (ConnectionError, or
  /// TimeoutError for a sent request's timeout: see Errors above) and marks the
  /// connection broken.
  [[noreturn]] void fail(std::string_view doing);
  /// True in a child process: the connection was opened by an ancestor (fork()).
  [[nodiscard]] bool inherited() const noexcept;
  /// True once the server answered the handshake and bytes of a later request
  /// may have reached it: a request still unanswered is then in doubt (its
  /// outcome unknown: TimeoutError on a timeout), where before it nothing was
  /// asked of the server (ConnectionError: it could not be reached).
  [[nodiscard]] bool request_sent() const noexcept { return handshake_done_ && connected(); }
  /// True once the connect completed (non-blocking mode: a send() wrote bytes).
  [[nodiscard]] bool connected() const noexcept { return sent_any_ || !nonblocking_; }

 private:
  enum class Step { auth, select, eviction, identify, script };
  void connect_failed(const RedisOptions& options, bool timed_out);
  void queue_handshake(const RedisOptions& options);
  void judge_eviction(const RedisValue& reply);
  void queue(std::size_t argc, const char** argv, const std::size_t* lens);
  void append_script(bool by_sha, RedisScript script, std::span<const std::string_view> keys,
                     std::span<const std::string_view> args);

  redisContext* ctx_ = nullptr;
  std::string endpoint_;
  std::chrono::milliseconds connect_timeout_;
  std::chrono::milliseconds command_timeout_;
  bool broken_ = false;
  bool nonblocking_ = false;
  bool handshake_done_ = false;  ///< the handshake's replies were all judged (or there was none)
  bool sent_any_ = false;        ///< non-blocking mode: a send() wrote bytes (the connect completed)
  std::string username_;
  int database_ = 0;
  Handshake handshake_;
  EvictionCheck eviction_check_ = EvictionCheck::fail;
  int pid_ = 0;                                      ///< the process that opened it
  std::vector<std::pair<Step, RedisScript>> steps_;  ///< handshake replies still to judge
  std::string out_;                                  ///< non-blocking mode: formatted commands not yet sent
  std::size_t out_sent_ = 0;                         ///< ... of which this many bytes are sent
  std::string sha_[redis_script_count];
};

}  // namespace dlock::detail
