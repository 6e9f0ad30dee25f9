// Internal: the client for one Redis server, shared by RedisBackend and
// Redlock: connections (connect, AUTH, SELECT, the server checks, timeouts),
// the lock scripts (SCRIPT LOAD per connection, EVALSHA with EVAL fallback),
// reply parsing and error mapping, and a small thread-safe connection pool.
//
// fork(): a connection belongs to the process that opened it. A pool used in
// a child process drops what it inherited without sending anything (the fd
// is closed, hiredis' memory freed: the parent keeps its socket) and opens
// new connections.
//
// Errors (issue 11 item 19; include/dlock/error.hpp): ConnectionError when the
// server cannot be reached (connect refused, failed or timed out, no answer to
// the connection's handshake within connect_timeout: nothing was asked of it)
// or drops the connection after a request was sent (its outcome unknown, said
// in the message); TimeoutError when a request was sent and got no answer
// within command_timeout (its outcome unknown: it may have been granted), or
// when no pooled connection became free in time. A connection that failed is
// dropped, never reused. ServerError for error replies (errc::auth for NOAUTH
// / WRONGPASS / NOPERM). Messages name the endpoint, never the password.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "redis_keys.hpp"
#include "redis_options.hpp"
#include "redis_scripts.hpp"
#include "warn_once.hpp"

struct redisContext;

namespace dlock::detail {

/// A reply, copied out of hiredis.
struct RedisValue {
  enum class Type { nil, integer, string, status, error, array };
  Type type = Type::nil;
  long long integer = 0;
  std::string str;  ///< string, status and error replies
  std::vector<RedisValue> elements;

  [[nodiscard]] bool is_error() const noexcept { return type == Type::error; }
};

/// Throws the ServerError an error reply stands for; `what` says what was
/// being done ("acquire of 'x'"). No-op for other replies.
void throw_if_error(const RedisValue& reply, std::string_view endpoint, std::string_view what);

/// The acquire script's answer (see redis_scripts.hpp).
struct AcquireReply {
  bool acquired = false;
  std::uint64_t token = 0;                              ///< when acquired
  std::optional<std::chrono::milliseconds> holder_ttl;  ///< when not; empty if the holder set no TTL
};
/// Parses the acquire script's reply from `endpoint` for `lock_key`; throws
/// ServerError for error replies and for replies of an unexpected shape.
[[nodiscard]] AcquireReply parse_acquire_reply(const RedisValue& reply, std::string_view endpoint,
                                               std::string_view lock_key);
/// Parses the 0/1 reply of the extend and fence-raise scripts; `op`
/// ("extend") and `key` name it in messages. Throws ServerError.
[[nodiscard]] bool parse_flag_reply(const RedisValue& reply, std::string_view endpoint, std::string_view op,
                                    std::string_view key);

/// The release script's answer (see redis_scripts.hpp).
struct ReleaseReply {
  bool released = false;
  std::string publish_error;  ///< released, but the server refused the PUBLISH (e.g. no channel permission)
};
/// Parses the release script's reply for `lock_key`; throws ServerError for
/// error replies and for replies of an unexpected shape.
[[nodiscard]] ReleaseReply parse_release_reply(const RedisValue& reply, std::string_view endpoint,
                                               std::string_view lock_key);

/// Why AUTH was refused, for messages: the error's class and a fixed
/// explanation, never the server's text (a server that does not know AUTH,
/// or a proxy, repeats its arguments: the user name and password).
[[nodiscard]] std::string describe_auth_refusal(std::string_view reply);

/// The server's answer to `CONFIG GET maxmemory-policy`, judged.
struct EvictionVerdict {
  enum class Kind {
    safe,     ///< noeviction
    evicts,   ///< any other policy: keys may be deleted before their TTL
    unknown,  ///< the policy could not be read (CONFIG refused, renamed, or an odd reply)
  };
  Kind kind = Kind::unknown;
  std::string message;  ///< for evicts and unknown: names the endpoint and says what to do
};
/// Throws ServerError (errc::auth) for NOAUTH: the connection is not authenticated.
[[nodiscard]] EvictionVerdict judge_eviction_policy(const RedisValue& reply, std::string_view endpoint);

/// The run_id line of an INFO reply; empty if there is none.
[[nodiscard]] std::string parse_run_id(std::string_view info);

/// What the handshakes of one server's connections learned about it, and the
/// warnings given about it (each kind once: detail/warn_once.hpp). Thread-safe.
class ServerFacts {
 public:
  /// The run_id of the server (INFO server) as of the latest handshake that
  /// read it; empty before that, or when INFO is refused.
  [[nodiscard]] std::string run_id() const;
  void set_run_id(std::string id);
  /// The first time for `kind`: writes "dlock: warning: <message>" to stderr.
  /// Later calls for `kind` write nothing; the latest message is kept.
  void warn_once(std::string_view kind, std::string message) noexcept { warnings_.warn(kind, std::move(message)); }
  /// The latest message of each kind warned about.
  [[nodiscard]] std::vector<std::string> warnings() const { return warnings_.all(); }

  /// A refusal of the release script's PUBLISH (an ACL user without
  /// permission for the release channels): the release succeeded, but
  /// waiters are not woken by it and fall back to their backoff. Warned once
  /// per server.
  void note_publish_refusal(std::string_view endpoint, std::string_view channel, std::string_view error) noexcept;
  /// The latest such refusal as a message ("" if none): endpoint, channel and
  /// the server's error, never a password.
  [[nodiscard]] std::string publish_refusal() const { return warnings_.latest(publish_kind); }

 private:
  static constexpr std::string_view publish_kind = "publish";
  mutable std::mutex mu_;
  std::string run_id_;
  OnceWarnings warnings_;
};

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

/// One Redis server: a pool of RedisConnections and the lock operations.
/// Thread-safe.
class RedisNode {
 public:
  /// `options` must be valid (detail::validate). Connects lazily.
  explicit RedisNode(RedisOptions options);
  RedisNode(const RedisNode&) = delete;
  RedisNode& operator=(const RedisNode&) = delete;
  ~RedisNode();

  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] const RedisOptions& options() const noexcept { return options_; }
  [[nodiscard]] RedisKeys keys(std::string_view name) const { return redis_keys(options_.key_prefix, name); }

  using AcquireReply = detail::AcquireReply;
  /// The acquire script: SET NX PX of keys.lock = owner plus the fencing counter.
  AcquireReply acquire(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds ttl);
  /// The release script: true if `owner` held the lock (it is now deleted and
  /// the release published), false if it had expired or another owner holds it.
  /// A refused publish is noted in facts() (ServerFacts::note_publish_refusal), not thrown.
  bool release(const RedisKeys& keys, std::string_view owner);
  /// The release script on a connection of its own (not the pool's, which may
  /// be exhausted by the slow server that made an attempt in doubt), with
  /// connect and command each bounded by `timeout`. Best effort: never throws.
  void abandon(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds timeout) noexcept;
  /// The extend script: true if `owner` holds the lock (TTL reset to `ttl`).
  bool extend(std::string_view lock_key, std::string_view owner, std::chrono::milliseconds ttl);

  struct ExtendItem {
    std::string_view lock_key;
    std::string_view owner;
    std::chrono::milliseconds ttl;
  };
  /// Many owner-checked extensions in one round trip (pipelined EVALSHA).
  /// result[i] is extend(items[i]...). A connection error fails the whole
  /// batch (thrown). An error reply for one item is thrown too, unless
  /// `errors` is given: then (*errors)[i] holds it and result[i] is false.
  std::vector<bool> extend_many(std::span<const ExtendItem> items, std::vector<std::exception_ptr>* errors = nullptr);

  /// Any command on a pooled connection (for tools and tests). Error replies
  /// are returned as values.
  RedisValue command(std::span<const std::string_view> args);
  RedisValue command(std::initializer_list<std::string_view> args) {
    return command(std::span<const std::string_view>(args.begin(), args.size()));
  }

  /// Number of connections currently open (idle or in use).
  [[nodiscard]] std::size_t open_connections() const;
  /// What the connections' handshakes learned about the server, and the warnings given.
  [[nodiscard]] ServerFacts& facts() noexcept { return facts_; }
  [[nodiscard]] const ServerFacts& facts() const noexcept { return facts_; }

 private:
  class Checkout;
  std::unique_ptr<RedisConnection> take();
  void give_back(std::unique_ptr<RedisConnection> c) noexcept;

  bool released(const RedisValue& reply, const RedisKeys& keys);

  const RedisOptions options_;
  const std::string endpoint_;
  ServerFacts facts_;
  mutable std::mutex mu_;
  std::condition_variable free_cv_;
  struct Idle {
    std::unique_ptr<RedisConnection> connection;
    std::uint64_t generation;
    std::chrono::steady_clock::time_point since;
  };
  /// Idle connections older than this are polled for a server-side close before use.
  static constexpr std::chrono::milliseconds idle_check_after{10};
  std::vector<Idle> idle_;  ///< most recently used last
  std::size_t open_ = 0;
  std::uint64_t generation_ = 0;  ///< bumped when a connection breaks: idle ones from before are dropped
  int pid_ = 0;                   ///< the process the counts above belong to (fork(): reset in a child)
};

}  // namespace dlock::detail
