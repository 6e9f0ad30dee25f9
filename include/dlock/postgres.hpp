// dlock/postgres.hpp: PostgresBackend, locks held as PostgreSQL advisory locks (libpq).
//
//   dlock::PostgresBackend pg({.conninfo = "host=127.0.0.1 port=5432 dbname=app user=app"});
//   dlock::Lock<dlock::PostgresBackend> lock(pg, "orders:42", {.ttl = 30s});
//   std::int64_t key = pg.advisory_key("orders:42");  // the bigint dlock locks
//
// Link dlock::postgres. Every lock name maps to one bigint advisory key
// (SipHash-2-4 of lock_namespace and the name; docs/postgres-lock-ids.md);
// names "pg_advisory:<int64>" (lock_for_key) use that number as the key.
//
// Scope::session (the default): a held lock pins one pooled connection until
// release; the lock lives exactly as long as that server session. ttl bounds
// how long the server keeps a silent client's session (idle_session_timeout
// and TCP keepalives on the pinned connection), extend() is one round trip on
// it, and any error on it means the lock is lost. Do not use session scope
// behind PgBouncer in transaction pooling mode.
// Scope::transaction: the lock is pg_advisory_xact_lock inside a transaction
// the backend keeps open on the pinned connection, released by COMMIT; works
// behind PgBouncer. To lock inside *your own* transaction, use pg_try_xact_lock
// / pg_xact_lock on your PGconn. See docs/postgres.md.
// shared_sessions = N (session scope): the held locks of one backend share N
// server sessions instead of pinning one connection each, so 10,000 held locks
// need N connections; a session that ends loses every lease on it.
//
// Fencing tokens come from a sequence (default dlock.fencing) that
// install_schema() or sql/dlock_postgres.sql creates; without it locks work
// but carry no token: fencing_token() throws errc::no_fencing_token, saying to
// run install_schema(). Tokens increase only once the sequence exists.
//
// Thread safety: PostgresBackend may be used from any number of threads. It
// is a handle (copies share one pool; each Lock keeps a copy, so it may be
// destroyed before its locks). It connects lazily: the constructor only
// validates. Every network call is bounded by connect_timeout /
// statement_timeout (plus the wait asked for). A server that cannot be
// reached (refused, or no answer within connect_timeout) is a ConnectionError
// naming host:port/database (never the password, nor any other part of the
// conninfo); a statement that got no answer within statement_timeout is a
// TimeoutError (its outcome is unknown); deadlocks (SQLSTATE 40P01) are
// DeadlockError, other server refusals ServerError. A URI that libpq would
// misread (an unencoded '@' or '/' in the password) is refused by the
// constructor. After fork(), a child never uses or closes the connections it
// inherited (docs/postgres.md).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "backend.hpp"
#include "detail/pg_key.hpp"
#include "primitives_backend.hpp"
#include "lock.hpp"
#include "options.hpp"

// libpq's connection type, declared here so this header needs no libpq include path.
typedef struct pg_conn PGconn;  // NOLINT(modernize-use-using): must match libpq-fe.h

namespace dlock {

struct PostgresOptions {
  /// Scope of the locks taken through Lock<PostgresBackend>.
  enum class Scope {
    session,      ///< pg_try_advisory_lock on a pinned connection, until unlock
    transaction,  ///< pg_try_advisory_xact_lock in a transaction held open until unlock
  };

  /// Any libpq connection string: keyword/value ("host=... dbname=...") or URI
  /// ("postgresql://..."); sslmode, passwords, passfile, service files all work.
  std::string conninfo{};
  /// Mixed into every hashed key, so applications sharing a database do not
  /// contend; must not contain a NUL byte. Not applied to explicit keys.
  std::string lock_namespace{};
  /// Most connections open at once: one per held lock (or per shared session,
  /// see shared_sessions) plus one per operation in flight.
  std::size_t pool_size = 16;
  /// Session or transaction scope, see above.
  Scope scope = Scope::session;
  /// 0: each held lock pins its own connection. N >= 1 (session scope only,
  /// below pool_size): held locks share N server sessions, each released with
  /// pg_advisory_unlock on its own session; a session that ends loses (and
  /// signals) every lease on it; waits queue on a separate pooled connection
  /// and are not granted in strict arrival order (docs/postgres.md).
  std::size_t shared_sessions = 0;
  /// Bound on establishing one connection (TCP, TLS, authentication).
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(5)};
  /// Bound on each round trip (a server-side wait adds the wait asked for);
  /// when it passes the connection is closed and TimeoutError thrown.
  std::chrono::milliseconds statement_timeout{std::chrono::seconds(5)};
  /// application_name of lock connections, shown in pg_stat_activity and
  /// monitor(); empty: keep the conninfo's / PGAPPNAME. At most 63 bytes.
  std::string application_name = "dlock";
  /// Sequence that issues fencing tokens, "schema.name" or "name", each part
  /// lower-case letters, digits and '_' (not starting with a digit); install_schema() creates it.
  std::string fencing_sequence = "dlock.fencing";
};

/// One row of monitor(): an advisory lock held or awaited in the database.
struct PgAdvisoryLockInfo {
  std::int64_t key = 0;  ///< the bigint key ((classid << 32) | objid)
  bool granted = false;  ///< true: held; false: waiting for it
  int pid = 0;           ///< server process of the session
  std::string application_name;
  std::string client_addr;  ///< client address; empty for Unix sockets
  std::string state;        ///< pg_stat_activity.state ("idle", "active", ...)
  /// When the wait began (waiters only), on the server's wall clock.
  std::optional<std::chrono::system_clock::time_point> wait_start;
  /// How long the session has been in its current state (the server's now() - state_change).
  std::chrono::milliseconds in_state_for{};
  /// A key of the two-int4 space (pg_locks.objsubid = 2): a primitive's
  /// (RwLock, Semaphore slot, Election; PostgresBackend::primitive_key), not a mutex's.
  bool primitive = false;
  bool shared = false;  ///< a shared (reader's) lock
};

namespace detail {
class PgBackendState;
class PgSession;
struct PgSharedSession;
struct PgHandleAccess;  // the backend's helpers that fill and read handles
struct PgSessionDeleter {
  void operator()(PgSession* s) const noexcept;  // closes the connection: its server session ends
};
using PgSessionPtr = std::unique_ptr<PgSession, PgSessionDeleter>;

/// Checks every field but conninfo (which needs libpq); throws InvalidArgument.
void validate_fields(const PostgresOptions& o);

/// The DDL install_schema() runs for `sequence` (already validated), one
/// statement per element; for "dlock.fencing" it is sql/dlock_postgres.sql.
[[nodiscard]] std::vector<std::string> pg_schema_sql(std::string_view sequence);

/// The largest TCP keepalive idle time or interval Linux accepts (MAX_TCP_KEEPIDLE).
inline constexpr std::int64_t pg_max_keepalive_seconds = 32767;

/// What a lock's ttl sets on its server session, each value clamped to what
/// PostgreSQL (int settings) and Linux (keepalives) accept, so that no ttl,
/// however long, makes the server refuse the acquire.
struct PgTtlSettings {
  /// idle_session_timeout (session scope) or idle_in_transaction_session_timeout
  /// (transaction scope) in ms: the ttl; 0 (off) when the ttl is above INT_MAX
  /// ms (24.8 days), the most PostgreSQL accepts: a shorter timeout would free
  /// a silent holder's lock before the validity its client was given.
  std::int64_t idle_timeout_ms = 0;
  std::int64_t keepalives_idle_s = 1;      ///< tcp_keepalives_idle: ttl / 2, in [1, 32767] s
  std::int64_t keepalives_interval_s = 1;  ///< tcp_keepalives_interval: ttl / 6, in [1, 32767] s
  std::int64_t user_timeout_ms = 0;        ///< tcp_user_timeout: the ttl, at most INT_MAX ms
};
[[nodiscard]] PgTtlSettings pg_ttl_settings(std::chrono::milliseconds ttl) noexcept;

/// A libpq message on one line without any quoted fragment: libpq quotes host,
/// database and user names and the parts of a connection string it cannot
/// parse, and any of them may be part of a password.
[[nodiscard]] std::string pg_redact(std::string_view libpq_message);
/// pg_redact for a message of libpq's conninfo parser, which quotes parts of
/// the user's string: they may hold a '"' themselves, so quotes do not pair
/// up and everything from the first to the last '"' is dropped.
[[nodiscard]] std::string pg_redact_conninfo_error(std::string_view libpq_message);
}  // namespace detail

/// The per-lease state of a PostgresBackend lock: the pinned connection whose
/// server session holds the advisory lock, or (shared_sessions) the shared
/// session it holds it on. Move-only. Destroying a handle that still holds a
/// pinned connection closes it, which ends the session and so frees the lock
/// on the server: a lease is never silently leaked into the pool. Destroying
/// one that still holds a lock on a shared session has the backend unlock it
/// on that session before its next acquire there.
class PgLockHandle {
 public:
  PgLockHandle() = default;
  PgLockHandle(PgLockHandle&& other) noexcept;
  PgLockHandle& operator=(PgLockHandle&& other) noexcept;
  ~PgLockHandle();

  /// The advisory key held; 0 if empty.
  [[nodiscard]] std::int64_t key() const noexcept { return key_; }
  /// True while the handle pins a connection or holds a lock on a shared session.
  [[nodiscard]] explicit operator bool() const noexcept { return session_ != nullptr || shared_ != nullptr; }
  /// Server process id of the session holding the lock (pg_stat_activity.pid); 0 if empty.
  [[nodiscard]] int server_pid() const noexcept { return pid_; }

 private:
  friend class PostgresBackend;
  friend struct detail::PgHandleAccess;
  void orphan() noexcept;  // a shared-session lock given up without release
  detail::PgSessionPtr session_;
  std::shared_ptr<detail::PgSharedSession> shared_;
  std::int64_t key_ = 0;
  int pid_ = 0;
  std::uint8_t family_ = 0;  // detail::PgFamily: which unlock function frees key_
  bool leader_ = false;      // an election's: its session's application_name names it, so never pooled again
};

class PostgresBackend {
 public:
  using Handle = PgLockHandle;
  using Options = PostgresOptions;

  /// Validates the options (InvalidArgument naming the field). Does not connect.
  /// A PostgresBackend is a handle: copies share the pool, which closes when
  /// the last copy goes; each Lock keeps a copy, so the backend object may be
  /// destroyed before its locks and guards.
  explicit PostgresBackend(PostgresOptions options);

  [[nodiscard]] std::string_view kind() const noexcept { return "postgres"; }
  /// "host:port/database" from the conninfo (never the password).
  [[nodiscard]] std::string_view endpoint() const noexcept { return state_->endpoint; }
  [[nodiscard]] const PostgresOptions& options() const noexcept { return state_->options; }
  /// Equal for all copies of this handle.
  [[nodiscard]] const void* identity() const noexcept { return state_.get(); }

  /// The bigint advisory key dlock uses for `name`: SipHash-2-4 of
  /// lock_namespace, 0x00 and the name; for "pg_advisory:<int64>" the number.
  /// Throws InvalidArgument for a malformed "pg_advisory:" name.
  [[nodiscard]] std::int64_t advisory_key(std::string_view name) const;

  /// A lock on the explicit key `key` (not hashed, no namespace): it excludes
  /// and is excluded by pg_advisory_lock(key) in any other code. Its name is
  /// "pg_advisory:<key>".
  /// (A template only so that Lock<PostgresBackend> is named once this class is complete.)
  template <class B = PostgresBackend>
  [[nodiscard]] Lock<B> lock_for_key(std::int64_t key, LockOptions options = {}) {
    return Lock<B>(*this, detail::pg_explicit_key_name(key), std::move(options));
  }

  // ---- the Backend concept (see backend.hpp); called by Lock ----
  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& request);
  /// Waits in the server's queue (pg_advisory_lock under lock_timeout = max_wait):
  /// a release hands over at once. Contended when max_wait passes.
  [[nodiscard]] AcquireResult<Handle> acquire_wait(const AcquireRequest& request, std::chrono::milliseconds max_wait);
  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease);
  /// A round trip on the pinned session that also moves its idle timeout.
  /// Throws LockLostError when the session has ended (terminated, network
  /// failure, timeout): the server released the lock with it.
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started);

  // ---- AsyncBackend (backend.hpp, docs/async.md); called by Lock's async API ----
  // libpq in non-blocking mode: each round trip is written without waiting and
  // its answer awaited with async_wait on the connection's socket on `ex`,
  // bounded by a steady_timer at statement_timeout (on expiry the connection
  // is closed and the outcome is a TimeoutError, "outcome unknown"). Errors
  // and results are the blocking calls'. A full pool is waited for on a timer
  // (up to connect_timeout); with shared_sessions, an operation waits for its
  // session's turn on a timer too. A backend's first try also asks whether the
  // fencing sequence exists asynchronously (docs/postgres.md).
  void async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done);
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done);
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done);
  /// acquire_wait without blocking a thread (AsyncWaitsOnServer): the same
  /// statement, bounded the same way (lock_timeout = max_wait ends it as
  /// contention; statement_timeout + max_wait bounds the round trip), waiting
  /// in the server's queue, so fair mode's asynchronous acquire keeps arrival
  /// order. A `stop` request ends it at once: the connection is closed (the
  /// wait's session checks for its client every 100 ms,
  /// client_connection_check_interval, PostgreSQL 14+), so nothing stays
  /// queued or held on the server; it completes as contention.
  void async_acquire_wait(const AcquireRequest& request, std::chrono::milliseconds max_wait, std::stop_token stop,
                          const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);

  // ---- the primitives (primitives_backend.hpp); called by RwLock, Semaphore, Election ----
  // Each lease is an advisory lock in the two-int4 key space
  // (detail::pg_primitive_key: never the lock of a mutex or of another
  // primitive) on a pinned connection of its own, in the configured scope,
  // also when shared_sessions is set. release and extend behave as the
  // mutex's. docs/postgres.md "Read-write locks, semaphores and elections".

  /// pg_try_advisory_lock_shared. A writer waiting in the server's queue
  /// (acquire_wait_exclusive) makes it fail: PostgreSQL grants no new shared
  /// request that conflicts with a waiting one (writer preference). The token
  /// is the sequence's current value, not advanced (0 before any writer).
  [[nodiscard]] AcquireResult<Handle> try_acquire_shared(const AcquireRequest& request);
  /// pg_advisory_lock_shared under lock_timeout = max_wait, queued behind waiting writers.
  [[nodiscard]] AcquireResult<Handle> acquire_wait_shared(const AcquireRequest& request,
                                                          std::chrono::milliseconds max_wait);
  [[nodiscard]] ReleaseResult release_shared(std::string_view name, Lease<Handle>& lease) {
    return release(name, lease);
  }
  [[nodiscard]] std::optional<TimePoint> extend_shared(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend(name, lease, ttl, started);
  }
  /// pg_try_advisory_lock on the read-write key; a new fencing token.
  [[nodiscard]] AcquireResult<Handle> try_acquire_exclusive(const AcquireRequest& request);
  /// pg_advisory_lock under lock_timeout = max_wait: while it waits, new readers are refused.
  [[nodiscard]] AcquireResult<Handle> acquire_wait_exclusive(const AcquireRequest& request,
                                                             std::chrono::milliseconds max_wait);
  [[nodiscard]] ReleaseResult release_exclusive(std::string_view name, Lease<Handle>& lease) {
    return release(name, lease);
  }
  [[nodiscard]] std::optional<TimePoint> extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                          std::chrono::milliseconds ttl, TimePoint started) {
    return extend(name, lease, ttl, started);
  }

  // The read-write lock without blocking a thread (AsyncSharedLockBackend,
  // primitives_backend.hpp): the tries above on the mutex's asynchronous
  // session code (a pooled connection, pinned by a grant); release and extend
  // are the mutex's async_release / async_extend. The semaphore and the
  // election have them too (AsyncSemaphoreBackend, AsyncElectionBackend),
  // below their blocking forms.
  void async_try_acquire_shared(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<Handle> done) {
    async_try_read_write(request, true, ex, std::move(done));
  }
  void async_release_shared(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    async_release(name, lease, ex, std::move(done));
  }
  void async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    async_extend(name, lease, ttl, started, ex, std::move(done));
  }
  void async_try_acquire_exclusive(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                   AcquireCompletion<Handle> done) {
    async_try_read_write(request, false, ex, std::move(done));
  }
  void async_release_exclusive(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                               ReleaseCompletion done) {
    async_release(name, lease, ex, std::move(done));
  }
  void async_extend_exclusive(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                              TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    async_extend(name, lease, ttl, started, ex, std::move(done));
  }
  /// The read-write lock's server-side waits without blocking a thread
  /// (acquire_wait_shared / acquire_wait_exclusive as async_acquire_wait is
  /// acquire_wait's): a waiting asynchronous writer holds back new readers, as
  /// a blocking one does, and a stop request ends a wait at once.
  void async_acquire_wait_shared(const AcquireRequest& request, std::chrono::milliseconds max_wait,
                                 std::stop_token stop, const boost::asio::any_io_executor& ex,
                                 AcquireCompletion<Handle> done) {
    async_try_read_write(request, true, ex, std::move(done), max_wait, std::move(stop));
  }
  void async_acquire_wait_exclusive(const AcquireRequest& request, std::chrono::milliseconds max_wait,
                                    std::stop_token stop, const boost::asio::any_io_executor& ex,
                                    AcquireCompletion<Handle> done) {
    async_try_read_write(request, false, ex, std::move(done), max_wait, std::move(stop));
  }

  /// One statement, under the name's gate: if fewer than N of the name's
  /// permit slots are held (pg_locks), takes the first free slot of 0..N-1;
  /// N is the operators' count (set_permits) if the table exists and has one,
  /// else `permits`. A new fencing token per grant. Polls (no server-side wait).
  [[nodiscard]] AcquireResult<Handle> try_acquire_permit(const AcquireRequest& request, std::uint32_t permits);
  [[nodiscard]] ReleaseResult release_permit(std::string_view name, Lease<Handle>& lease) {
    return release(name, lease);
  }
  [[nodiscard]] std::optional<TimePoint> extend_permit(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend(name, lease, ttl, started);
  }
  /// try_acquire_permit without blocking a thread: the same statement on the
  /// mutex's asynchronous session code (the table's existence asked
  /// asynchronously once, as the fencing sequence's); release and extend are
  /// the mutex's async_release / async_extend.
  void async_try_acquire_permit(const AcquireRequest& request, std::uint32_t permits,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_permit(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    async_release(name, lease, ex, std::move(done));
  }
  void async_extend_permit(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    async_extend(name, lease, ttl, started, ex, std::move(done));
  }
  /// The count in force for `name`: the operators' row, else `permits`.
  [[nodiscard]] std::uint32_t permits(std::string_view name, std::uint32_t permits);
  /// Operator: upserts (or, with nullopt, deletes) the name's row in the
  /// semaphore_permits table that install_schema() creates; throws
  /// InvalidArgument if the table is missing or the count is 0 or above INT_MAX.
  void set_permits(std::string_view name, std::optional<std::uint32_t> permits);

  /// An exclusive lock on the election's key; on a grant the pinned session's
  /// application_name becomes "dlock:<term>:<candidate>" (cut to 63 bytes by
  /// the server), which leader() reads back from pg_stat_activity.
  [[nodiscard]] AcquireResult<Handle> try_acquire_leader(const AcquireRequest& request, std::string_view candidate);
  [[nodiscard]] AcquireResult<Handle> acquire_wait_leader(const AcquireRequest& request, std::string_view candidate,
                                                          std::chrono::milliseconds max_wait);
  /// try_acquire_leader without blocking a thread: the try, then (on a grant)
  /// the application_name, each an asynchronous round trip on the pinned
  /// connection; if naming fails the connection is closed (freeing the lock)
  /// and the error reported. Release and extend are the mutex's async forms.
  void async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_leader(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done) {
    async_release(name, lease, ex, std::move(done));
  }
  void async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    async_extend(name, lease, ttl, started, ex, std::move(done));
  }
  /// Releases and closes the leader's connection (its application_name names it).
  [[nodiscard]] ReleaseResult release_leader(std::string_view name, Lease<Handle>& lease) {
    return release(name, lease);
  }
  [[nodiscard]] std::optional<TimePoint> extend_leader(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started) {
    return extend(name, lease, ttl, started);
  }
  /// The session holding the election's key, from pg_locks and
  /// pg_stat_activity; nullopt if none. The candidate is cut to what fits in
  /// application_name; the term is absent when no fencing sequence was installed.
  [[nodiscard]] std::optional<LeaderInfo> leader(std::string_view name);

  /// The key of primitive `what` named `name` (a semaphore's: its base key,
  /// slot s is detail::pg_permit_slot_key(base, s)).
  [[nodiscard]] std::int64_t primitive_key(std::string_view name, detail::PgPrimitive what) const noexcept {
    return detail::pg_primitive_key(state_->options.lock_namespace, what, name);
  }

  // ---- administration ----

  /// Creates the fencing sequence (and its schema) if missing: CREATE SCHEMA IF
  /// NOT EXISTS, CREATE SEQUENCE IF NOT EXISTS ... CACHE 1, and the table of
  /// operators' semaphore counts, as in sql/dlock_postgres.sql. Needs CREATE privilege. Later acquires through
  /// this backend carry fencing tokens.
  void install_schema();
  /// Whether the fencing sequence exists (asks the server once, then cached;
  /// install_schema() sets it).
  [[nodiscard]] bool has_fencing();
  /// Appended to the errc::no_fencing_token error of a lock taken while the
  /// fencing sequence was missing: it names the sequence and says to run install_schema().
  [[nodiscard]] std::string_view no_fencing_hint() const noexcept { return state_->no_fencing_hint; }
  /// Advisory locks held and awaited in the connected database, holders
  /// first: the mutexes' bigint keys and the primitives' two-int4 keys
  /// (`primitive`); the query is in docs/postgres-monitoring.md.
  [[nodiscard]] std::vector<PgAdvisoryLockInfo> monitor();

  struct PoolStats {
    std::size_t open = 0;  ///< connections open (idle + pinned + in use)
    std::size_t idle = 0;  ///< connections waiting in the pool
  };
  [[nodiscard]] PoolStats pool_stats() const;

 private:
  // The read-write lock's try, or with a positive max_wait its server-side wait.
  void async_try_read_write(const AcquireRequest& request, bool shared, const boost::asio::any_io_executor& ex,
                            AcquireCompletion<Handle> done, std::chrono::milliseconds max_wait = {},
                            std::stop_token stop = {});

  struct State {  // shared by all copies
    PostgresOptions options;
    std::string endpoint;
    std::string no_fencing_hint;
    std::unique_ptr<detail::PgBackendState> pool;  // the connection pool and cached state
    ~State();
  };
  std::shared_ptr<State> state_;
};

static_assert(Backend<PostgresBackend>);
static_assert(WaitsOnServer<PostgresBackend>);
static_assert(AsyncBackend<PostgresBackend>);
static_assert(AsyncWaitsOnServer<PostgresBackend>);
static_assert(AsyncWaitsOnServer<detail::SharedView<PostgresBackend>>);
static_assert(AsyncWaitsOnServer<detail::ExclusiveView<PostgresBackend>>);
static_assert(SharedLockBackend<PostgresBackend>);
static_assert(AsyncSharedLockBackend<PostgresBackend>);
static_assert(AsyncSemaphoreBackend<PostgresBackend>);
static_assert(AsyncElectionBackend<PostgresBackend>);
static_assert(SemaphoreBackend<PostgresBackend>);
static_assert(ElectionBackend<PostgresBackend>);

// ---- transaction scope on your own connection ----

/// pg_try_advisory_xact_lock(key) on `conn`, which must be inside a
/// transaction you opened (BEGIN); the lock is released by your COMMIT or
/// ROLLBACK. Returns false on contention. A blocking libpq call on your
/// connection, bounded by your connection's own settings. Throws
/// InvalidArgument if `conn` is not inside a transaction block (the lock would
/// be released at once), ConnectionError if the connection failed, ServerError
/// if the server refused.
[[nodiscard]] bool pg_try_xact_lock(PGconn* conn, std::int64_t key);

/// Waits up to `max_wait` in the server's queue for the transaction-scoped
/// lock on `key` inside your open transaction on `conn`. Returns false when
/// max_wait passed; your transaction stays usable (the wait runs under a
/// savepoint, and lock_timeout is restored). Throws DeadlockError when the
/// server detects a deadlock (your transaction also stays usable, but you
/// should roll back and retry), ServerError / ConnectionError otherwise.
[[nodiscard]] bool pg_xact_lock(PGconn* conn, std::int64_t key, std::chrono::milliseconds max_wait);

}  // namespace dlock
