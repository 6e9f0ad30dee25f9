// Internal: the one Redis transport (issue 12). A RedisLink is one connection
// to one server over TCP, a Unix socket or TLS (RedisOptions::tls), driven by
// Boost.Asio on one process-wide I/O thread (redis_transport.cpp); the
// protocol (request bytes, reply parsing, the handshake's AUTH/SELECT/SCRIPT
// LOAD) is detail/redis_protocol.hpp's. Callers on any thread send requests
// and get a completion per request; several requests in flight on one link
// are pipelined (written back to back, answered in order).
//
// The caller's own exchange (the fast path): a link opened with
// RedisLinkSetup::caller_io over TCP or a Unix socket (not TLS, not
// subscriber mode) that has nothing queued or in flight is *idle*: the I/O
// thread leaves its socket alone (no read pending). A caller may then claim it
// (begin_here), write its request on its own thread and read the replies
// there (end_here): one send and one poll + recv, no hand-off to the I/O
// thread and back. Anything the I/O thread is given meanwhile (send(),
// close()) waits until the caller hands the link back, then runs in order.
// The decisions are the pure functions of link_state below. An idle link's
// close by the server is noticed at checkout (check_idle(): one
// recv(MSG_PEEK)), so a request is never written on a link already closed.
//
// Connect: resolve + connect within connect_timeout, then the TLS handshake
// (if any) and the Redis handshake within connect_timeout again. TCP
// keepalive on every TCP connection (15 s idle, 3 probes 5 s apart). A
// request is answered within command_timeout of being written (and by its own
// deadline, if it has one). A link that failed, timed out or got a malformed
// or unexpected reply is broken for good: every request on it completes with
// an error, it is closed, and it is never reused. An idle caller_io link has
// no read armed and its socket is out of the I/O thread's reactor: a server
// that closes it is noticed at checkout (check_idle) or before the I/O
// thread's next write. While a caller has the link, the I/O thread never
// fails it (nor shuts or closes its socket) but for an overdue asynchronous
// exchange (io_seize): a request queued behind the caller's exchange whose
// deadline passes fails alone, never written (RedisOutcome::unsent).
//
// Errors (include/dlock/error.hpp, issue 11 item 19): ConnectionError when the
// server could not be reached (connect refused or timed out, TLS refused, no
// answer to the handshake: nothing was asked of it) or dropped the connection
// after a request was written ("its outcome is unknown"); TimeoutError when a
// written request got no answer in time (outcome unknown); ServerError when
// the handshake was refused (errc::auth for AUTH). Messages name the endpoint
// and the timeout, never the password or key material.
//
// fork(): a link belongs to the process that opened it. In a child, dropping
// an inherited link closes its descriptor without sending anything (no QUIT,
// no TLS close_notify; the parent keeps its session) and leaks its few
// objects, never touching the parent's I/O thread state; the child's first
// link starts a new I/O thread. SIGPIPE never reaches the process from here:
// sends use MSG_NOSIGNAL and the I/O thread blocks SIGPIPE.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "../redis_options.hpp"
#include "redis_protocol.hpp"
#include "warn_once.hpp"

namespace dlock::detail {

/// A reply, owned.
using RedisValue = redis_proto::Reply;

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

/// Throws the ServerError an error reply stands for; `what` says what was
/// being done ("acquire of 'x'"). No-op for other replies.
void throw_if_error(const RedisValue& reply, std::string_view endpoint, std::string_view what);

/// What a new link sends before its first request, all in one round trip
/// behind AUTH (if a password is set) and SELECT (if database != 0).
struct RedisLinkSetup {
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
  /// The link is used by one caller at a time (a pool's link): over TCP or a
  /// Unix socket, an idle link lets that caller do its exchange on its own
  /// thread (begin_here / end_here; see the top of this file).
  bool caller_io = false;
};

/// Who may touch an idle-capable link's socket, as pure decisions (unit-tested
/// in tests/unit/redis_link_state_test.cpp). The transport keeps a State under
/// a mutex and acts on what these return.
namespace link_state {
enum class Owner {
  io,      ///< the I/O thread (connecting, or requests queued, in flight, being written or read)
  idle,    ///< nobody: ready, nothing pending, no read armed
  caller,  ///< a caller's exchange on its own thread (begin_here .. end_here)
  /// an asynchronous caller's exchange on its own executor (send_here .. its
  /// completion); unlike a thread, an executor may stop running, so the I/O
  /// thread may seize such a link once the request is overdue (io_seize)
  caller_async,
};
struct State {
  Owner owner = Owner::io;
  bool io_wanted = false;     ///< the I/O thread got requests while a caller had the link
  bool close_wanted = false;  ///< close() while a caller had the link
  bool seized = false;        ///< the I/O thread failed the link during an asynchronous caller's exchange
  std::chrono::steady_clock::time_point caller_due{};  ///< Owner::caller_async: its request's deadline
};
/// A caller's claim: only an idle link can be taken (true: now the caller's).
[[nodiscard]] inline bool caller_claim(State& s) noexcept {
  if (s.owner != Owner::idle) return false;
  s.owner = Owner::caller;
  return true;
}
/// An asynchronous caller's claim (send_here), its request answered by `due`.
[[nodiscard]] inline bool caller_claim_async(State& s, std::chrono::steady_clock::time_point due) noexcept {
  if (s.owner != Owner::idle) return false;
  s.owner = Owner::caller_async;
  s.caller_due = due;
  return true;
}
[[nodiscard]] inline bool caller_has(const State& s) noexcept {
  return s.owner == Owner::caller || s.owner == Owner::caller_async;
}
/// The I/O thread wants the socket for new work (`closing`: to close it).
/// True: it is the I/O thread's now. False: a caller has it; the work waits
/// for caller_release().
[[nodiscard]] inline bool io_claim(State& s, bool closing) noexcept {
  if (caller_has(s)) {
    (closing ? s.close_wanted : s.io_wanted) = true;
    return false;
  }
  s.owner = Owner::io;
  return true;
}
/// What the I/O thread must do once a caller gives the link back.
enum class AfterCaller {
  nothing,  ///< idle again
  resume,   ///< write what was queued meanwhile (and arm the read)
  close,    ///< close() came meanwhile
  fail,     ///< the caller's exchange broke the link: fail it (queued requests: nothing was sent)
  seized,   ///< the I/O thread failed the link meanwhile (io_seize): nothing left to do
};
[[nodiscard]] inline AfterCaller caller_release(State& s, bool broke) noexcept {
  if (s.seized) {
    s.seized = s.io_wanted = s.close_wanted = false;
    return AfterCaller::seized;  // the link stays the I/O thread's, broken
  }
  const AfterCaller next = broke            ? AfterCaller::fail
                           : s.close_wanted ? AfterCaller::close
                           : s.io_wanted    ? AfterCaller::resume
                                            : AfterCaller::nothing;
  s.io_wanted = s.close_wanted = false;
  s.owner = next == AfterCaller::nothing ? Owner::idle : Owner::io;
  return next;
}
/// The I/O thread takes a link from an asynchronous caller whose exchange is
/// `grace` past its deadline at `now` (its executor stopped running): true,
/// the link is the I/O thread's, to be failed; the caller's late completion
/// finds it seized and gives nothing back. A thread's exchange
/// (Owner::caller) is never seized: it is bounded by its own poll().
[[nodiscard]] inline bool io_seize(State& s, std::chrono::steady_clock::time_point now,
                                   std::chrono::steady_clock::duration grace) noexcept {
  if (s.owner != Owner::caller_async || now - grace < s.caller_due) return false;
  s.owner = Owner::io;
  s.seized = true;
  s.io_wanted = s.close_wanted = false;
  return true;
}
/// Whether the I/O thread may leave a ready link idle (no read armed) now.
struct IdleInputs {
  bool caller_io = false, tls = false, subscriber = false, ready = false;
  std::size_t queued = 0, inflight = 0,
              unparsed = 0;  ///< requests not written / not answered; bytes received, not parsed
  bool writing = false;
};
[[nodiscard]] inline bool may_idle(const IdleInputs& in) noexcept {
  return in.caller_io && !in.tls && !in.subscriber && in.ready && in.queued == 0 && in.inflight == 0 &&
         in.unparsed == 0 && !in.writing;
}
}  // namespace link_state

/// One request for a link: one or more pipelined commands, one reply each.
struct RedisCall {
  redis_proto::Request request{};
  /// Names it in messages ("acquire of 'orders:42'").
  std::string what = "a command";
  /// A deadline besides command_timeout (Redlock's node_timeout), and how
  /// messages name it ("the Redlock node_timeout 50ms").
  std::optional<std::chrono::steady_clock::time_point> deadline{};
  std::string deadline_name{};
};

/// What became of a request: one reply per command, or an error for all.
struct RedisOutcome {
  std::vector<RedisValue> replies;
  std::exception_ptr error;
  std::chrono::steady_clock::time_point answered{};  ///< when the last reply came in
  /// The error came before the request was written, on a link that had been
  /// up (it broke, or the server closed it while idle): nothing was asked of
  /// the server, and the request may be sent again on another link.
  bool unsent = false;
};

/// Subscriber mode (the pub/sub connection): every reply that no request
/// awaits goes to `push`; `up` runs when the handshake is done, `lost` once
/// when the link broke. All run on the I/O thread and must not block.
struct RedisLinkEvents {
  std::function<void(RedisValue)> push;
  std::function<void()> up;
  std::function<void(std::exception_ptr)> lost;
};

/// One connection. Thread-safe; cheap to move. See the top of this file.
class RedisLink {
 public:
  using Done = std::function<void(RedisOutcome)>;

  /// Starts connecting on the I/O thread and returns at once; requests sent
  /// meanwhile queue behind the handshake. `options` must be valid.
  static RedisLink open(const RedisOptions& options, RedisLinkSetup setup = {}, RedisLinkEvents events = {});

  RedisLink(RedisLink&&) noexcept;
  RedisLink& operator=(RedisLink&&) noexcept;
  /// Closes the connection (in a child process: see fork() above). Requests
  /// still in flight complete with an error.
  ~RedisLink();

  /// Queues `call` (pipelined behind those in flight); `done` runs on the I/O
  /// thread with the replies or the error. Requests with no commands
  /// complete at once. In subscriber mode `done` may be empty: the replies go
  /// to events.push.
  void send(RedisCall call, Done done);
  /// send() and wait for the outcome; throws its error. On an idle
  /// caller_io link: begin_here() + end_here() instead.
  std::vector<RedisValue> exec(RedisCall call);
  /// The fast path (see the top of this file): on an idle caller_io link,
  /// writes `call` on the calling thread and returns true (its `what` and
  /// `deadline_name` are moved from); end_here() must follow, on the same
  /// thread. False, with `call` untouched, when the link is not idle: use
  /// send(). Errors (same as send()'s: a write that failed is in doubt) come
  /// from end_here().
  [[nodiscard]] bool begin_here(RedisCall& call);
  /// Reads the replies of begin_here()'s request on the calling thread,
  /// bounded as send()'s are (command_timeout or the call's deadline), and
  /// gives the link back. A failure breaks the link (never reused).
  [[nodiscard]] RedisOutcome end_here();
  /// The asynchronous fast path: on an idle caller_io link (the client's
  /// shared links), writes `call` on the calling thread and reads its replies
  /// with `ex`'s own reactor (`ex`: from reactor_executor()), so that no hand-off to the I/O thread and back
  /// is needed; `done` then runs on `ex` (never inside this call) and true is
  /// returned, with `call` and `done` moved from. False, both untouched, when
  /// the link is not idle (use send()) or the server closed it while idle
  /// (then broken() is true: nothing was written). Bounded as send() is
  /// (command_timeout or the call's deadline); a request written and not
  /// answered is in doubt and breaks the link. If `ex`'s context stops
  /// running, the I/O thread fails the link after that deadline (and a grace
  /// period), so requests of others queued behind it are not stranded; if it
  /// is destroyed, `done` is destroyed uncalled and the link is dropped.
  [[nodiscard]] bool send_here(RedisCall& call, const boost::asio::any_io_executor& ex, Done& done);
  /// At checkout: false if the link is broken, or idle and closed by the
  /// server meanwhile (it is then broken). One recv(MSG_PEEK) on an idle link.
  [[nodiscard]] bool check_idle() noexcept;
  /// Drops the connection now (pending requests fail with ConnectionError).
  void close() noexcept;
  /// Broken (failed, timed out, closed by either side): never to be reused.
  [[nodiscard]] bool broken() const noexcept;
  /// The handshake completed.
  [[nodiscard]] bool ready() const noexcept;
  /// Opened by another process (fork()).
  [[nodiscard]] bool inherited() const noexcept;
  [[nodiscard]] const std::string& endpoint() const noexcept;
  /// For tests: the socket's descriptor, once a request on it completed.
  [[nodiscard]] int fd() const noexcept;
  /// The script SHA-1s to call by (EVALSHA); empty entries go as EVAL.
  [[nodiscard]] const redis_proto::ScriptShas& shas() const noexcept;

  struct Impl;

 private:
  explicit RedisLink(std::shared_ptr<Impl> impl) noexcept;
  void release() noexcept;
  std::shared_ptr<Impl> impl_;
};

/// The io_context executor under `ex` (itself, or a strand's inner one),
/// untracked: what send_here() takes. It may outlive its context (unlike a
/// strand, whose state dies with its context's services). nullopt for other
/// executors (thread pools, ...): their requests take the I/O thread's way.
[[nodiscard]] std::optional<boost::asio::any_io_executor> reactor_executor(const boost::asio::any_io_executor& ex);

/// True on a thread running the completion of a send_here() exchange (on
/// that caller's executor), for the first call there only: the completion
/// that asks is the exchange's own continuation, not an operation it started
/// (whose completion must not run inside its initiating call). False
/// everywhere else (the I/O thread included).
[[nodiscard]] bool take_caller_completion() noexcept;

/// Runs `fn` on the I/O thread after `delay` (timers of the transport's users,
/// e.g. the subscriber's reconnects). `fn` must not block.
void redis_io_after(std::chrono::milliseconds delay, std::function<void()> fn);

/// Waits for many sends at once (a fan-out): add() returns the Done of slot
/// i; wait() returns when all slots completed. Thread-safe.
class RedisGather {
 public:
  explicit RedisGather(std::size_t slots);
  [[nodiscard]] RedisLink::Done slot(std::size_t i);
  /// Waits for every slot; returns the outcomes in slot order.
  [[nodiscard]] std::vector<RedisOutcome> wait();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace dlock::detail
