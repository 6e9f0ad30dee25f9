// Internal to dlock_postgres: one libpq connection with deadline-bounded
// round trips, the SQLSTATE -> dlock::Error mapping, and the connection pool
// (detail::Pool, the one pool template, over PostgreSQL sessions).
//
// fork(): a connection belongs to the process that opened it. In a forked
// child an inherited connection is never used and never PQfinish()ed (that
// would send Terminate on the parent's socket and end the parent's session,
// and with it the parent's advisory locks): statements on it fail as
// "broken" without sending anything, and destroying it closes only the
// child's copy of the socket. The pool (detail::Pool) notices the new pid at
// its next checkout, drops its inherited idle connections the same way and
// connects afresh.
#pragma once

#include <libpq-fe.h>
#include <unistd.h>

#include <bitset>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include <dlock/detail/pool.hpp>
#include <dlock/error.hpp>
#include <dlock/postgres.hpp>

namespace dlock::detail {

using SteadyTime = std::chrono::steady_clock::time_point;

struct PgResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

/// How many distinct prepared statements a backend may have (PgStatement::id).
inline constexpr std::size_t pg_max_statements = 256;

/// One parameter of a statement: an int8 sent in binary, or text.
struct PgParam {
  static PgParam int8(std::int64_t v);
  static PgParam text(std::string v);
  std::string bytes;
  bool binary = false;
  unsigned oid = 0;
};

/// How a round trip ended.
struct PgOutcome {
  enum class Fail {
    none,     ///< `result` holds the statement's result (which may be an error result)
    timeout,  ///< the deadline passed: the connection was left mid-statement and must be closed
    broken,   ///< the connection failed (closed by the server, network error)
    /// a stop request ended an asynchronous round trip (async_run_pipelined's
    /// `stop`): the connection was left mid-statement and must be closed
    cancelled,
  };
  Fail fail = Fail::none;
  PgResult result;
  std::string message;  ///< libpq's message for timeout/broken

  [[nodiscard]] bool ok() const noexcept;                    ///< no failure and a successful result
  [[nodiscard]] std::string_view sqlstate() const noexcept;  ///< "" if none
};

/// A statement, sent as a named prepared statement (session scope) or as an
/// unnamed one each time (transaction scope: works behind PgBouncer).
struct PgStatement {
  unsigned id;  ///< bit in PgSession::prepared_ (< pg_max_statements); unique per SQL text
  std::string name;
  std::string sql;
  std::vector<unsigned> types;
};

/// One statement of a pipeline (PgSession::run_pipelined).
struct PgCall {
  const PgStatement& stmt;
  const std::vector<PgParam>& params;
};

class PgPool;

class PgSession {
 public:
  PgSession(PGconn* conn, PgPool* pool) noexcept : conn_(conn), pool_(pool), pid_(::getpid()) {}
  PgSession(const PgSession&) = delete;
  PgSession& operator=(const PgSession&) = delete;
  ~PgSession();

  [[nodiscard]] PGconn* conn() const noexcept { return conn_; }
  [[nodiscard]] PgPool* pool() const noexcept { return pool_; }
  [[nodiscard]] int server_version() const noexcept { return PQserverVersion(conn_); }
  [[nodiscard]] int pid() const noexcept { return PQbackendPID(conn_); }

  /// True in a process forked after this connection was opened: the socket
  /// is shared with the parent, so nothing may be sent or read on it.
  [[nodiscard]] bool inherited() const noexcept { return pid_ != ::getpid(); }

  /// One round trip (two the first time a prepared statement is used on this
  /// connection), bounded by `deadline`.
  PgOutcome run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared, SteadyTime deadline);
  /// Several statements in one round trip (libpq pipeline mode, one Sync):
  /// outside an explicit transaction they form one implicit transaction, so a
  /// set_config(..., true) in one applies to the next and reverts at the end.
  /// The server starts each statement's statement_timeout afresh. The result
  /// is the first error, else the last statement's result; statements after
  /// an error do not run.
  PgOutcome run_pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline);
  /// A parameterless command ("BEGIN", DDL), bounded by `deadline`.
  PgOutcome command(const char* sql, SteadyTime deadline);

  /// run() without blocking a thread: the request is written without waiting
  /// (non-blocking connection) and the answer awaited with async_wait on the
  /// socket (a posix::stream_descriptor on `ex`, released, never closed: the
  /// connection keeps its fd) under a steady_timer at `deadline`. `done` runs
  /// exactly once, on `ex`, never inside this call. On Fail::timeout the
  /// connection is left mid-statement and must be closed. The session must
  /// stay alive, and see no other call, until `done` runs.
  void async_run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared, SteadyTime deadline,
                 const boost::asio::any_io_executor& ex, std::function<void(PgOutcome)> done);
  /// run_pipelined() without blocking a thread, as async_run (the calls are
  /// sent before it returns: they need not outlive it). A `stop` request
  /// ends it at once with Fail::cancelled (a server-side wait: the caller
  /// closes the connection, which ends the wait on the server too).
  void async_run_pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline,
                           const boost::asio::any_io_executor& ex, std::function<void(PgOutcome)> done,
                           std::stop_token stop = {});
  /// command() without blocking a thread, as async_run.
  void async_command(const char* sql, SteadyTime deadline, const boost::asio::any_io_executor& ex,
                     std::function<void(PgOutcome)> done);

  /// False when the connection is no longer fit for the pool: broken, inside a
  /// transaction, or the server has sent something unsolicited (e.g. the FATAL
  /// of an idle-session timeout) since it was last used.
  [[nodiscard]] bool reusable() noexcept;

  /// True once a round trip on it failed (timed out or broke; not one a stop
  /// request cancelled): closing it then
  /// makes the pool suspect its other idle connections (generation bump).
  [[nodiscard]] bool failed() const noexcept { return failed_; }

  /// The ttl whose TCP keepalive settings the server session carries (0: none yet).
  std::int64_t keepalive_ttl_ms = 0;
  /// The pool's process epoch it was checked out in (detail::Pool::Checkout::epoch).
  std::uint64_t epoch = 0;

 private:
  PgOutcome pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline);
  PgOutcome noted(PgOutcome out) noexcept;  // records a failed round trip
  std::function<void(PgOutcome)> noting(std::function<void(PgOutcome)> done);
  PgOutcome finish_send(int sent, SteadyTime deadline);
  void async_finish_send(int sent, SteadyTime deadline, const boost::asio::any_io_executor& ex,
                         std::function<void(PgOutcome)> done);
  [[nodiscard]] PgOutcome refuse_inherited() const;
  std::bitset<pg_max_statements> prepared_;  // statements prepared on this connection, by id
  PGconn* conn_;
  PgPool* pool_;
  pid_t pid_;  // the process that opened the connection
  bool failed_ = false;
};

class PgPool {
 public:
  PgPool(const PostgresOptions& options, std::string endpoint);
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  /// An idle connection, or a new one if fewer than pool_size are open; waits
  /// for one to be returned until connect_timeout passes (TimeoutError).
  /// Throws ConnectionError when the server cannot be reached (refused, no
  /// answer within connect_timeout), ServerError when it refuses the login.
  PgSessionPtr checkout();
  /// For the asynchronous checkout, without blocking: an idle connection
  /// (`session`), else a reserved slot (`reserved`: the epoch to pass to
  /// async_connect, which opens it or frees the slot), else neither (all
  /// pool_size in use).
  struct Taken {
    PgSessionPtr session;
    std::optional<std::uint64_t> reserved;
  };
  [[nodiscard]] Taken try_checkout();
  /// Opens the connection of a slot reserved by try_checkout without blocking
  /// (PQconnectStart/PQconnectPoll on `ex`, bounded by connect_timeout);
  /// `then` runs on `ex` with the session or the error connect() would throw
  /// (the slot then freed). Throws only when out of memory (the slot freed).
  void async_connect(const boost::asio::any_io_executor& ex, std::uint64_t reserved,
                     std::function<void(std::exception_ptr, PgSessionPtr)> then);

  using ConnPtr = std::unique_ptr<PGconn, void (*)(PGconn*)>;
  [[nodiscard]] ConnPtr start_connect() const;              ///< PQconnectStartParams
  [[nodiscard]] ConnectionError connect_timed_out() const;  ///< no answer within connect_timeout
  [[nodiscard]] TimeoutError pool_full() const;             ///< every slot stayed in use for connect_timeout
  /// The session, or the error of a failed connect (the slot then freed).
  PgSessionPtr finish_connect(ConnPtr conn, std::uint64_t epoch);
  /// Returns a connection after a successful operation; closes it instead if
  /// it is not reusable.
  void checkin(PgSessionPtr session) noexcept;
  /// Called when a session is destroyed (PgSessionDeleter): one that failed
  /// makes the idle ones suspect; one closed on purpose only frees its slot.
  void closed(std::unique_ptr<PgSession> session) noexcept;
  /// Frees a slot reserved by try_checkout whose connection could not be
  /// opened; the idle connections become suspect (generation bump).
  void free_slot(std::uint64_t epoch) noexcept;

  [[nodiscard]] PostgresBackend::PoolStats stats() const;
  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] const PostgresOptions& options() const noexcept { return options_; }

 private:
  using Sessions = Pool<std::unique_ptr<PgSession>>;
  PgSessionPtr connect(std::uint64_t epoch);
  PgSessionPtr adopt(Sessions::Checkout c) noexcept;

  const PostgresOptions& options_;
  const std::string endpoint_;
  std::vector<std::string> keywords_, values_;  // connection parameters for PQconnectStartParams
  Sessions pool_;
};

/// `d` in whole milliseconds as PostgreSQL's int settings take them: clamped to [0, INT_MAX].
[[nodiscard]] std::int64_t pg_int_ms(std::chrono::milliseconds d) noexcept;
/// `d` in whole seconds for a TCP keepalive setting: clamped to [1, pg_max_keepalive_seconds].
[[nodiscard]] std::int64_t pg_keepalive_seconds(std::chrono::milliseconds d) noexcept;

/// libpq's message for `c` on one line, with every quoted fragment dropped
/// (libpq quotes host names, database and user names and the parts of a
/// connection string it cannot parse: any of them may be part of a password).
[[nodiscard]] std::string conn_message(PGconn* c);

/// Throws the dlock::Error that an error result or failed round trip means.
/// `what` names the operation ("acquire of 'orders:42'").
[[noreturn]] void throw_outcome(const PgOutcome& o, std::string_view endpoint, std::string_view what,
                                std::chrono::milliseconds timeout);

}  // namespace dlock::detail
