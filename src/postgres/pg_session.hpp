// Internal to dlock_postgres: one libpq connection with deadline-bounded
// round trips, the SQLSTATE -> dlock::Error mapping, and the connection pool.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <dlock/postgres.hpp>

namespace dlock::detail {

using SteadyTime = std::chrono::steady_clock::time_point;

struct PgResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

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
  unsigned id;  ///< bit in PgSession::prepared_; unique per SQL text
  std::string name;
  std::string sql;
  std::vector<unsigned> types;
};

class PgPool;

class PgSession {
 public:
  PgSession(PGconn* conn, PgPool* pool) noexcept : conn_(conn), pool_(pool) {}
  PgSession(const PgSession&) = delete;
  PgSession& operator=(const PgSession&) = delete;
  ~PgSession();

  [[nodiscard]] PGconn* conn() const noexcept { return conn_; }
  [[nodiscard]] PgPool* pool() const noexcept { return pool_; }
  [[nodiscard]] int server_version() const noexcept { return PQserverVersion(conn_); }
  [[nodiscard]] int pid() const noexcept { return PQbackendPID(conn_); }

  /// One round trip (two the first time a prepared statement is used on this
  /// connection), bounded by `deadline`.
  PgOutcome run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared, SteadyTime deadline);
  /// A parameterless command ("BEGIN", DDL), bounded by `deadline`.
  PgOutcome command(const char* sql, SteadyTime deadline);

  /// False when the connection is no longer fit for the pool: broken, inside a
  /// transaction, or the server has sent something unsolicited (e.g. the FATAL
  /// of an idle-session timeout) since it was last used.
  [[nodiscard]] bool reusable() noexcept;

  SteadyTime idle_since{};
  /// The ttl whose TCP keepalive settings the server session carries (0: none yet).
  std::int64_t keepalive_ttl_ms = 0;

 private:
  PgOutcome finish_send(int sent, SteadyTime deadline);
  std::uint64_t prepared_ = 0;
  PGconn* conn_;
  PgPool* pool_;
};

class PgPool {
 public:
  PgPool(const PostgresOptions& options, std::string endpoint);
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;
  ~PgPool();

  /// An idle connection, or a new one if fewer than pool_size are open; waits
  /// for one to be returned until connect_timeout passes (TimeoutError).
  /// Throws ConnectionError / ServerError when connecting fails.
  PgSessionPtr checkout();
  /// Returns a connection after a successful operation; closes it instead if
  /// it is not reusable.
  void checkin(PgSessionPtr session) noexcept;
  /// Called when a session is destroyed.
  void closed() noexcept;

  [[nodiscard]] PostgresBackend::PoolStats stats() const;
  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] const PostgresOptions& options() const noexcept { return options_; }

 private:
  PgSessionPtr connect();

  const PostgresOptions& options_;
  const std::string endpoint_;
  std::vector<std::string> keywords_, values_;  // connection parameters for PQconnectStartParams
  mutable std::mutex mu_;
  std::condition_variable returned_;
  std::vector<PgSessionPtr> idle_;
  std::size_t open_ = 0;
};

/// Throws the dlock::Error that an error result or failed round trip means.
/// `what` names the operation ("acquire of 'orders:42'").
[[noreturn]] void throw_outcome(const PgOutcome& o, std::string_view endpoint, std::string_view what,
                                std::chrono::milliseconds timeout);

}  // namespace dlock::detail
