// Internal: the Redis protocol layer, with no I/O (issue 12, first step).
//
// Everything dlock says to a Redis server and everything it makes of the
// answers, as values and small state machines that take bytes or replies and
// return what to do next; a transport only moves the bytes (Boost.Redis'
// detail/ state machines are the model):
//   - requests: RESP bytes built by hiredis' redisFormatCommandArgv; the one
//     place that knows each lock script's KEYS/ARGV layout (ScriptCall);
//   - ReplyParser: arbitrary byte chunks in, complete owned replies out
//     (hiredis' redisReader behind a strict framer; malformed input is an
//     error value, never a crash);
//   - decisions: error classification (NOSCRIPT, auth, WRONGTYPE, transient
//     errors, MOVED/ASK with slot/host/port), typed script results, the
//     connection handshake, the pub/sub subscription table.
// Nothing here throws except std::bad_alloc. Messages never contain a
// password, a key's value, an owner id or a token.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "redis_keys.hpp"
#include "redis_scripts.hpp"

struct redisReader;

namespace dlock::detail::redis_proto {

// ---- Replies ----

/// One reply, owned (copied out of hiredis).
struct Reply {
  enum class Type { nil, integer, string, status, error, array };
  Type type = Type::nil;
  long long integer = 0;
  std::string str;  ///< string, status and error replies
  std::vector<Reply> elements;

  [[nodiscard]] bool is_error() const noexcept { return type == Type::error; }
  friend bool operator==(const Reply&, const Reply&) = default;
};

/// Bounds on one reply, checked by the framer that reads each reply before
/// hiredis does. hiredis 0.14 checks numbers and type bytes, but bounds no
/// size (it waits for any length a bulk string declares, and allocates an
/// array's element vector as declared) and takes the two bytes after a bulk
/// string as its CRLF without looking at them. The framer hands hiredis only
/// complete, well-formed replies within these limits.
struct ParserLimits {
  std::size_t max_bulk = 512u << 20;    ///< bytes of one bulk string (Redis' proto-max-bulk-len)
  std::size_t max_elements = 1u << 20;  ///< array elements in one reply, all levels together
  std::size_t max_depth = 7;            ///< nested arrays (at most 8, hiredis 0.14's limit)
  std::size_t max_line = 64u << 10;     ///< bytes of a status, error or integer line
};

/// Why a byte stream is not a reply stream. `offset` counts bytes from the
/// start of the stream; the message names the offending construct, never its
/// payload.
struct ProtocolError {
  std::string message;
  std::size_t offset = 0;
};

/// Turns byte chunks, split anywhere, into complete replies in order.
/// After a protocol error it stays failed: the connection must be dropped.
/// Not thread-safe.
class ReplyParser {
 public:
  explicit ReplyParser(ParserLimits limits = {});
  ~ReplyParser();
  ReplyParser(ReplyParser&&) noexcept;
  ReplyParser& operator=(ReplyParser&&) noexcept;

  /// Appends bytes received from the server.
  void feed(std::string_view bytes);
  /// The next complete reply, or nothing when more bytes are needed or the
  /// stream is malformed (then error() is set).
  [[nodiscard]] std::optional<Reply> next();
  [[nodiscard]] const std::optional<ProtocolError>& error() const noexcept { return error_; }
  /// Bytes received and not yet returned as replies.
  [[nodiscard]] std::size_t buffered() const noexcept { return buf_.size() - start_; }

 private:
  enum class Scan { complete, need_more, malformed };
  Scan scan();
  void fail(std::string message, std::size_t at);
  bool element_done();

  struct ReaderDeleter {
    void operator()(redisReader* r) const noexcept;
  };
  ParserLimits limits_;
  std::unique_ptr<redisReader, ReaderDeleter> reader_;
  std::string buf_;                  // bytes not yet handed to hiredis, from start_
  std::size_t start_ = 0;            // the current reply's first byte in buf_
  std::size_t pos_ = 0;              // scanned and valid up to here
  std::size_t line_from_ = 0;        // where to resume looking for CRLF
  std::optional<std::size_t> bulk_;  // reading a bulk string of this many bytes at pos_
  std::vector<std::size_t> open_;    // elements still owed by each open array
  std::size_t elements_ = 0;         // elements declared in the current reply
  std::size_t consumed_ = 0;         // stream offset of buf_[0]
  std::optional<ProtocolError> error_;
};

// ---- Requests ----

/// RESP bytes of one or more pipelined commands; each command gets one reply
/// (SUBSCRIBE and UNSUBSCRIBE are built with one channel each, so that holds).
class Request {
 public:
  /// Appends one command (hiredis' redisFormatCommandArgv).
  void push(std::span<const std::string_view> args);
  void push(std::initializer_list<std::string_view> args) { push(std::span(args.begin(), args.size())); }
  void append(const Request& other);
  [[nodiscard]] std::string_view payload() const noexcept { return payload_; }
  [[nodiscard]] std::size_t commands() const noexcept { return commands_; }
  [[nodiscard]] bool empty() const noexcept { return commands_ == 0; }

 private:
  std::string payload_;
  std::size_t commands_ = 0;
};

/// One call of a lock script with its keys and arguments, owned so that it
/// can be sent again as EVAL after NOSCRIPT. Built only by the functions
/// below, which hold the scripts' KEYS/ARGV layouts (redis_scripts.hpp).
struct ScriptCall {
  RedisScript script = RedisScript::acquire;
  std::vector<std::string> keys;
  std::vector<std::string> args;
  /// A script outside redis_scripts (the primitives', redis_primitive_scripts.hpp):
  /// its text and SHA1, both static. Not loaded by the handshake: the first
  /// EVALSHA on a server is answered NOSCRIPT, and the EVAL resend caches it.
  std::string_view text{};
  std::string_view sha{};
};

/// Acquire on one node: KEYS lock, fence; ARGV owner, ttl ms,
/// fence_pttl(ttl, fence_floor) ms.
[[nodiscard]] ScriptCall acquire_call(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds ttl,
                                      std::chrono::milliseconds fence_floor);
/// Acquire on one Redlock node: as acquire_call, plus ARGV[4] the attempt's
/// clock floor in µs and ARGV[5] redlock_clock_lag_us.
[[nodiscard]] ScriptCall redlock_acquire_call(const RedisKeys& keys, std::string_view owner,
                                              std::chrono::milliseconds ttl, std::chrono::milliseconds fence_floor,
                                              std::chrono::microseconds clock_floor);
/// Whether a release wakes waiters (PUBLISH on the lock's channel). Redlock
/// undoes a failed attempt without publishing.
enum class Publish : bool { no, yes };
/// Release: KEYS lock; ARGV owner, channel ('' when publish is no).
[[nodiscard]] ScriptCall release_call(const RedisKeys& keys, std::string_view owner, Publish publish);
/// Extend: KEYS lock; ARGV owner, ttl ms.
[[nodiscard]] ScriptCall extend_call(std::string_view lock_key, std::string_view owner, std::chrono::milliseconds ttl);
/// Fence raise (Redlock): KEYS fence; ARGV token, fence_pttl(ttl, fence_floor) ms.
[[nodiscard]] ScriptCall fence_raise_call(std::string_view fence_key, std::uint64_t token,
                                          std::chrono::milliseconds ttl, std::chrono::milliseconds fence_floor);

/// The SHA1 of each lock script as SCRIPT LOAD answered it; empty: unknown
/// (the call goes as EVAL).
using ScriptShas = std::array<std::string, redis_script_count>;
enum class ScriptForm { evalsha, eval };
/// Appends `call` as EVALSHA when its SHA1 is known and `form` allows, else EVAL.
/// Returns the form used.
ScriptForm push_script_call(Request& request, const ScriptCall& call, const ScriptShas& shas,
                            ScriptForm form = ScriptForm::evalsha);

void push_script_load(Request& request, RedisScript script);
void push_ping(Request& request);
void push_subscribe(Request& request, std::string_view channel);
void push_unsubscribe(Request& request, std::string_view channel);

// ---- Error replies ----

enum class ErrorKind {
  noscript,      ///< EVALSHA of a script the server does not have: resend as EVAL
  noauth,        ///< authentication required
  auth_refused,  ///< WRONGPASS, invalid password/username
  noperm,        ///< the ACL user may not run the command or touch the key/channel
  wrongtype,     ///< a dlock key holds another type
  readonly,      ///< a replica (failover in progress, or misconfigured)
  loading,       ///< the server is loading its dataset
  masterdown,    ///< a replica lost its primary
  tryagain,      ///< cluster: multi-key operation during resharding
  clusterdown,   ///< cluster: slots not served
  moved,         ///< cluster: the slot lives elsewhere for good
  ask,           ///< cluster: the slot is migrating; ask there once
  oom,           ///< maxmemory reached and the write refused
  busy,          ///< a script or function runs too long on the server
  other,
};

/// Where a MOVED or ASK reply points. An empty host means the server that
/// sent it (Redis 7 with an unknown preferred endpoint).
struct Redirect {
  std::uint16_t slot = 0;
  std::string host;
  std::uint16_t port = 0;
  friend bool operator==(const Redirect&, const Redirect&) = default;
};

struct ErrorInfo {
  ErrorKind kind = ErrorKind::other;
  std::string_view code;             ///< the first word ("ERR", "NOPERM") or ""; points into the message
  std::optional<Redirect> redirect;  ///< for moved and ask
};

/// Classifies an error reply's text. Codes are matched at the start, and for
/// errors raised inside a script (Redis wraps them in "ERR Error running
/// script ...") READONLY, WRONGTYPE, OOM and NOPERM also anywhere in it.
[[nodiscard]] ErrorInfo classify_error(std::string_view message);
/// Parses "<slot> <host>:<port>" after MOVED/ASK (IPv6 hosts split at the last ':').
[[nodiscard]] std::optional<Redirect> parse_redirect(std::string_view rest);
/// Errors that go away by themselves: worth a later retry, maybe on another node.
[[nodiscard]] bool is_transient(ErrorKind kind) noexcept;
[[nodiscard]] std::string_view describe(ErrorKind kind) noexcept;

/// What to do with a script call's reply.
enum class ScriptNext { done, resend_as_eval };
/// NOSCRIPT after EVALSHA (SCRIPT FLUSH, failover to a replica without the
/// script): send the same call once more as EVAL; anything else is the answer.
[[nodiscard]] ScriptNext after_script_reply(const Reply& reply, ScriptForm sent) noexcept;

// ---- Typed script results ----

/// A reply that is not the expected answer: an error reply (kind from
/// classify_error) or one of an unexpected shape (kind nullopt).
struct ReplyFault {
  std::optional<ErrorKind> kind;
  std::string message;  ///< what went wrong; for error replies the server's text
};
template <class T>
using Result = std::variant<T, ReplyFault>;

/// The acquire script's answer. A retry by the same owner after a lost reply
/// (the in-doubt grant) has the same shape as a fresh grant: {1, token}, the
/// token of the lost grant.
struct AcquireReply {
  bool acquired = false;
  std::uint64_t token = 0;                              ///< when acquired
  std::optional<std::chrono::milliseconds> holder_ttl;  ///< when not; empty if the holder set no TTL
};
[[nodiscard]] Result<AcquireReply> parse_acquire(const Reply& reply);

/// The release script's answer: 1, 0, or {1, error} when released but the
/// PUBLISH was refused.
struct ReleaseReply {
  bool released = false;
  std::string publish_error;  ///< released, but the server refused the PUBLISH (e.g. no channel permission)
};
[[nodiscard]] Result<ReleaseReply> parse_release(const Reply& reply);
/// The extend script's answer: true if extended, false if lost.
[[nodiscard]] Result<bool> parse_extend(const Reply& reply);
/// The fence-raise script's answer (1).
[[nodiscard]] Result<bool> parse_fence_raise(const Reply& reply);

// ---- Handshake ----

/// What a new connection sends first, in one round trip.
struct HandshakeConfig {
  std::string endpoint{};     ///< for messages ("127.0.0.1:6379")
  std::string username{};     ///< ACL user; empty: AUTH with the password only
  std::string password{};     ///< empty: no AUTH
  int database = 0;           ///< SELECT when not 0
  std::string client_name{};  ///< CLIENT SETNAME when not empty (a refusal is ignored)
  bool load_scripts = true;   ///< SCRIPT LOAD of every lock script
};

/// The connection handshake as a state machine: request() is sent once, and
/// each reply, in order, goes to on_reply(). No HELLO: dlock speaks RESP2.
class Handshake {
 public:
  enum class Status { in_progress, done, failed };
  enum class Failure { none, auth, select, scripts, protocol };

  explicit Handshake(HandshakeConfig config);
  /// The whole handshake, pipelined (empty when there is nothing to send:
  /// then status() is already done).
  [[nodiscard]] const Request& request() const noexcept { return request_; }
  Status on_reply(const Reply& reply);
  [[nodiscard]] Status status() const noexcept { return status_; }
  [[nodiscard]] Failure failure() const noexcept { return failure_; }
  /// Why it failed: names the endpoint and step; never the password nor the
  /// server's text for AUTH (a proxy may echo the password).
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  /// SHA1s from SCRIPT LOAD (empty for a script the server refused to load:
  /// calls to it go as EVAL).
  [[nodiscard]] const ScriptShas& shas() const noexcept { return shas_; }
  /// Replies still owed to the handshake (to drain before the connection is reused).
  [[nodiscard]] std::size_t owed() const noexcept { return steps_.size() - next_; }

 private:
  enum class Step { auth, select, setname, script };
  void fail(Failure f, std::string message);
  [[nodiscard]] std::string redacted(std::string_view text) const;

  HandshakeConfig config_;
  Request request_;
  std::vector<std::pair<Step, RedisScript>> steps_;
  std::size_t next_ = 0;
  Status status_ = Status::in_progress;
  Failure failure_ = Failure::none;
  std::string message_;
  ScriptShas shas_;
};

/// A short, safe reason for an AUTH refusal: its error code and what it
/// usually means, never the server's text.
[[nodiscard]] std::string describe_auth_refusal(std::string_view reply);

// ---- Pub/sub ----

/// What one reply on a subscriber connection means.
struct PubSubEvent {
  enum class Kind {
    subscribed,    ///< the server confirmed a SUBSCRIBE
    unsubscribed,  ///< the server confirmed an UNSUBSCRIBE
    message,       ///< a message on `channel` (payload in `payload`)
    refused,       ///< an error reply to a SUBSCRIBE (`payload` holds the server's text)
    pong,          ///< the answer to a PING
    ignored,       ///< an answer for nothing we track (e.g. a channel no longer wanted)
    unexpected,    ///< not a pub/sub reply: drop the connection
  };
  Kind kind = Kind::ignored;
  std::string channel;
  std::string payload;
  /// subscribed: the confirmation renews a subscription that a lost
  /// connection ended (on_disconnect() while it was wanted): messages
  /// published in between reached no one here.
  bool renewed = false;
};

/// The subscriber connection's table of channels (pure, for one server):
/// which channels are wanted (reference counts), which SUBSCRIBE/UNSUBSCRIBE
/// are in flight, which are confirmed, and what to send after a reconnect.
/// The transport calls take_commands() after changes and sends the request,
/// passes every reply to on_reply(), and calls on_disconnect() when the
/// connection is lost. A channel is ready() (a waiter may rely on its
/// messages) only once the server confirmed the SUBSCRIBE. Not thread-safe.
class SubscriptionTable {
 public:
  void want(std::string_view channel);
  void unwant(std::string_view channel);
  /// SUBSCRIBE for wanted channels not subscribed (nor refused), UNSUBSCRIBE
  /// for subscribed channels no longer wanted; they count as in flight from now.
  [[nodiscard]] Request take_commands();
  /// A PING to check a quiet connection; answered by a pong event.
  [[nodiscard]] Request take_ping();
  PubSubEvent on_reply(const Reply& reply);
  /// Every confirmation is lost with the connection; wanted channels are
  /// subscribed again by the next take_commands(), and their confirmations
  /// then say so (PubSubEvent::renewed).
  void on_disconnect();

  [[nodiscard]] bool ready(std::string_view channel) const;
  [[nodiscard]] bool refused(std::string_view channel) const;
  [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_.size(); }
  [[nodiscard]] std::size_t tracked() const noexcept { return channels_.size(); }

 private:
  struct Channel {
    int refs = 0;
    bool sent = false;     // our last command for it was SUBSCRIBE
    int pending_acks = 0;  // SUBSCRIBEs sent and not yet answered
    bool acked = false;    // confirmed, and no command since
    bool refused = false;  // a SUBSCRIBE got an error reply; not resent until unwanted or reconnected
    bool lost = false;     // wanted when the connection was lost: its next confirmation is a renewal
  };
  enum class Sent { subscribe, unsubscribe, ping };
  void collect(std::map<std::string, Channel, std::less<>>::iterator it);

  std::map<std::string, Channel, std::less<>> channels_;
  std::deque<std::pair<Sent, std::string>> in_flight_;  // replies come in order
};

}  // namespace dlock::detail::redis_proto
