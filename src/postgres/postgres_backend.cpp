// PostgresBackend: advisory locks over libpq. See include/dlock/postgres.hpp
// and docs/postgres.md for the behaviour; this file is the statements and the
// bookkeeping of pinned connections.
#include <dlock/postgres.hpp>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <unordered_set>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include <dlock/detail/time.hpp>

#include "pg_session.hpp"

namespace dlock {

namespace detail {

namespace {

using std::chrono::milliseconds;

bool is_identifier(std::string_view s) {
  if (s.empty() || s.size() > 63 || (s.front() >= '0' && s.front() <= '9')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

std::string value_of(PQconninfoOption* opts, std::string_view key) {
  for (PQconninfoOption* o = opts; o && o->keyword; ++o)
    if (key == o->keyword && o->val && *o->val) return o->val;
  return {};
}

// Rejects the URIs libpq would read differently from what their author meant,
// quoting nothing of them. libpq ends a URI's user info at the first '@' that
// comes before the first '/': an unencoded '@' in a password makes the rest of
// the password the host name, an unencoded '/' makes it the database name; the
// connection would then try a host made of password characters (a DNS look-up
// of them) and every message would name it. So, as a fuzzer showed that an
// '@' in the query string is no safer ("app:12@/x?host=y@db" reads as user
// "app", password "12", database "x"; "app:12/x?host=y@db" as host "app",
// port 12, database "x"): after the '@' that ends the user info, no other '@'
// at all; without user info, no '@' after the first '/' if a ':' precedes
// that '@' (it may end user:password with a '/' in the user name or password),
// nor before the query string. An e-mail-like value in the query is then
// written %40 unless no ':' (user info, port, IPv6 address) comes before it. The port must be numeric (a password
// with "/...?key=...@" would otherwise still be read as host:port/db).
void check_conninfo(PQconninfoOption* parsed, std::string_view conninfo) {
  const auto fix = [](std::string_view why) {
    invalid_field("PostgresOptions.conninfo",
                  fmt::format("{}; percent-encode the user name, password and database name (%40 for '@', %2F for "
                              "'/', %3F for '?'), or use the keyword/value form or a passfile",
                              why),
                  "a connection string that is not shown here: it may contain a password");
  };
  for (const std::string_view scheme : {"postgresql://", "postgres://"}) {
    if (conninfo.substr(0, scheme.size()) != scheme) continue;
    const std::string_view rest = conninfo.substr(scheme.size());
    const auto slash = rest.find('/');
    const auto at = rest.find('@');
    if (at == std::string_view::npos) continue;
    if (at < slash) {  // libpq's user info ends at this '@'
      if (rest.find('@', at + 1) != std::string_view::npos)
        fix("a URI must have no '@' after the one that ends its user info, in its query string neither (an "
            "unencoded '@' or '/' in the password?)");
    } else if (rest.substr(0, at).find(':') != std::string_view::npos) {
      fix("a URI must have no '@' after its first '/' that follows a ':' (an unencoded '/' in the user name or "
          "password?)");
    } else if (rest.substr(0, rest.find('?')).find('@') != std::string_view::npos) {
      fix("a URI must have no '@' before its query string but the one that ends its user info");
    }
  }
  const std::string port = value_of(parsed, "port");
  if (port.find_first_not_of("0123456789, \t") != std::string::npos) fix("the port must be a number");
}

// "host:port/database" from the conninfo (checked by check_conninfo), filled
// in with libpq's defaults (environment, then built-ins). Never includes the password.
std::string make_endpoint(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &err);
  PQfreemem(err);
  PQconninfoOption* defaults = PQconndefaults();
  auto pick = [&](std::string_view key) {
    std::string v = value_of(parsed, key);
    return v.empty() ? value_of(defaults, key) : v;
  };
  std::string host = pick("hostaddr");
  if (host.empty()) host = pick("host");
  if (host.empty()) host = "localhost";
  std::string port = pick("port");
  if (port.empty()) port = "5432";
  std::string db = pick("dbname");
  if (db.empty()) db = pick("user");
  if (parsed) PQconninfoFree(parsed);
  if (defaults) PQconninfoFree(defaults);
  return fmt::format("{}:{}/{}", host, port, db);
}

}  // namespace

PgTtlSettings pg_ttl_settings(std::chrono::milliseconds ttl) noexcept {
  const milliseconds t = std::max(ttl, milliseconds(1));
  PgTtlSettings s;
  s.idle_timeout_ms = t.count() > INT_MAX ? 0 : t.count();
  s.keepalives_idle_s = pg_keepalive_seconds(t / 2);
  s.keepalives_interval_s = pg_keepalive_seconds(t / 6);
  s.user_timeout_ms = pg_int_ms(t);
  return s;
}

void validate_fields(const PostgresOptions& o) {
  if (o.pool_size == 0) invalid_field("PostgresOptions.pool_size", "must be at least 1", "0");
  if (o.shared_sessions > 0 && o.scope != PostgresOptions::Scope::session)
    invalid_field("PostgresOptions.shared_sessions",
                  "must be 0 in transaction scope (each lock is its own transaction)",
                  std::to_string(o.shared_sessions));
  if (o.shared_sessions >= o.pool_size)
    invalid_field("PostgresOptions.shared_sessions",
                  fmt::format("must be below pool_size ({}): waits and administration need a connection of their own",
                              o.pool_size),
                  std::to_string(o.shared_sessions));
  if (o.connect_timeout <= milliseconds::zero())
    invalid_field("PostgresOptions.connect_timeout", "must be positive", format_duration(o.connect_timeout));
  if (o.statement_timeout <= milliseconds::zero())
    invalid_field("PostgresOptions.statement_timeout", "must be positive", format_duration(o.statement_timeout));
  if (o.lock_namespace.find('\0') != std::string::npos)
    invalid_field("PostgresOptions.lock_namespace", "must not contain a NUL byte (it separates namespace and name)",
                  fmt::format("{} bytes with a NUL", o.lock_namespace.size()));
  if (o.application_name.size() > 63 || o.application_name.find('\0') != std::string::npos)
    invalid_field("PostgresOptions.application_name", "must be at most 63 bytes without NUL",
                  fmt::format("\"{}\"", o.application_name));
  const auto dot = o.fencing_sequence.find('.');
  const bool ok = dot == std::string::npos ? is_identifier(o.fencing_sequence)
                                           : is_identifier(std::string_view(o.fencing_sequence).substr(0, dot)) &&
                                                 is_identifier(std::string_view(o.fencing_sequence).substr(dot + 1));
  if (!ok)
    invalid_field("PostgresOptions.fencing_sequence",
                  "must be \"schema.name\" or \"name\", each of lower-case letters, digits and '_', not starting "
                  "with a digit",
                  fmt::format("\"{}\"", o.fencing_sequence));
}

// The table of operators' semaphore counts, next to the fencing sequence:
// "<schema>.semaphore_permits", or "dlock_semaphore_permits" for a sequence
// without a schema.
std::string pg_permits_table(std::string_view sequence) {
  const auto dot = sequence.find('.');
  return dot == std::string_view::npos ? std::string("dlock_semaphore_permits")
                                       : fmt::format("{}.semaphore_permits", sequence.substr(0, dot));
}

std::vector<std::string> pg_schema_sql(std::string_view sequence) {
  std::vector<std::string> out;
  if (const auto dot = sequence.find('.'); dot != std::string_view::npos)
    out.push_back(fmt::format("CREATE SCHEMA IF NOT EXISTS {};", sequence.substr(0, dot)));
  out.push_back(
      fmt::format("CREATE SEQUENCE IF NOT EXISTS {} AS bigint MINVALUE 1 START WITH 1 CACHE 1 NO CYCLE;", sequence));
  out.push_back(fmt::format(
      "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, name text NOT NULL, permits integer NOT NULL CHECK "
      "(permits > 0), PRIMARY KEY (namespace, name));",
      pg_permits_table(sequence)));
  return out;
}

// The permit slots a semaphore's grant counts as held (its slot range in pg_locks).
inline constexpr std::int64_t pg_max_permit_slots = 65536;

// Which advisory lock functions a statement calls: the mutexes' bigint keys,
// or a primitive's key in the two-int4 space (pg_key.hpp), exclusive or shared.
enum class PgFamily { mutex = 0, exclusive = 1, shared = 2 };
inline constexpr int pg_families = 3;

// The statements, built once per backend. Parameters of the acquires: $1 key
// (int8), $2..$5 the settings derived from the ttl (PgTtlSettings, int8), then
// the wait in ms (int8) for waits, then the fencing sequence (text) when
// fencing. extend takes the four settings as $1..$4. A permit's try takes $1
// the semaphore's base key, $2..$5 the settings, $6 the caller's count, $7
// the namespace, $8 the name, $9 the fencing sequence when fencing.
class PgStatements {
 public:
  static constexpr int ttl_params = 4;

  explicit PgStatements(std::string_view sequence) {
    unsigned id = 0;
    for (int fam = 0; fam < pg_families; ++fam) {
      const auto family = static_cast<PgFamily>(fam);
      for (int modern = 0; modern < 2; ++modern) {
        for (int xact = 0; xact < 2; ++xact) {
          Set& s = sets_[fam][modern][xact];
          for (int fence = 0; fence < 2; ++fence) {
            for (int ka = 0; ka < 2; ++ka) {
              const int n = 1 + ttl_params;
              s.try_[fence][ka] =
                  make(id, acquire_sql(family, modern, xact, fence, ka, false), n + fence, fence ? n + 1 : 0);
              s.wait[fence][ka] =
                  make(id, acquire_sql(family, modern, xact, fence, ka, true), n + 1 + fence, fence ? n + 2 : 0);
              for (int table = 0; table < 2; ++table) {
                if (family != PgFamily::exclusive) continue;
                PgStatement& p = permit_[modern][xact][fence][ka][table];
                p = make(id, permit_sql(modern, xact, fence, ka, table, pg_permits_table(sequence)), n + 1, 0);
                p.types.insert(p.types.end(), {25u, 25u});
                if (fence) p.types.push_back(25u);
              }
            }
          }
          s.extend = make(id, fmt::format("SELECT {}", settings(modern, xact, true, 1)), ttl_params, 0);
          const std::string unlock = fmt::format("pg_catalog.{}({})", unlock_fn(family), key_args(family));
          s.unlock =
              make(id,
                   modern ? fmt::format("SELECT {}, pg_catalog.set_config('idle_session_timeout', '0', false)", unlock)
                          : fmt::format("SELECT {}", unlock),
                   1, 0);
        }
      }
    }
    // Runs before a wait, in the same pipeline: the wait's own statement_timeout
    // is the client's bound on it, whatever the server, role or database default.
    statement_timeout_ = make(id, "SELECT pg_catalog.set_config('statement_timeout', $1::text, true)", 1, 0);
    // The asynchronous wait's (PostgreSQL 14+): also client_connection_check_interval
    // ($2 ms), so that a wait whose connection the client closed (a stop
    // request) leaves the server's queue within that interval.
    async_wait_bounds_ = make(id,
                              "SELECT pg_catalog.set_config('statement_timeout', $1::text, true), "
                              "pg_catalog.set_config('client_connection_check_interval', $2::text, true)",
                              2, 0);
    begin_ = make(id, "BEGIN", 0, 0);
    // Shared sessions: the unlock leaves the session's idle timeout alone (other
    // leases rely on it), and a wait queues for the lock on a connection of its
    // own and gives it back at once ($2: lock_timeout in ms).
    shared_unlock_ = make(id, "SELECT pg_catalog.pg_advisory_unlock($1)", 1, 0);
    wait_free_ = make(id,
                      "SELECT pg_catalog.pg_advisory_unlock($1) FROM (SELECT pg_catalog.pg_advisory_lock($1) FROM "
                      "(SELECT pg_catalog.set_config('lock_timeout', $2::text, true) OFFSET 0) t OFFSET 0) a",
                      2, 0);
    // An election's leader shows "dlock:<term>:<candidate>" as its session's application_name.
    leader_name_ = make(id, "SELECT pg_catalog.set_config('application_name', $1, false)", 1, 1);
  }
  struct Set {
    PgStatement try_[2][2], wait[2][2];  // [fencing][with keepalive settings]
    PgStatement extend, unlock;
  };
  [[nodiscard]] const Set& get(const PgSession& s, bool xact, PgFamily family = PgFamily::mutex) const {
    return sets_[static_cast<int>(family)][s.server_version() >= 140000 ? 1 : 0][xact ? 1 : 0];
  }
  /// A permit's try: [fencing][with keepalive settings][the operators' table exists].
  [[nodiscard]] const PgStatement& permit(const PgSession& s, bool xact, bool fence, bool keepalives,
                                          bool table) const {
    return permit_[s.server_version() >= 140000 ? 1 : 0][xact ? 1 : 0][fence][keepalives][table];
  }
  /// set_config('statement_timeout', $1 ms, true): local to the transaction.
  [[nodiscard]] const PgStatement& statement_timeout() const noexcept { return statement_timeout_; }
  /// statement_timeout() plus client_connection_check_interval ($2) where the server has it.
  [[nodiscard]] const PgStatement& async_wait_bounds(const PgSession& s) const noexcept {
    return s.server_version() >= 140000 ? async_wait_bounds_ : statement_timeout_;
  }
  [[nodiscard]] const PgStatement& begin() const noexcept { return begin_; }
  [[nodiscard]] const PgStatement& shared_unlock() const noexcept { return shared_unlock_; }
  [[nodiscard]] const PgStatement& wait_free() const noexcept { return wait_free_; }
  [[nodiscard]] const PgStatement& leader_name() const noexcept { return leader_name_; }

 private:
  // The arguments of the advisory lock functions for the key in $1.
  static std::string key_args(PgFamily family) {
    return family == PgFamily::mutex ? "$1" : "($1 >> 32)::int4, (($1 << 32) >> 32)::int4";
  }
  static std::string unlock_fn(PgFamily family) {
    return family == PgFamily::shared ? "pg_advisory_unlock_shared" : "pg_advisory_unlock";
  }
  // set_config of the server-side timeouts that free a silent client's lock
  // after about the ttl, from the PgTtlSettings in $first..$first+3.
  // The TCP keepalive settings persist on the connection and cost a few
  // setsockopt calls, so they are sent only when the connection does not
  // already carry them for this ttl (`keepalives`); the idle timeout always is.
  static std::string settings(bool modern, bool xact, bool keepalives, int first) {
    std::string idle;
    if (xact) {
      idle = fmt::format("pg_catalog.set_config('idle_in_transaction_session_timeout', ${}::text, true)", first);
    } else if (modern) {
      idle = fmt::format("pg_catalog.set_config('idle_session_timeout', ${}::text, false)", first);
    } else {
      idle = "''";
    }
    if (!keepalives) return idle;
    return fmt::format(
        "concat({0}, pg_catalog.set_config('tcp_keepalives_idle', ${1}::text, false), "
        "pg_catalog.set_config('tcp_keepalives_interval', ${2}::text, false), "
        "pg_catalog.set_config('tcp_keepalives_count', '3', false), "
        "pg_catalog.set_config('tcp_user_timeout', ${3}::text, false))",
        idle, first + 1, first + 2, first + 3);
  }
  static std::string lock_fn(PgFamily family, bool xact, bool wait) {
    return fmt::format("{}{}{}", wait ? "pg_advisory_" : "pg_try_advisory_", xact ? "xact_lock" : "lock",
                       family == PgFamily::shared ? "_shared" : "");
  }
  // The token is taken only when the lock is held: CASE evaluates nextval only
  // after pg_try_advisory_lock returned true, and in the waiting form the
  // subquery that takes the lock is scanned before the outer target list.
  static std::string acquire_sql(PgFamily family, bool modern, bool xact, bool fence, bool keepalives, bool wait) {
    const std::string fn = lock_fn(family, xact, wait);
    const int next = 2 + ttl_params;  // the first parameter after the ttl settings
    // A reader's token is the sequence's current value (0 before its first
    // nextval), read once the shared lock is held.
    const auto token = [&](int param) {
      return family == PgFamily::shared
                 ? fmt::format("coalesce(pg_catalog.pg_sequence_last_value(${}::regclass), 0)", param)
                 : fmt::format("pg_catalog.nextval(${}::regclass)", param);
    };
    if (!wait)
      return fmt::format(
          "SELECT a.l, CASE WHEN a.l THEN {1} END, {2} FROM (SELECT pg_catalog.{0}({3}) AS l OFFSET 0) a", fn,
          settings(modern, xact, keepalives, 2),
          fence ? fmt::format("CASE WHEN a.l THEN {} END", token(next)) : std::string("NULL"), key_args(family));
    return fmt::format(
        "SELECT true, {1}, {2} FROM (SELECT pg_catalog.{0}({4}) FROM (SELECT "
        "pg_catalog.set_config('lock_timeout', ${3}::text, true) OFFSET 0) t OFFSET 0) a",
        fn, settings(modern, xact, keepalives, 2), fence ? token(next + 1) : std::string("NULL"), next,
        key_args(family));
  }
  // Under the semaphore's gate (slot -1, a session lock taken and released in
  // this statement, so acquires of one name count and take one at a time):
  // counts the slots held (pg_locks: the name's slot range, any session), and
  // if fewer than N, tries the slots 0..N-1 in turn and stops at the first it
  // takes (LIMIT 1 over a filter on a function scan: the filter runs row by
  // row, so at most one slot is taken); the fourth column is that slot. Slots
  // at or above N are held only after the count was lowered, and count too,
  // so lowering it revokes nothing and grants nothing until fewer than N are
  // held. N is the operators' count for the name if the table has one, else
  // the caller's ($6). Each level is a fenced subquery (OFFSET 0), evaluated
  // before the one around it.
  static std::string permit_sql(bool modern, bool xact, bool fence, bool keepalives, bool table,
                                const std::string& permits_table) {
    const std::string n =
        table ? fmt::format("coalesce((SELECT p.permits::int8 FROM {} p WHERE p.namespace = $7 AND p.name = $8), $6)",
                            permits_table)
              : std::string("$6");  // $7 and $8 unused (typed, so allowed)
    const auto slot = [](std::string_view offset) {
      return fmt::format("($1 >> 32)::int4, ((((($1 << 32) >> 32) + {}) << 32) >> 32)::int4", offset);
    };
    return fmt::format(
        "SELECT a.i IS NOT NULL, CASE WHEN a.i IS NOT NULL THEN {1} END, {2}, a.i, a.u FROM ("
        "SELECT c.i, pg_catalog.pg_advisory_unlock({5}) AS u FROM ("
        "SELECT (SELECT g.s FROM pg_catalog.generate_series(0, q.n - 1) AS g(s) "
        "WHERE q.held < q.n AND pg_catalog.{0}({4}) LIMIT 1) AS i FROM ("
        "SELECT r.n, (SELECT count(*) FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.objsubid = 2 "
        "AND l.granted AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = "
        "pg_catalog.current_database()) AND l.classid::int8 = (($1 >> 32) & 4294967295) AND "
        "((l.objid::int8 - ($1 & 4294967295) + 4294967296) % 4294967296) < {6} AND r.n > 0) AS held FROM ("
        "SELECT {3} AS n, pg_catalog.pg_advisory_lock({5}) AS x OFFSET 0) r OFFSET 0) q OFFSET 0) c OFFSET 0) a",
        lock_fn(PgFamily::exclusive, xact, false), settings(modern, xact, keepalives, 2),
        fence ? std::string("CASE WHEN a.i IS NOT NULL THEN pg_catalog.nextval($9::regclass) END")
              : std::string("NULL"),
        n, slot("g.s"), slot("-1"), pg_max_permit_slots);
  }
  static PgStatement make(unsigned& id, std::string sql, int nparams, int text_param) {
    PgStatement s{id, fmt::format("dlock_{}", id), std::move(sql), {}};
    ++id;
    for (int i = 1; i <= nparams; ++i) s.types.push_back(i == text_param ? 25u : 20u);
    return s;
  }
  Set sets_[pg_families][2][2];
  PgStatement permit_[2][2][2][2][2];
  PgStatement statement_timeout_, async_wait_bounds_, begin_, shared_unlock_, wait_free_, leader_name_;
};

// The parameters that carry PgTtlSettings.
void push_ttl_params(std::vector<PgParam>& params, std::chrono::milliseconds ttl) {
  const PgTtlSettings t = pg_ttl_settings(ttl);
  for (const std::int64_t v : {t.idle_timeout_ms, t.keepalives_idle_s, t.keepalives_interval_s, t.user_timeout_ms})
    params.push_back(PgParam::int8(v));
}

}  // namespace detail

// PostgresBackend's private state: the pool plus what the operations need.
namespace detail {

/// The turn to use a shared session: a Lockable that any thread may unlock
/// (a flag under a mutex), so an asynchronous round trip can hold it until
/// its completion runs, on whatever thread that is. Asynchronous callers
/// only try_lock() it (and try again on a timer), never block on it.
class PgTurn {
 public:
  void lock() {
    std::unique_lock lk(m_);
    free_.wait(lk, [&] { return !held_; });
    held_ = true;
  }
  [[nodiscard]] bool try_lock() {
    std::lock_guard lk(m_);
    return !std::exchange(held_, true);
  }
  void unlock() noexcept {
    {
      std::lock_guard lk(m_);
      held_ = false;
    }
    free_.notify_one();
  }

 private:
  std::mutex m_;
  std::condition_variable free_;
  bool held_ = false;
};

/// One server session shared by the leases of a backend (shared_sessions).
/// The turn `mu` serialises the round trips on it and guards the rest but
/// `orphans`. Once the session ends (`session` null), every lease on it is
/// lost: a replacement is a new object, so a lease never mistakes another
/// session's locks for its own.
struct PgSharedSession {
  PgTurn mu;
  PgSessionPtr session;
  /// Keys this session holds for leases. Advisory locks are re-entrant per
  /// session, so a key in here is contention for another Lock of this process,
  /// decided without asking the server.
  std::unordered_set<std::int64_t> keys;
  /// Held keys whose handle was destroyed unreleased: unlocked before the next
  /// acquire. Guarded by orphans_mu alone (a destructor adds to it without
  /// waiting for the turn, which a round trip in flight may hold).
  std::vector<std::int64_t> orphans;
  std::mutex orphans_mu;
  std::int64_t ttl_ms = 0;  ///< the largest ttl the session's idle timeout was set for
  SteadyTime proven{};      ///< when the last successful round trip was sent
  std::string lost_why;     ///< why the session ended (for LockLostError)
};

/// A slot: the shared session that acquires of the keys mapped to it use now.
struct PgSharedSlot {
  std::mutex mu;  // taken before the session's mu
  std::shared_ptr<PgSharedSession> current;
};

class PgBackendState : public PgPool {
 public:
  PgBackendState(const PostgresOptions& options, std::string endpoint)
      : PgPool(options, std::move(endpoint)), statements(options.fencing_sequence), shared(options.shared_sessions) {}
  PgStatements statements;
  std::atomic<int> fencing{-1};        // -1 unknown, 0 no sequence, 1 sequence present
  std::atomic<int> permits_table{-1};  // the same for the operators' semaphore counts
  std::vector<PgSharedSlot> shared;    // empty unless shared_sessions
};

struct PgHandleAccess {
  static void fill(PgLockHandle& h, std::shared_ptr<PgSharedSession> sh, std::int64_t key, int pid) {
    h.shared_ = std::move(sh);
    h.key_ = key;
    h.pid_ = pid;
  }
  static PgSharedSession& shared(const PgLockHandle& h) { return *h.shared_; }
  static void pin(PgLockHandle& h, PgSessionPtr s, std::int64_t key, PgFamily family) {
    h.pid_ = s->pid();
    h.key_ = key;
    h.family_ = static_cast<std::uint8_t>(family);
    h.session_ = std::move(s);
  }
  static PgSession& mark_leader(PgLockHandle& h) {
    h.leader_ = true;
    return *h.session_;
  }
};

namespace {
// Ends a shared session (closing the connection frees its locks on the
// server): every lease on it is lost. Called with s.mu held.
void lose(PgSharedSession& s, std::string why) noexcept {
  s.session.reset();
  s.keys.clear();
  {
    std::lock_guard lk(s.orphans_mu);
    s.orphans.clear();
  }
  try {
    s.lost_why = std::move(why);
  } catch (...) {  // out of memory: lost, with less detail
  }
}
}  // namespace

}  // namespace detail

namespace {

using detail::PgOutcome;
using detail::PgParam;
using detail::PgSessionPtr;
using detail::SteadyTime;

detail::PgBackendState& state(const std::unique_ptr<detail::PgBackendState>& p) { return *p; }

SteadyTime after(std::chrono::milliseconds d) { return detail::saturating_add(std::chrono::steady_clock::now(), d); }

bool text_is_true(const PGresult* r, int row, int col) {
  return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

}  // namespace

PostgresBackend::PostgresBackend(PostgresOptions options) : state_(std::make_shared<State>()) {
  state_->options = std::move(options);
  const PostgresOptions& o = state_->options;
  detail::validate_fields(o);
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(o.conninfo.c_str(), &err);
  if (!parsed) {
    const std::string why = err ? detail::pg_redact_conninfo_error(err) : "out of memory";
    PQfreemem(err);
    detail::invalid_field("PostgresOptions.conninfo", "must be a libpq connection string or URI",
                          fmt::format("{} bytes that libpq rejects: {}", o.conninfo.size(), why));
  }
  std::unique_ptr<PQconninfoOption, void (*)(PQconninfoOption*)> free_parsed(parsed, PQconninfoFree);
  detail::check_conninfo(parsed, o.conninfo);
  state_->endpoint = detail::make_endpoint(o.conninfo);
  state_->no_fencing_hint = fmt::format(
      ": the fencing sequence {} did not exist in {} when it was taken; run PostgresBackend::install_schema() "
      "once (or sql/dlock_postgres.sql in a migration), and locks taken after it carry tokens",
      o.fencing_sequence, state_->endpoint);
  state_->pool = std::make_unique<detail::PgBackendState>(state_->options, state_->endpoint);
}

PostgresBackend::State::~State() = default;

PgLockHandle::PgLockHandle(PgLockHandle&& other) noexcept
    : session_(std::move(other.session_)),
      shared_(std::move(other.shared_)),
      key_(std::exchange(other.key_, 0)),
      pid_(std::exchange(other.pid_, 0)),
      family_(std::exchange(other.family_, 0)),
      leader_(std::exchange(other.leader_, false)) {}

PgLockHandle& PgLockHandle::operator=(PgLockHandle&& other) noexcept {
  if (this != &other) {
    orphan();
    session_ = std::move(other.session_);
    shared_ = std::move(other.shared_);
    key_ = std::exchange(other.key_, 0);
    pid_ = std::exchange(other.pid_, 0);
    family_ = std::exchange(other.family_, 0);
    leader_ = std::exchange(other.leader_, false);
  }
  return *this;
}

PgLockHandle::~PgLockHandle() { orphan(); }

void PgLockHandle::orphan() noexcept {
  if (!shared_) return;
  std::shared_ptr<detail::PgSharedSession> sh = std::move(shared_);
  std::lock_guard lk(sh->orphans_mu);  // the turn holder unlocks it if its session still holds it
  try {
    sh->orphans.push_back(key_);
  } catch (...) {  // out of memory: the key stays held (and excluded) until the session ends
  }
}

std::int64_t PostgresBackend::advisory_key(std::string_view name) const {
  bool malformed = false;
  if (auto key = detail::pg_parse_explicit_key(name, malformed)) return *key;
  if (malformed)
    detail::invalid_field("lock name",
                          fmt::format("starting with \"{}\" must continue with a canonical decimal int64",
                                      detail::pg_explicit_key_prefix),
                          fmt::format("\"{}\"", name));
  return detail::pg_hash_key(state_->options.lock_namespace, name);
}

namespace {
// Whether relation $1 of kind $2 exists.
const detail::PgStatement& exists_probe() {
  static const detail::PgStatement probe{0,
                                         "",
                                         "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = "
                                         "pg_catalog.to_regclass($1) AND relkind = $2::\"char\")",
                                         {25, 25}};
  return probe;
}

// Whether relation `rel` of kind `relkind` exists: asked once, then cached in `known`.
bool cached_exists(detail::PgPool& pool, const PostgresOptions& o, std::string_view endpoint, std::atomic<int>& known,
                   const std::string& rel, char relkind, std::string_view what) {
  const int k = known.load(std::memory_order_acquire);
  if (k >= 0) return k == 1;
  PgSessionPtr s = pool.checkout();
  PgOutcome out = s->run(exists_probe(), {PgParam::text(rel), PgParam::text(std::string(1, relkind))}, false,
                         after(o.statement_timeout));
  if (!out.ok()) detail::throw_outcome(out, endpoint, fmt::format("looking up {}", what), o.statement_timeout);
  const bool present = text_is_true(out.result.get(), 0, 0);
  pool.checkin(std::move(s));
  int expected = -1;
  known.compare_exchange_strong(expected, present ? 1 : 0, std::memory_order_acq_rel);
  return present;
}
}  // namespace

bool PostgresBackend::has_fencing() {
  return cached_exists(*state_->pool, state_->options, state_->endpoint, state(state_->pool).fencing,
                       state_->options.fencing_sequence, 'S', "the fencing sequence");
}

void PostgresBackend::install_schema() {
  PgSessionPtr s = state_->pool->checkout();
  for (const std::string& sql : detail::pg_schema_sql(state_->options.fencing_sequence)) {
    PgOutcome o = s->command(sql.c_str(), after(state_->options.statement_timeout));
    if (!o.ok()) detail::throw_outcome(o, state_->endpoint, "install_schema", state_->options.statement_timeout);
  }
  state_->pool->checkin(std::move(s));
  state(state_->pool).fencing.store(1, std::memory_order_release);
  state(state_->pool).permits_table.store(1, std::memory_order_release);
}

namespace {

// A semaphore's try (acquire() with `permit`): the caller's count, and
// whether the operators' table exists.
struct PgPermitSpec {
  std::uint32_t permits = 1;
  bool table = false;
};

// The client's bound on a wait of `wait_ms` (statement_timeout + the wait, in
// ms): set as the wait's own statement_timeout, so that a shorter server,
// role or database default cannot cancel it.
std::int64_t wait_bound_ms(const PostgresOptions& o, std::int64_t wait_ms) {
  return std::min<std::int64_t>(INT_MAX, detail::pg_int_ms(o.statement_timeout) + wait_ms);
}

// The shared body of try_acquire and acquire_wait and of the primitives'
// acquires on a pinned session. `wait` is null for a try. `key` is the lock's
// key (a semaphore's base key with `permit`; on a grant, the slot's key).
AcquireResult<PgLockHandle> acquire(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                    const std::chrono::milliseconds* wait, PgSessionPtr& out_session, std::int64_t& key,
                                    bool fence, detail::PgFamily family = detail::PgFamily::mutex,
                                    const PgPermitSpec* permit = nullptr) {
  const PostgresOptions& o = self.options();
  const bool xact = o.scope == PostgresOptions::Scope::transaction;
  const auto what = [&] { return fmt::format("acquire of lock '{}' (key {})", r.name, key); };
  // lock_timeout is an int of milliseconds: a longer wait ends earlier, as contention.
  const std::int64_t wait_ms = wait ? detail::pg_int_ms(*wait) : 0;
  const SteadyTime deadline = detail::saturating_add(after(o.statement_timeout), std::chrono::milliseconds(wait_ms));
  PgSessionPtr s = st.checkout();
  const auto& set = st.statements.get(*s, xact, family);
  std::vector<PgParam> params{PgParam::int8(key)};
  detail::push_ttl_params(params, r.ttl);
  if (wait) params.push_back(PgParam::int8(wait_ms));
  if (permit) {
    params.push_back(PgParam::int8(permit->permits));
    params.push_back(PgParam::text(o.lock_namespace));
    params.push_back(PgParam::text(std::string(r.name)));
  }
  if (fence) params.push_back(PgParam::text(o.fencing_sequence));
  const std::int64_t ttl_ms = r.ttl.count();
  const bool keepalives = s->keepalive_ttl_ms != ttl_ms;
  const detail::PgStatement& stmt = permit ? st.statements.permit(*s, xact, fence, keepalives, permit->table)
                                    : wait ? set.wait[fence][keepalives]
                                           : set.try_[fence][keepalives];
  // One round trip in every case. A wait first sets its own statement_timeout
  // (the client's bound: statement_timeout + the wait), so that a shorter
  // server, role or database default cannot cancel it.
  const std::vector<PgParam> no_params, bound{PgParam::int8(wait_bound_ms(o, wait_ms))};
  const detail::PgCall begin{st.statements.begin(), no_params}, timeout{st.statements.statement_timeout(), bound},
      call{stmt, params};
  PgOutcome out = xact   ? (wait ? s->run_pipelined({begin, timeout, call}, false, deadline)
                                 : s->run_pipelined({begin, call}, false, deadline))
                  : wait ? s->run_pipelined({timeout, call}, true, deadline)
                         : s->run(stmt, params, true, deadline);
  if (!out.ok()) {
    const std::string_view code = out.sqlstate();
    const bool not_taken = out.fail == PgOutcome::Fail::none && (code == "55P03" || code == "40P01");
    if (not_taken && PQstatus(s->conn()) == CONNECTION_OK) {
      if (xact) (void)s->command("ROLLBACK", after(o.statement_timeout));
      st.checkin(std::move(s));  // lock_timeout or deadlock: the connection is fine
      if (code == "55P03") return Contended{};
    }
    // Any other failure may have left a session lock taken (e.g. nextval failed
    // after the lock was granted): the session is closed with `s`, which frees it.
    detail::throw_outcome(out, self.endpoint(), what(), o.statement_timeout);
  }
  const PGresult* res = out.result.get();
  if (!text_is_true(res, 0, 0)) {
    if (xact) {
      PgOutcome rb = s->command("ROLLBACK", after(o.statement_timeout));
      if (!rb.ok()) detail::throw_outcome(rb, self.endpoint(), what(), o.statement_timeout);
    }
    st.checkin(std::move(s));
    return Contended{};
  }
  if (keepalives) s->keepalive_ttl_ms = ttl_ms;
  Grant<PgLockHandle> g;
  if (fence && !PQgetisnull(res, 0, 2)) g.token = std::strtoull(PQgetvalue(res, 0, 2), nullptr, 10);
  if (permit)
    key = detail::pg_permit_slot_key(key, static_cast<std::uint32_t>(std::strtoul(PQgetvalue(res, 0, 3), nullptr, 10)));
  g.valid_until = detail::saturating_add(r.started, r.ttl);
  out_session = std::move(s);
  return g;
}

// ---- shared sessions ----

// Why a round trip failed, for the LockLostError of the leases it loses.
std::string why(const PgOutcome& o) {
  if (!o.message.empty()) return o.message;
  if (o.fail == PgOutcome::Fail::timeout) return "no answer within statement_timeout";
  if (o.result) return detail::pg_redact(PQresultErrorMessage(o.result.get()));
  return "no answer";
}

// Unlocks the keys of handles destroyed without release. Called with s.mu held;
// false (and the session lost) when a round trip failed.
bool unlock_orphans(detail::PgBackendState& st, detail::PgSharedSession& s, SteadyTime deadline) {
  std::vector<std::int64_t> orphans;
  {
    std::lock_guard lk(s.orphans_mu);
    orphans.swap(s.orphans);
  }
  for (const std::int64_t key : orphans) {
    if (!s.session || !s.keys.count(key)) continue;
    PgOutcome o = s.session->run(st.statements.shared_unlock(), {PgParam::int8(key)}, true, deadline);
    if (!o.ok()) {
      detail::lose(s, fmt::format("unlocking an abandoned lock failed: {}", why(o)));
      return false;
    }
    s.keys.erase(key);
  }
  return true;
}

// The shared session of the slot that `key` maps to, connected and usable;
// with its mu locked in `lk`. Replaces a session that ended (its leases are
// lost: they find it so at their next extend or release) or was inherited
// across fork() (dropped without a word).
std::shared_ptr<detail::PgSharedSession> shared_session(detail::PgBackendState& st, detail::PgSharedSlot& slot,
                                                        std::unique_lock<detail::PgTurn>& lk) {
  std::lock_guard slot_lk(slot.mu);
  if (auto cur = slot.current) {
    lk = std::unique_lock(cur->mu);
    if (cur->session && cur->session->reusable()) return cur;
    if (cur->session)
      detail::lose(*cur, cur->session->inherited()
                             ? "the session was opened before fork(); the parent process holds its locks"
                             : "the server ended the session (terminated, idle timeout or restart)");
    lk.unlock();
  }
  auto next = std::make_shared<detail::PgSharedSession>();
  next->session = st.checkout();
  lk = std::unique_lock(next->mu);
  slot.current = next;
  return next;
}

// One try on the shared session of the key's slot.
AcquireResult<PgLockHandle> shared_try(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                       std::int64_t key, bool fence) {
  const PostgresOptions& o = self.options();
  auto& slot = st.shared[static_cast<std::uint64_t>(key) % st.shared.size()];
  std::unique_lock<detail::PgTurn> lk;
  std::shared_ptr<detail::PgSharedSession> sh = shared_session(st, slot, lk);
  const auto what = [&] { return fmt::format("acquire of lock '{}' (key {})", r.name, key); };
  const SteadyTime deadline = after(o.statement_timeout);
  if (!unlock_orphans(st, *sh, deadline))
    throw ConnectionError(
        fmt::format("dlock: PostgreSQL {}: {}: the shared session ended ({})", self.endpoint(), what(), sh->lost_why));
  if (sh->keys.count(key)) return Contended{};  // held by another Lock of this process on this session
  detail::PgSession& s = *sh->session;
  // The session's idle timeout covers every lease on it: it only grows.
  const std::int64_t ttl_ms = std::max<std::int64_t>(sh->ttl_ms, r.ttl.count());
  std::vector<PgParam> params{PgParam::int8(key)};
  detail::push_ttl_params(params, std::chrono::milliseconds(ttl_ms));
  if (fence) params.push_back(PgParam::text(o.fencing_sequence));
  const bool keepalives = s.keepalive_ttl_ms != ttl_ms;
  const SteadyTime sent = std::chrono::steady_clock::now();
  PgOutcome out = s.run(st.statements.get(s, false).try_[fence][keepalives], params, true, deadline);
  if (!out.ok()) {
    const bool server_error = out.fail == PgOutcome::Fail::none && PQstatus(s.conn()) == CONNECTION_OK &&
                              PQtransactionStatus(s.conn()) == PQTRANS_IDLE;
    // The lock may have been taken before the error (nextval refused): this
    // session did not hold the key before, so an unlock that succeeds undoes
    // exactly that. Otherwise the session is closed, which frees it.
    if (!server_error || !s.run(st.statements.shared_unlock(), {PgParam::int8(key)}, true, deadline).ok())
      detail::lose(*sh, fmt::format("{} failed: {}", what(), why(out)));
    detail::throw_outcome(out, self.endpoint(), what(), o.statement_timeout);
  }
  sh->proven = sent;
  sh->ttl_ms = ttl_ms;
  if (keepalives) s.keepalive_ttl_ms = ttl_ms;
  const PGresult* res = out.result.get();
  if (!text_is_true(res, 0, 0)) return Contended{};
  sh->keys.insert(key);
  Grant<PgLockHandle> g;
  if (fence && !PQgetisnull(res, 0, 2)) g.token = std::strtoull(PQgetvalue(res, 0, 2), nullptr, 10);
  g.valid_until = detail::saturating_add(r.started, r.ttl);
  detail::PgHandleAccess::fill(g.handle, std::move(sh), key, s.pid());
  return g;
}

// Waits on a pooled connection of its own until the lock is free (queued in
// the server: a release wakes it at once), gives it back in the same
// statement, and tries on the shared session; again until max_wait passes. The
// shared session never blocks, so the other locks on it go on extending and
// releasing; the price is that a try from elsewhere may take the lock between
// the wait and the try (no strict arrival order).
AcquireResult<PgLockHandle> shared_wait(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                        std::chrono::milliseconds max_wait, std::int64_t key, bool fence) {
  const PostgresOptions& o = self.options();
  const SteadyTime end = after(max_wait);
  for (;;) {
    AcquireResult<PgLockHandle> res = shared_try(self, st, r, key, fence);
    if (std::holds_alternative<Grant<PgLockHandle>>(res)) return res;
    const std::int64_t wait_ms =
        detail::pg_int_ms(std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
    if (wait_ms <= 0) return res;
    PgSessionPtr s = st.checkout();
    const std::vector<PgParam> bound{PgParam::int8(wait_bound_ms(o, wait_ms))},
        params{PgParam::int8(key), PgParam::int8(wait_ms)};
    PgOutcome w =
        s->run_pipelined({{st.statements.statement_timeout(), bound}, {st.statements.wait_free(), params}}, true,
                         detail::saturating_add(after(o.statement_timeout), std::chrono::milliseconds(wait_ms)));
    if (!w.ok()) {
      if (w.fail == PgOutcome::Fail::none && w.sqlstate() == "55P03" && PQstatus(s->conn()) == CONNECTION_OK) {
        st.checkin(std::move(s));
        return Contended{};
      }
      // Closing `s` frees whatever the wait may have taken.
      detail::throw_outcome(w, self.endpoint(), fmt::format("wait for lock '{}' (key {})", r.name, key),
                            o.statement_timeout);
    }
    st.checkin(std::move(s));
  }
}

// What the unlock `out` of `key` on a shared session means (with its turn held;
// shared by shared_release and the asynchronous release).
ReleaseResult shared_released(const PostgresOptions& o, std::string_view endpoint, std::string_view name,
                              std::int64_t key, detail::PgSharedSession& sh, const PgOutcome& out) {
  if (!out.ok()) {
    // The session failed or is in doubt: closing it frees this lock (and the others on it).
    detail::lose(sh, fmt::format("release of lock '{}' failed: {}", name, why(out)));
    if (out.fail == PgOutcome::Fail::timeout)
      detail::throw_outcome(out, endpoint, fmt::format("release of lock '{}' (key {})", name, key),
                            o.statement_timeout);
    return ReleaseResult::not_held;
  }
  sh.keys.erase(key);
  return text_is_true(out.result.get(), 0, 0) ? ReleaseResult::released : ReleaseResult::not_held;
}

ReleaseResult shared_release(detail::PgBackendState& st, const PostgresOptions& o, std::string_view endpoint,
                             std::string_view name, PgLockHandle& h, std::shared_ptr<detail::PgSharedSession> sh) {
  std::lock_guard lk(sh->mu);
  if (!sh->session || !sh->keys.count(h.key())) return ReleaseResult::not_held;
  PgOutcome out =
      sh->session->run(st.statements.shared_unlock(), {PgParam::int8(h.key())}, true, after(o.statement_timeout));
  return shared_released(o, endpoint, name, h.key(), *sh, out);
}

[[nodiscard]] LockLostError shared_lost(std::string_view endpoint, std::string_view name,
                                        const detail::PgSharedSession& sh) {
  return LockLostError(
      fmt::format("dlock: the shared session holding lock '{}' on postgres {} ended ({}); the server "
                  "released the lock, and every other lock on that session, with it",
                  name, endpoint, sh.lost_why));
}

// A shared-session extend's answer when it needs no round trip (with the turn
// held): not held (nullopt), proven by a round trip sent since `entered`, or
// lost (thrown); empty when a round trip is needed.
std::optional<std::optional<TimePoint>> shared_extend_known(std::string_view endpoint, std::string_view name,
                                                            std::int64_t key, const detail::PgSharedSession& sh,
                                                            std::chrono::milliseconds ttl, TimePoint started,
                                                            SteadyTime entered) {
  if (!sh.session) throw shared_lost(endpoint, name, sh);
  if (!sh.keys.count(key)) return std::optional<TimePoint>();
  if (sh.proven >= entered && ttl.count() <= sh.ttl_ms) return detail::saturating_add(started, ttl);
  return std::nullopt;
}

// What a shared session's extend round trip `out` (sent at `sent`, for the
// session-wide `ttl_ms`) means, with the turn held.
std::optional<TimePoint> shared_extended(std::string_view endpoint, std::string_view name, detail::PgSharedSession& sh,
                                         const PgOutcome& out, std::int64_t ttl_ms, SteadyTime sent,
                                         std::chrono::milliseconds ttl, TimePoint started) {
  if (!out.ok()) {
    detail::lose(sh, why(out));
    throw shared_lost(endpoint, name, sh);
  }
  sh.proven = sent;
  sh.ttl_ms = ttl_ms;
  sh.session->keepalive_ttl_ms = ttl_ms;
  return detail::saturating_add(started, ttl);
}

// A successful round trip on the shared session proves it alive and restarts
// its idle clock (>= ttl), so an extend that waited for the session while
// another's round trip was sent needs none of its own. `entered` is taken on
// the steady clock, whatever clock `started` comes from: the caller took
// `started` before calling, so a round trip sent after `entered` was sent
// after `started` too.
std::optional<TimePoint> shared_extend(detail::PgBackendState& st, const PostgresOptions& o, std::string_view endpoint,
                                       std::string_view name, PgLockHandle& h, std::chrono::milliseconds ttl,
                                       TimePoint started) {
  const SteadyTime entered = std::chrono::steady_clock::now();
  detail::PgSharedSession& sh = detail::PgHandleAccess::shared(h);
  std::lock_guard lk(sh.mu);
  if (auto known = shared_extend_known(endpoint, name, h.key(), sh, ttl, started, entered)) return *known;
  const std::int64_t ttl_ms = std::max<std::int64_t>(sh.ttl_ms, ttl.count());
  std::vector<PgParam> params;
  detail::push_ttl_params(params, std::chrono::milliseconds(ttl_ms));
  const SteadyTime sent = std::chrono::steady_clock::now();
  PgOutcome out =
      sh.session->run(st.statements.get(*sh.session, false).extend, params, true, after(o.statement_timeout));
  return shared_extended(endpoint, name, sh, out, ttl_ms, sent, ttl, started);
}

}  // namespace

AcquireResult<PgLockHandle> PostgresBackend::try_acquire(const AcquireRequest& request) {
  std::int64_t key = advisory_key(request.name);
  const bool fence = has_fencing();
  if (state_->options.shared_sessions > 0) {
    return shared_try(*this, state(state_->pool), request, key, fence);
  }
  PgSessionPtr s;
  AcquireResult<PgLockHandle> result = acquire(*this, state(state_->pool), request, nullptr, s, key, fence);
  if (auto* g = std::get_if<Grant<PgLockHandle>>(&result)) {
    g->handle.pid_ = s->pid();
    g->handle.key_ = key;
    g->handle.session_ = std::move(s);
  }
  return result;
}

AcquireResult<PgLockHandle> PostgresBackend::acquire_wait(const AcquireRequest& request,
                                                          std::chrono::milliseconds max_wait) {
  if (max_wait <= std::chrono::milliseconds::zero()) return try_acquire(request);  // lock_timeout 0 would mean forever
  std::int64_t key = advisory_key(request.name);
  const bool fence = has_fencing();
  if (state_->options.shared_sessions > 0) {
    return shared_wait(*this, state(state_->pool), request, max_wait, key, fence);
  }
  PgSessionPtr s;
  AcquireResult<PgLockHandle> result = acquire(*this, state(state_->pool), request, &max_wait, s, key, fence);
  if (auto* g = std::get_if<Grant<PgLockHandle>>(&result)) {
    g->handle.pid_ = s->pid();
    g->handle.key_ = key;
    g->handle.session_ = std::move(s);
  }
  return result;
}

namespace {

// The statement a pinned lease's release sends: COMMIT in transaction scope, else its unlock.
const detail::PgStatement& unlock_statement(detail::PgBackendState& st, detail::PgSession& s, std::uint8_t family) {
  return st.statements.get(s, false, static_cast<detail::PgFamily>(family)).unlock;
}

// What a pinned lease's release round trip `o` on `s` means (shared by release and async_release).
ReleaseResult released(detail::PgBackendState& st, const PostgresOptions& o, std::string_view endpoint,
                       std::string_view name, std::int64_t key, bool leader, PgSessionPtr s, const PgOutcome& out) {
  const bool xact = o.scope == PostgresOptions::Scope::transaction;
  if (out.fail == PgOutcome::Fail::timeout) {
    // Unknown: the server may still hold it until it notices the closed session.
    detail::throw_outcome(out, endpoint, fmt::format("release of lock '{}' (key {})", name, key), o.statement_timeout);
  }
  if (!out.ok()) {
    // The server ended the session (terminated, idle timeout, restart) or
    // refused: the session is gone with `s`, and with it the lock.
    return ReleaseResult::not_held;
  }
  bool done = true;
  if (xact) {
    done =
        PQtransactionStatus(s->conn()) == PQTRANS_IDLE && std::string_view(PQcmdStatus(out.result.get())) == "COMMIT";
  } else {
    done = text_is_true(out.result.get(), 0, 0);
  }
  if (done && !leader) st.checkin(std::move(s));
  return done ? ReleaseResult::released : ReleaseResult::not_held;
}

// What a pinned lease's extend round trip `o` means (shared by extend and async_extend).
std::optional<TimePoint> extended(const PostgresOptions& opt, std::string_view endpoint, std::string_view name,
                                  PgSessionPtr& session, const PgOutcome& o, std::chrono::milliseconds ttl,
                                  TimePoint started) {
  const bool xact = opt.scope == PostgresOptions::Scope::transaction;
  if (!o.ok() || (xact && PQtransactionStatus(session->conn()) != PQTRANS_INTRANS)) {
    // A lost session is a lost lock (the server releases it with the session);
    // closing it makes sure. Say why: it is the connection, not another owner.
    const std::string reason = o.ok() ? std::string("the transaction ended") : why(o);
    session.reset();
    throw LockLostError(
        fmt::format("dlock: the session holding lock '{}' on postgres {} ended ({}); the server "
                    "released the lock with it",
                    name, endpoint, reason));
  }
  session->keepalive_ttl_ms = ttl.count();
  return detail::saturating_add(started, ttl);
}

}  // namespace

ReleaseResult PostgresBackend::release(std::string_view name, Lease<Handle>& lease) {
  if (lease.handle.shared_)
    return shared_release(state(state_->pool), state_->options, state_->endpoint, name, lease.handle,
                          std::move(lease.handle.shared_));
  PgSessionPtr s = std::move(lease.handle.session_);
  if (!s) return ReleaseResult::not_held;
  const bool xact = state_->options.scope == PostgresOptions::Scope::transaction;
  detail::PgBackendState& st = state(state_->pool);
  PgOutcome o = xact ? s->command("COMMIT", after(state_->options.statement_timeout))
                     : s->run(unlock_statement(st, *s, lease.handle.family_), {PgParam::int8(lease.handle.key_)}, true,
                              after(state_->options.statement_timeout));
  return released(st, state_->options, state_->endpoint, name, lease.handle.key_, lease.handle.leader_, std::move(s),
                  o);
}

std::optional<TimePoint> PostgresBackend::extend(std::string_view name, Lease<Handle>& lease,
                                                 std::chrono::milliseconds ttl, TimePoint started) {
  if (lease.handle.shared_)
    return shared_extend(state(state_->pool), state_->options, state_->endpoint, name, lease.handle, ttl, started);
  if (!lease.handle.session_) return std::nullopt;
  detail::PgSession& s = *lease.handle.session_;
  const bool xact = state_->options.scope == PostgresOptions::Scope::transaction;
  std::vector<PgParam> params;
  detail::push_ttl_params(params, ttl);
  PgOutcome o = s.run(state(state_->pool).statements.get(s, xact).extend, params, !xact,
                      after(state_->options.statement_timeout));
  return extended(state_->options, state_->endpoint, name, lease.handle.session_, o, ttl, started);
}

// ---- AsyncBackend ----

namespace {

// Runs `op` (which may throw) and hands its outcome to `done` as an AsyncBackend completion.
template <class R, class Done, class Op>
void complete_now(Done& done, Op op) {
  std::exception_ptr error;
  R result{};
  try {
    result = op();
  } catch (...) {
    error = std::current_exception();
  }
  done(error, std::move(result));
}

// The blocking operation `op`, run at once, its outcome posted to `ex`: for
// the calls that send nothing (an extend of a lease that holds no session).
template <class R, class Done, class Op>
void post_blocking(const boost::asio::any_io_executor& ex, Done done, Op op) {
  std::exception_ptr error;
  auto result = std::make_shared<R>();
  try {
    *result = op();
  } catch (...) {
    error = std::current_exception();
  }
  boost::asio::post(ex, [done = std::move(done), error, result] { done(error, std::move(*result)); });
}

// What a session-scope try's round trip `out` on `s` means (as acquire()'s end
// for a try): a grant pins `s`; contention returns it to the pool. A permit's
// grant (`permit`: `key` is the semaphore's base key) pins the slot it took.
AcquireResult<PgLockHandle> try_outcome(const PostgresBackend& self, detail::PgBackendState& st, std::string_view name,
                                        std::chrono::milliseconds ttl, TimePoint started, std::int64_t key, bool fence,
                                        bool keepalives, PgSessionPtr s, const PgOutcome& out,
                                        detail::PgFamily family = detail::PgFamily::mutex, bool permit = false) {
  if (!out.ok()) {
    const std::string_view code = out.sqlstate();
    if (out.fail == PgOutcome::Fail::none && (code == "40P01" || code == "55P03") &&
        PQstatus(s->conn()) == CONNECTION_OK) {
      st.checkin(std::move(s));  // deadlock, or a wait's lock_timeout: the connection is fine
      if (code == "55P03") return Contended{};
    }
    // Any other failure may have left the lock taken: closing `s` frees it.
    detail::throw_outcome(out, self.endpoint(), fmt::format("acquire of lock '{}' (key {})", name, key),
                          self.options().statement_timeout);
  }
  const PGresult* res = out.result.get();
  if (!text_is_true(res, 0, 0)) {
    st.checkin(std::move(s));
    return Contended{};
  }
  if (keepalives) s->keepalive_ttl_ms = ttl.count();
  Grant<PgLockHandle> g;
  if (fence && !PQgetisnull(res, 0, 2)) g.token = std::strtoull(PQgetvalue(res, 0, 2), nullptr, 10);
  if (permit)
    key = detail::pg_permit_slot_key(key, static_cast<std::uint32_t>(std::strtoul(PQgetvalue(res, 0, 3), nullptr, 10)));
  g.valid_until = detail::saturating_add(started, ttl);
  detail::PgHandleAccess::pin(g.handle, std::move(s), key, family);
  return g;
}

// Whether a transaction-scope try's answer `out` on `s` leaves a transaction
// to roll back before `s` can return to the pool (as the blocking acquire
// does): a refusal (not granted), or lock_timeout / deadlock on a healthy
// connection. The value: the answer means contention (else an error to throw).
std::optional<bool> xact_rollback(const PgOutcome& out, detail::PgSession& s) {
  if (PQtransactionStatus(s.conn()) == PQTRANS_IDLE) return std::nullopt;  // session scope, or no transaction left
  if (out.ok()) {
    if (text_is_true(out.result.get(), 0, 0)) return std::nullopt;  // granted: the transaction holds the lock
    return true;
  }
  const std::string_view code = out.sqlstate();
  if (out.fail == PgOutcome::Fail::none && (code == "55P03" || code == "40P01") && PQstatus(s.conn()) == CONNECTION_OK)
    return code == "55P03";
  return std::nullopt;  // any other failure: the session is closed, which ends the transaction
}

// After the ROLLBACK `rb` of a transaction-scope try that did not take the
// lock: the connection back to the pool (it drops it when the ROLLBACK
// failed), and Contended, or the answer's error.
AcquireResult<PgLockHandle> rolled_back(const PostgresBackend& self, detail::PgBackendState& st, std::string_view name,
                                        std::int64_t key, PgSessionPtr s, const PgOutcome& answer, const PgOutcome& rb,
                                        bool contended) {
  const auto what = [&] { return fmt::format("acquire of lock '{}' (key {})", name, key); };
  const auto timeout = self.options().statement_timeout;
  if (answer.ok() && !rb.ok()) detail::throw_outcome(rb, self.endpoint(), what(), timeout);
  st.checkin(std::move(s));
  if (!contended) detail::throw_outcome(answer, self.endpoint(), what(), timeout);
  return Contended{};
}

// The turn of a shared session, held by an asynchronous operation: given back
// when the last handler that holds it is done or destroyed (also when its
// io_context stops with the handler queued), so blocking callers never wait forever.
struct PgTurnHeld {
  explicit PgTurnHeld(std::shared_ptr<detail::PgSharedSession> s) noexcept : sh(std::move(s)) {}
  std::shared_ptr<detail::PgSharedSession> sh;
  PgTurnHeld(const PgTurnHeld&) = delete;
  PgTurnHeld& operator=(const PgTurnHeld&) = delete;
  ~PgTurnHeld() { sh->mu.unlock(); }
};
using PgTurnPtr = std::shared_ptr<PgTurnHeld>;

// Runs `fn` on `ex` with the turn of `sh` (never inside this call): taken
// without blocking, else tried again every millisecond (as a full pool is).
void with_turn(std::shared_ptr<detail::PgSharedSession> sh, const boost::asio::any_io_executor& ex,
               std::function<void(PgTurnPtr)> fn) {
  if (sh->mu.try_lock()) {
    PgTurnPtr turn;
    try {
      turn = std::make_shared<PgTurnHeld>(sh);
    } catch (...) {
      sh->mu.unlock();
      throw;
    }
    boost::asio::post(ex, [fn = std::move(fn), turn = std::move(turn)]() mutable { fn(std::move(turn)); });
    return;
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(ex, std::chrono::milliseconds(1));
  timer->async_wait([sh = std::move(sh), ex, fn = std::move(fn), timer](const boost::system::error_code&) mutable {
    with_turn(std::move(sh), ex, std::move(fn));
  });
}

using SessionThen = std::function<void(std::exception_ptr, PgSessionPtr)>;

// A pooled connection without blocking: an idle one, else a new one opened
// asynchronously (async_connect), else (all pool_size in use) tried again on
// `ex` until `deadline`, then failing as checkout() does: after 1 ms, then
// twice as long each time up to async_checkout_max_wait (asynchronous
// acquires waiting in the server's queue each keep a connection, so hundreds
// of them can find the pool full for seconds: a 1 ms poll each would keep a
// core busy). `then` runs on `ex` (an idle session: directly from here or a
// timer's handler; otherwise posted).
constexpr std::chrono::milliseconds async_checkout_max_wait{16};
void async_checkout(std::shared_ptr<void> keep, detail::PgBackendState& st, const boost::asio::any_io_executor& ex,
                    SteadyTime deadline, SessionThen then,
                    std::chrono::milliseconds wait = std::chrono::milliseconds(1)) {
  detail::PgPool::Taken taken;
  try {
    taken = st.try_checkout();
    if (taken.reserved) {
      st.async_connect(ex, *taken.reserved,
                       [keep, then](std::exception_ptr e, PgSessionPtr opened) { then(e, std::move(opened)); });
      return;
    }
    if (!taken.session && std::chrono::steady_clock::now() >= deadline) throw st.pool_full();
  } catch (...) {
    boost::asio::post(ex, [then = std::move(then), e = std::current_exception()] { then(e, nullptr); });
    return;
  }
  if (taken.session) return then(nullptr, std::move(taken.session));
  auto timer = std::make_shared<boost::asio::steady_timer>(ex, std::min(wait, async_checkout_max_wait));
  timer->async_wait([keep = std::move(keep), &st, ex, deadline, then = std::move(then), timer,
                     next = std::min(wait * 2, async_checkout_max_wait)](const boost::system::error_code&) mutable {
    async_checkout(std::move(keep), st, ex, deadline, std::move(then), next);
  });
}

// A try on the shared session of the key's slot without blocking: shared_try's
// steps, each a handler on `ex`: the slot and the session's turn are taken with
// try_lock (again after 1 ms when busy), an ended session is replaced by a
// connection from async_checkout, the abandoned leases' keys are unlocked and
// the try sent, each an asynchronous round trip.
class PgAsyncSharedTry : public std::enable_shared_from_this<PgAsyncSharedTry> {
 public:
  PgAsyncSharedTry(PostgresBackend self, std::shared_ptr<void> keep, detail::PgBackendState& st,
                   const AcquireRequest& r, std::int64_t key, bool fence, const boost::asio::any_io_executor& ex,
                   AcquireCompletion<PgLockHandle> done)
      : self_(std::move(self)),
        keep_(std::move(keep)),
        st_(st),
        slot_(st.shared[static_cast<std::uint64_t>(key) % st.shared.size()]),
        name_(r.name),
        ttl_(r.ttl),
        started_(r.started),
        key_(key),
        fence_(fence),
        ex_(ex),
        done_(std::move(done)) {}

  void start() {
    boost::asio::post(ex_, [self = shared_from_this()] { self->find(); });
  }

 private:
  using Step = void (PgAsyncSharedTry::*)();
  void later(Step next) {
    auto timer = std::make_shared<boost::asio::steady_timer>(ex_, std::chrono::milliseconds(1));
    timer->async_wait([self = shared_from_this(), timer, next](const boost::system::error_code&) { (*self.*next)(); });
  }
  [[nodiscard]] std::string what() const { return fmt::format("acquire of lock '{}' (key {})", name_, key_); }
  [[nodiscard]] SteadyTime deadline() const { return after(self_.options().statement_timeout); }

  // The slot's session with its turn, or a replacement when it ended (as shared_session()).
  void find() {
    std::unique_lock slot_lk(slot_.mu, std::try_to_lock);
    if (!slot_lk) return later(&PgAsyncSharedTry::find);
    seen_ = slot_.current;
    if (seen_) {
      if (!seen_->mu.try_lock()) {
        slot_lk.unlock();
        return later(&PgAsyncSharedTry::find);
      }
      turn_ = std::make_shared<PgTurnHeld>(seen_);
      slot_lk.unlock();
      if (seen_->session && seen_->session->reusable()) {
        sh_ = seen_;
        return unlock_orphans();
      }
      if (seen_->session)
        detail::lose(*seen_, seen_->session->inherited()
                                 ? "the session was opened before fork(); the parent process holds its locks"
                                 : "the server ended the session (terminated, idle timeout or restart)");
      turn_.reset();
    } else {
      slot_lk.unlock();
    }
    async_checkout(keep_, st_, ex_, after(self_.options().connect_timeout),
                   [self = shared_from_this()](std::exception_ptr e, PgSessionPtr s) {
                     if (e) return self->finish(e, Contended{});
                     self->fresh_ = std::move(s);
                     self->install();
                   });
  }
  // Installs the new session in the slot unless another caller replaced the one seen meanwhile.
  void install() {
    std::unique_lock slot_lk(slot_.mu, std::try_to_lock);
    if (!slot_lk) return later(&PgAsyncSharedTry::install);
    if (slot_.current != seen_) {
      slot_lk.unlock();
      st_.checkin(std::move(fresh_));
      return find();
    }
    auto next = std::make_shared<detail::PgSharedSession>();
    next->session = std::move(fresh_);
    next->mu.lock();  // new: nobody else has it yet
    turn_ = std::make_shared<PgTurnHeld>(next);
    slot_.current = next;
    slot_lk.unlock();
    sh_ = std::move(next);
    unlock_orphans();
  }
  void unlock_orphans() {
    if (!orphans_taken_) {
      orphans_taken_ = true;
      std::lock_guard lk(sh_->orphans_mu);
      orphans_.swap(sh_->orphans);
    }
    while (!orphans_.empty() && !sh_->keys.count(orphans_.back())) orphans_.pop_back();
    if (orphans_.empty()) return attempt();
    const std::int64_t key = orphans_.back();
    sh_->session->async_run(st_.statements.shared_unlock(), {PgParam::int8(key)}, true, deadline(), ex_,
                            [self = shared_from_this(), key](PgOutcome o) {
                              if (!o.ok()) {
                                detail::lose(*self->sh_, fmt::format("unlocking an abandoned lock failed: {}", why(o)));
                                return self->finish(std::make_exception_ptr(self->session_ended()), Contended{});
                              }
                              self->sh_->keys.erase(key);
                              self->orphans_.pop_back();
                              self->unlock_orphans();
                            });
  }
  [[nodiscard]] ConnectionError session_ended() const {
    return ConnectionError(fmt::format("dlock: PostgreSQL {}: {}: the shared session ended ({})", self_.endpoint(),
                                       what(), sh_->lost_why));
  }
  void attempt() {
    if (sh_->keys.count(key_)) return finish(nullptr, Contended{});  // held by another Lock of this process
    detail::PgSession& s = *sh_->session;
    ttl_ms_ = std::max<std::int64_t>(sh_->ttl_ms, ttl_.count());  // the session's idle timeout only grows
    std::vector<PgParam> params{PgParam::int8(key_)};
    detail::push_ttl_params(params, std::chrono::milliseconds(ttl_ms_));
    if (fence_) params.push_back(PgParam::text(self_.options().fencing_sequence));
    keepalives_ = s.keepalive_ttl_ms != ttl_ms_;
    sent_ = std::chrono::steady_clock::now();
    s.async_run(st_.statements.get(s, false).try_[fence_][keepalives_], params, true, deadline(), ex_,
                [self = shared_from_this()](PgOutcome out) { self->answered(std::move(out)); });
  }
  void answered(PgOutcome out) {
    detail::PgSession& s = *sh_->session;
    if (!out.ok()) {
      std::exception_ptr error;
      try {
        detail::throw_outcome(out, self_.endpoint(), what(), self_.options().statement_timeout);
      } catch (...) {
        error = std::current_exception();
      }
      const bool server_error = out.fail == PgOutcome::Fail::none && PQstatus(s.conn()) == CONNECTION_OK &&
                                PQtransactionStatus(s.conn()) == PQTRANS_IDLE;
      const std::string lost = fmt::format("{} failed: {}", what(), why(out));
      if (!server_error) {
        detail::lose(*sh_, lost);
        return finish(error, Contended{});
      }
      // As shared_try: an unlock that succeeds undoes a lock taken before the error.
      s.async_run(st_.statements.shared_unlock(), {PgParam::int8(key_)}, true, deadline(), ex_,
                  [self = shared_from_this(), error, lost](PgOutcome u) {
                    if (!u.ok()) detail::lose(*self->sh_, lost);
                    self->finish(error, Contended{});
                  });
      return;
    }
    sh_->proven = sent_;
    sh_->ttl_ms = ttl_ms_;
    if (keepalives_) s.keepalive_ttl_ms = ttl_ms_;
    const PGresult* res = out.result.get();
    if (!text_is_true(res, 0, 0)) return finish(nullptr, Contended{});
    sh_->keys.insert(key_);
    Grant<PgLockHandle> g;
    if (fence_ && !PQgetisnull(res, 0, 2)) g.token = std::strtoull(PQgetvalue(res, 0, 2), nullptr, 10);
    g.valid_until = detail::saturating_add(started_, ttl_);
    detail::PgHandleAccess::fill(g.handle, sh_, key_, s.pid());
    finish(nullptr, std::move(g));
  }
  void finish(std::exception_ptr error, AcquireResult<PgLockHandle> result) {
    turn_.reset();  // given back before the completion runs
    done_(error, std::move(result));
  }

  PostgresBackend self_;
  std::shared_ptr<void> keep_;
  detail::PgBackendState& st_;
  detail::PgSharedSlot& slot_;
  std::string_view name_;
  std::chrono::milliseconds ttl_;
  TimePoint started_;
  std::int64_t key_;
  bool fence_;
  boost::asio::any_io_executor ex_;
  AcquireCompletion<PgLockHandle> done_;
  std::shared_ptr<detail::PgSharedSession> seen_, sh_;
  PgTurnPtr turn_;
  PgSessionPtr fresh_;
  std::vector<std::int64_t> orphans_;
  bool orphans_taken_ = false;
  std::int64_t ttl_ms_ = 0;
  bool keepalives_ = false;
  SteadyTime sent_{};
};

}  // namespace

namespace {

// Whether relation `rel` of kind `relkind` exists, for an asynchronous try:
// the answer cached in `known` at once, else asked without blocking (and
// cached, as cached_exists() does); `then(error, present)` runs on `ex` or
// inside this call.
void async_cached_exists(const PostgresBackend& self, std::shared_ptr<void> keep, detail::PgBackendState& st,
                         const boost::asio::any_io_executor& ex, std::atomic<int>& known, std::string rel, char relkind,
                         std::string_view what, std::function<void(std::exception_ptr, bool)> then) {
  const int k = known.load(std::memory_order_acquire);
  if (k >= 0) return then(nullptr, k == 1);
  async_checkout(std::move(keep), st, ex, after(self.options().connect_timeout),
                 [self, &st, &known, rel = std::move(rel), relkind, what, ex, then = std::move(then)](
                     std::exception_ptr e, PgSessionPtr s) mutable {
                   if (e) return then(e, false);
                   detail::PgSession& session = *s;
                   auto held = std::make_shared<PgSessionPtr>(std::move(s));
                   session.async_run(
                       exists_probe(), {PgParam::text(rel), PgParam::text(std::string(1, relkind))}, false,
                       after(self.options().statement_timeout), ex,
                       [self, &st, &known, what, held, then](PgOutcome out) mutable {
                         if (!out.ok()) {
                           std::exception_ptr error;
                           try {
                             detail::throw_outcome(out, self.endpoint(), fmt::format("looking up {}", what),
                                                   self.options().statement_timeout);
                           } catch (...) {
                             error = std::current_exception();
                           }
                           return then(error, false);
                         }
                         const bool present = text_is_true(out.result.get(), 0, 0);
                         st.checkin(std::move(*held));
                         int expected = -1;
                         known.compare_exchange_strong(expected, present ? 1 : 0, std::memory_order_acq_rel);
                         then(nullptr, present);
                       });
                 });
}

// Whether the fencing sequence exists, for an asynchronous try (has_fencing() without blocking).
void async_fencing(const PostgresBackend& self, std::shared_ptr<void> keep, detail::PgBackendState& st,
                   const boost::asio::any_io_executor& ex, std::function<void(std::exception_ptr, bool)> then) {
  async_cached_exists(self, std::move(keep), st, ex, st.fencing, self.options().fencing_sequence, 'S',
                      "the fencing sequence", std::move(then));
}

// A server-side wait of an asynchronous acquire (async_acquire_wait): up to
// `ms` in the server's queue; a `stop` request ends it (the connection is
// closed, which takes it out of the queue: PgStatements::async_wait_bounds).
struct PgWaitSpec {
  std::int64_t ms = 0;  // > 0
  std::stop_token stop;
};

// How often a waiting session checks that its client is still there
// (client_connection_check_interval), so that a cancelled asynchronous wait,
// whose connection is closed, leaves the server's queue promptly.
constexpr std::int64_t pg_async_wait_check_ms = 100;

// The parameters of PgStatements::async_wait_bounds(s) for a wait of `wait_ms`.
std::vector<PgParam> async_wait_bound_params(const PostgresOptions& o, const detail::PgSession& s,
                                             std::int64_t wait_ms) {
  std::vector<PgParam> p{PgParam::int8(wait_bound_ms(o, wait_ms))};
  if (s.server_version() >= 140000) p.push_back(PgParam::int8(pg_async_wait_check_ms));
  return p;
}

// One try of `key` in `family` on a pooled connection, without blocking: a
// grant pins the connection (the mutex's try without shared_sessions, and the
// primitives'). With `permit`, a semaphore's try (`key` its base key), the
// blocking acquire()'s statement. With `wait`, the blocking acquire()'s
// server-side wait instead of the try: lock_timeout ends it as contention,
// a stop request (Fail::cancelled) closes the connection and ends it as
// contention too (the front end then reports the cancellation). The
// request's name stays valid until `done` runs.
void async_pinned_try(const PostgresBackend& self, std::shared_ptr<void> keep, detail::PgBackendState& st,
                      const AcquireRequest& request, std::int64_t key, bool fence, detail::PgFamily family,
                      const boost::asio::any_io_executor& ex, AcquireCompletion<PgLockHandle> done,
                      std::optional<PgPermitSpec> permit = std::nullopt,
                      std::optional<PgWaitSpec> wait = std::nullopt) {
  const PostgresOptions& o = self.options();
  const bool xact = o.scope == PostgresOptions::Scope::transaction;
  const std::string_view name = request.name;
  const std::chrono::milliseconds ttl = request.ttl;
  const TimePoint started = request.started;
  async_checkout(std::move(keep), st, ex, after(o.connect_timeout),
                 [self, &st, ex, name, ttl, started, key, fence, xact, family, permit, wait = std::move(wait),
                  done = std::move(done)](std::exception_ptr e, PgSessionPtr s) mutable {
                   if (e) return done(e, Contended{});
                   if (wait && wait->stop.stop_requested()) {  // cancelled before it was sent
                     st.checkin(std::move(s));
                     return done(nullptr, Contended{});
                   }
                   const auto& set = st.statements.get(*s, xact, family);
                   std::vector<PgParam> params{PgParam::int8(key)};
                   detail::push_ttl_params(params, ttl);
                   if (wait) params.push_back(PgParam::int8(wait->ms));
                   if (permit) {
                     params.push_back(PgParam::int8(permit->permits));
                     params.push_back(PgParam::text(self.options().lock_namespace));
                     params.push_back(PgParam::text(std::string(name)));
                   }
                   if (fence) params.push_back(PgParam::text(self.options().fencing_sequence));
                   const bool keepalives = s->keepalive_ttl_ms != ttl.count();
                   const detail::PgStatement& stmt =
                       permit ? st.statements.permit(*s, xact, fence, keepalives, permit->table)
                       : wait ? set.wait[fence][keepalives]
                              : set.try_[fence][keepalives];
                   detail::PgSession& session = *s;
                   auto held = std::make_shared<PgSessionPtr>(std::move(s));
                   auto then = [self, &st, ex, held, name, ttl, started, key, fence, keepalives, family,
                                is_permit = permit.has_value(), done](PgOutcome out) mutable {
                     if (out.fail == PgOutcome::Fail::cancelled) {  // a stop request ended the wait
                       held->reset();  // closed: the server drops the wait (or a grant that raced it)
                       return done(nullptr, Contended{});
                     }
                     if (auto rollback = xact_rollback(out, **held)) {
                       // A transaction-scope try that did not take the lock: end its transaction first.
                       auto answer = std::make_shared<PgOutcome>(std::move(out));
                       (*held)->async_command(
                           "ROLLBACK", after(self.options().statement_timeout), ex,
                           [self, &st, held, name, key, answer, done, contended = *rollback](PgOutcome rb) mutable {
                             complete_now<AcquireResult<PgLockHandle>>(done, [&]() -> AcquireResult<PgLockHandle> {
                               return rolled_back(self, st, name, key, std::move(*held), *answer, rb, contended);
                             });
                           });
                       return;
                     }
                     complete_now<AcquireResult<PgLockHandle>>(done, [&]() -> AcquireResult<PgLockHandle> {
                       return try_outcome(self, st, name, ttl, started, key, fence, keepalives, std::move(*held), out,
                                          family, is_permit);
                     });
                   };
                   const std::int64_t wait_ms = wait ? wait->ms : 0;
                   const SteadyTime deadline = detail::saturating_add(after(self.options().statement_timeout),
                                                                      std::chrono::milliseconds(wait_ms));
                   const std::vector<PgParam> no_params,
                       bound = wait ? async_wait_bound_params(self.options(), session, wait_ms) : no_params;
                   const detail::PgCall begin{st.statements.begin(), no_params},
                       bounds{st.statements.async_wait_bounds(session), bound}, call{stmt, params};
                   const std::stop_token stop = wait ? wait->stop : std::stop_token{};
                   if (xact) {  // BEGIN (the wait's bounds) and the try in one round trip, as the blocking acquire
                     if (wait) {
                       session.async_run_pipelined({begin, bounds, call}, false, deadline, ex, std::move(then), stop);
                     } else {
                       session.async_run_pipelined({begin, call}, false, deadline, ex, std::move(then));
                     }
                   } else if (wait) {
                     session.async_run_pipelined({bounds, call}, true, deadline, ex, std::move(then), stop);
                   } else {
                     session.async_run(stmt, params, true, deadline, ex, std::move(then));
                   }
                 });
}

// shared_wait without blocking a thread: a try on the shared session; on
// contention, a wait in the server's queue on a pooled connection of its own
// until the lock is free (given back in the same statement: wait_free), then
// one more try, whose answer is the completion's (the front end asks again
// for what is left). As the blocking form, no strict arrival order: a try
// from elsewhere may take the lock between the wait and the try.
void async_shared_wait(const PostgresBackend& self, std::shared_ptr<void> keep, detail::PgBackendState& st,
                       const AcquireRequest& r, std::int64_t key, bool fence, PgWaitSpec wait,
                       const boost::asio::any_io_executor& ex, AcquireCompletion<PgLockHandle> done) {
  const SteadyTime end = after(std::chrono::milliseconds(wait.ms));
  auto again = [self, keep, &st, r, key, fence, ex, done] {
    std::make_shared<PgAsyncSharedTry>(self, keep, st, r, key, fence, ex, done)->start();
  };
  auto waited = [self, &st, key, name = r.name, done, again](std::shared_ptr<PgSessionPtr> held, PgOutcome w) {
    if (w.fail == PgOutcome::Fail::cancelled) {
      held->reset();  // closed: the server drops the wait (or what it took)
      return done(nullptr, Contended{});
    }
    if (!w.ok()) {
      if (w.fail == PgOutcome::Fail::none && w.sqlstate() == "55P03" && PQstatus((*held)->conn()) == CONNECTION_OK) {
        st.checkin(std::move(*held));
        return done(nullptr, Contended{});
      }
      held->reset();  // closing it frees whatever the wait may have taken
      complete_now<AcquireResult<PgLockHandle>>(done, [&]() -> AcquireResult<PgLockHandle> {
        detail::throw_outcome(w, self.endpoint(), fmt::format("wait for lock '{}' (key {})", name, key),
                              self.options().statement_timeout);
      });
      return;
    }
    st.checkin(std::move(*held));
    again();
  };
  auto tried = [self, keep, &st, key, end, stop = wait.stop, ex, done, waited](
                   std::exception_ptr e, AcquireResult<PgLockHandle> res) mutable {
    if (e || std::holds_alternative<Grant<PgLockHandle>>(res) || stop.stop_requested()) return done(e, std::move(res));
    const std::int64_t left =
        detail::pg_int_ms(std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
    if (left <= 0) return done(nullptr, std::move(res));
    async_checkout(
        keep, st, ex, after(self.options().connect_timeout),
        [self, &st, key, left, stop, ex, done, waited](std::exception_ptr checkout_error, PgSessionPtr s) mutable {
          if (checkout_error) return done(checkout_error, Contended{});
          detail::PgSession& session = *s;
          auto held = std::make_shared<PgSessionPtr>(std::move(s));
          const std::vector<PgParam> bound = async_wait_bound_params(self.options(), session, left),
                                     params{PgParam::int8(key), PgParam::int8(left)};
          session.async_run_pipelined(
              {{st.statements.async_wait_bounds(session), bound}, {st.statements.wait_free(), params}}, true,
              detail::saturating_add(after(self.options().statement_timeout), std::chrono::milliseconds(left)), ex,
              [held, waited](PgOutcome w) { waited(held, std::move(w)); }, stop);
        });
  };
  std::make_shared<PgAsyncSharedTry>(self, std::move(keep), st, r, key, fence, ex, std::move(tried))->start();
}

}  // namespace

void PostgresBackend::async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                        AcquireCompletion<Handle> done) {
  async_acquire_wait(request, std::chrono::milliseconds::zero(), {}, ex, std::move(done));
}

void PostgresBackend::async_acquire_wait(const AcquireRequest& request, std::chrono::milliseconds max_wait,
                                         std::stop_token stop, const boost::asio::any_io_executor& ex,
                                         AcquireCompletion<Handle> done) {
  // lock_timeout is an int of milliseconds (0 would mean forever: no wait is a
  // try): a longer wait ends earlier, as contention.
  std::optional<PgWaitSpec> wait;
  if (const std::int64_t wait_ms = detail::pg_int_ms(max_wait); wait_ms > 0)
    wait = PgWaitSpec{wait_ms, std::move(stop)};
  std::int64_t key = 0;
  try {
    key = advisory_key(request.name);
  } catch (...) {
    boost::asio::post(ex, [done = std::move(done), e = std::current_exception()] { done(e, Contended{}); });
    return;
  }
  detail::PgBackendState& st = state(state_->pool);
  async_fencing(
      *this, state_, st, ex,
      [self = *this, &st, request, key, wait = std::move(wait), ex, done = std::move(done)](std::exception_ptr e,
                                                                                            bool fence) mutable {
        if (e) return done(e, Contended{});
        if (self.options().shared_sessions > 0) {
          if (wait)
            return async_shared_wait(self, self.state_, st, request, key, fence, std::move(*wait), ex, std::move(done));
          std::make_shared<PgAsyncSharedTry>(self, self.state_, st, request, key, fence, ex, std::move(done))->start();
          return;
        }
        async_pinned_try(self, self.state_, st, request, key, fence, detail::PgFamily::mutex, ex, std::move(done),
                         std::nullopt, std::move(wait));
      });
}

void PostgresBackend::async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                                    ReleaseCompletion done) {
  if (lease.handle.shared_) {  // an unlock on the shared session, once it is this operation's turn
    auto sh = std::move(lease.handle.shared_);
    const std::int64_t key = lease.handle.key_;
    with_turn(sh, ex, [self = *this, sh, key, name, ex, done = std::move(done)](PgTurnPtr turn) mutable {
      if (!sh->session || !sh->keys.count(key)) {
        turn.reset();
        return done(nullptr, ReleaseResult::not_held);
      }
      detail::PgBackendState& st = state(self.state_->pool);
      sh->session->async_run(st.statements.shared_unlock(), {PgParam::int8(key)}, true,
                             after(self.options().statement_timeout), ex,
                             [self, sh, key, name, turn = std::move(turn), done](PgOutcome out) mutable {
                               complete_now<ReleaseResult>(done, [&] {
                                 const PgTurnPtr mine = std::move(turn);  // given back before `done` runs
                                 return shared_released(self.options(), self.endpoint(), name, key, *sh, out);
                               });
                             });
    });
    return;
  }
  auto held = std::make_shared<PgSessionPtr>(std::move(lease.handle.session_));
  if (!*held) {
    boost::asio::post(ex, [done = std::move(done)] { done(nullptr, ReleaseResult::not_held); });
    return;
  }
  detail::PgSession& s = **held;
  detail::PgBackendState& st = state(state_->pool);
  const PgLockHandle& h = lease.handle;
  auto then = [self = *this, &st, held, name, key = h.key_, leader = h.leader_, done](PgOutcome out) mutable {
    complete_now<ReleaseResult>(
        done, [&] { return released(st, self.options(), self.endpoint(), name, key, leader, std::move(*held), out); });
  };
  const SteadyTime deadline = after(state_->options.statement_timeout);
  if (state_->options.scope == PostgresOptions::Scope::transaction) {
    s.async_command("COMMIT", deadline, ex, std::move(then));
  } else {
    s.async_run(unlock_statement(st, s, h.family_), {PgParam::int8(h.key_)}, true, deadline, ex, std::move(then));
  }
}

void PostgresBackend::async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                   TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
  if (lease.handle.shared_) {  // as extend(): one round trip on the shared session, once it is our turn
    const SteadyTime entered = std::chrono::steady_clock::now();
    const std::int64_t key = lease.handle.key_;
    auto sh = lease.handle.shared_;
    with_turn(sh, ex,
              [self = *this, sh, key, name, ttl, started, entered, ex, done = std::move(done)](PgTurnPtr turn) mutable {
                std::optional<std::optional<TimePoint>> known;
                try {
                  known = shared_extend_known(self.endpoint(), name, key, *sh, ttl, started, entered);
                } catch (...) {
                  turn.reset();
                  return done(std::current_exception(), std::nullopt);
                }
                if (known) {
                  turn.reset();
                  return done(nullptr, *known);
                }
                const std::int64_t ttl_ms = std::max<std::int64_t>(sh->ttl_ms, ttl.count());
                std::vector<PgParam> params;
                detail::push_ttl_params(params, std::chrono::milliseconds(ttl_ms));
                const SteadyTime sent = std::chrono::steady_clock::now();
                detail::PgBackendState& st = state(self.state_->pool);
                sh->session->async_run(
                    st.statements.get(*sh->session, false).extend, params, true,
                    after(self.options().statement_timeout), ex,
                    [self, sh, name, ttl, started, ttl_ms, sent, turn = std::move(turn), done](PgOutcome out) mutable {
                      complete_now<std::optional<TimePoint>>(done, [&] {
                        const PgTurnPtr mine = std::move(turn);  // given back before `done` runs
                        return shared_extended(self.endpoint(), name, *sh, out, ttl_ms, sent, ttl, started);
                      });
                    });
              });
    return;
  }
  if (!lease.handle.session_)
    return post_blocking<std::optional<TimePoint>>(ex, std::move(done),
                                                   [&] { return extend(name, lease, ttl, started); });
  detail::PgSession& s = *lease.handle.session_;
  const bool xact = state_->options.scope == PostgresOptions::Scope::transaction;
  std::vector<PgParam> params;
  detail::push_ttl_params(params, ttl);
  s.async_run(state(state_->pool).statements.get(s, xact).extend, params, !xact,
              after(state_->options.statement_timeout), ex,
              [self = *this, name, &lease, ttl, started, done](PgOutcome out) mutable {
                complete_now<std::optional<TimePoint>>(done, [&] {
                  return extended(self.options(), self.endpoint(), name, lease.handle.session_, out, ttl, started);
                });
              });
}

void PostgresBackend::async_try_read_write(const AcquireRequest& request, bool shared,
                                           const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done,
                                           std::chrono::milliseconds max_wait, std::stop_token stop) {
  const std::int64_t key = primitive_key(request.name, detail::PgPrimitive::rw);
  detail::PgBackendState& st = state(state_->pool);
  // lock_timeout 0 would mean forever: no wait is a try.
  std::optional<PgWaitSpec> wait;
  if (const std::int64_t wait_ms = detail::pg_int_ms(max_wait); wait_ms > 0)
    wait = PgWaitSpec{wait_ms, std::move(stop)};
  async_fencing(*this, state_, st, ex,
                [self = *this, &st, request, key, shared, wait = std::move(wait), ex, done = std::move(done)](
                    std::exception_ptr e, bool fence) mutable {
                  if (e) return done(e, Contended{});
                  // Primitives pin a connection per lease, also with shared_sessions (as pinned()).
                  async_pinned_try(self, self.state_, st, request, key, fence,
                                   shared ? detail::PgFamily::shared : detail::PgFamily::exclusive, ex, std::move(done),
                                   std::nullopt, std::move(wait));
                });
}

// ---- the primitives ----

namespace {

// A primitive's acquire on a pinned connection of its own (also with
// shared_sessions: see docs/postgres.md).
AcquireResult<PgLockHandle> pinned(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                   const std::chrono::milliseconds* wait, std::int64_t key, detail::PgFamily family,
                                   const PgPermitSpec* permit = nullptr) {
  if (wait && *wait <= std::chrono::milliseconds::zero()) wait = nullptr;  // lock_timeout 0 would mean forever
  PgSessionPtr s;
  AcquireResult<PgLockHandle> result = acquire(self, st, r, wait, s, key, self.has_fencing(), family, permit);
  if (auto* g = std::get_if<Grant<PgLockHandle>>(&result))
    detail::PgHandleAccess::pin(g->handle, std::move(s), key, family);
  return result;
}

// An election's acquire: the lock, then the session's application_name.
AcquireResult<PgLockHandle> lead(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                 std::string_view candidate, const std::chrono::milliseconds* wait) {
  AcquireResult<PgLockHandle> result =
      pinned(self, st, r, wait, self.primitive_key(r.name, detail::PgPrimitive::leader), detail::PgFamily::exclusive);
  if (auto* g = std::get_if<Grant<PgLockHandle>>(&result)) {
    detail::PgSession& s = detail::PgHandleAccess::mark_leader(g->handle);
    const std::string app = fmt::format("dlock:{}:{}", g->token ? std::to_string(*g->token) : "", candidate);
    const PostgresOptions& o = self.options();
    PgOutcome out = s.run(st.statements.leader_name(), {PgParam::text(app)}, o.scope == PostgresOptions::Scope::session,
                          after(o.statement_timeout));
    if (!out.ok()) {
      g->handle = PgLockHandle();  // closes the session, which frees the lock
      detail::throw_outcome(out, self.endpoint(), fmt::format("naming the leader of election '{}'", r.name),
                            o.statement_timeout);
    }
  }
  return result;
}

// "dlock:<term>:<candidate>" as lead() set it; anything else as the candidate.
LeaderInfo parse_leader(std::string_view app) {
  LeaderInfo info;
  constexpr std::string_view prefix = "dlock:";
  const auto colon = app.find(':', prefix.size());
  if (app.substr(0, prefix.size()) != prefix || colon == std::string_view::npos) {
    info.candidate = std::string(app);
    return info;
  }
  const std::string_view term = app.substr(prefix.size(), colon - prefix.size());
  if (!term.empty()) info.term = std::strtoull(std::string(term).c_str(), nullptr, 10);
  info.candidate = std::string(app.substr(colon + 1));
  return info;
}

AcquireResult<PgLockHandle> read_write(PostgresBackend& self, detail::PgBackendState& st, const AcquireRequest& r,
                                       const std::chrono::milliseconds* wait, detail::PgFamily family) {
  return pinned(self, st, r, wait, self.primitive_key(r.name, detail::PgPrimitive::rw), family);
}

// Whether the operators' semaphore_permits table exists (cached).
bool has_permits_table(detail::PgBackendState& st, const PostgresOptions& o, std::string_view endpoint) {
  return cached_exists(st, o, endpoint, st.permits_table, detail::pg_permits_table(o.fencing_sequence), 'r',
                       "the semaphore_permits table");
}

// One statement on a pooled connection (unprepared); throws what it failed with, naming `what`.
PgOutcome admin_query(detail::PgBackendState& st, const PostgresOptions& o, std::string_view endpoint,
                      const detail::PgStatement& q, const std::vector<PgParam>& params, std::string_view what) {
  PgSessionPtr s = st.checkout();
  PgOutcome out = s->run(q, params, false, after(o.statement_timeout));
  if (!out.ok()) detail::throw_outcome(out, endpoint, what, o.statement_timeout);
  st.checkin(std::move(s));
  return out;
}

}  // namespace

AcquireResult<PgLockHandle> PostgresBackend::try_acquire_shared(const AcquireRequest& request) {
  return read_write(*this, state(state_->pool), request, nullptr, detail::PgFamily::shared);
}
AcquireResult<PgLockHandle> PostgresBackend::acquire_wait_shared(const AcquireRequest& request,
                                                                 std::chrono::milliseconds max_wait) {
  return read_write(*this, state(state_->pool), request, &max_wait, detail::PgFamily::shared);
}
AcquireResult<PgLockHandle> PostgresBackend::try_acquire_exclusive(const AcquireRequest& request) {
  return read_write(*this, state(state_->pool), request, nullptr, detail::PgFamily::exclusive);
}
AcquireResult<PgLockHandle> PostgresBackend::acquire_wait_exclusive(const AcquireRequest& request,
                                                                    std::chrono::milliseconds max_wait) {
  return read_write(*this, state(state_->pool), request, &max_wait, detail::PgFamily::exclusive);
}

AcquireResult<PgLockHandle> PostgresBackend::try_acquire_permit(const AcquireRequest& request, std::uint32_t permits) {
  auto& st = state(state_->pool);
  const PgPermitSpec spec{permits, has_permits_table(st, state_->options, state_->endpoint)};
  return pinned(*this, st, request, nullptr, primitive_key(request.name, detail::PgPrimitive::permit),
                detail::PgFamily::exclusive, &spec);
}

std::uint32_t PostgresBackend::permits(std::string_view name, std::uint32_t permits) {
  auto& st = state(state_->pool);
  if (!has_permits_table(st, state_->options, state_->endpoint)) return permits;
  const detail::PgStatement q{0,
                              "",
                              fmt::format("SELECT permits FROM {} WHERE namespace = $1 AND name = $2",
                                          detail::pg_permits_table(state_->options.fencing_sequence)),
                              {25, 25}};
  const PgOutcome o = admin_query(st, state_->options, state_->endpoint, q,
                                  {PgParam::text(state_->options.lock_namespace), PgParam::text(std::string(name))},
                                  fmt::format("reading the permits of semaphore '{}'", name));
  const PGresult* r = o.result.get();
  return PQntuples(r) == 0 ? permits : static_cast<std::uint32_t>(std::strtoul(PQgetvalue(r, 0, 0), nullptr, 10));
}

void PostgresBackend::set_permits(std::string_view name, std::optional<std::uint32_t> permits) {
  auto& st = state(state_->pool);
  const std::string table = detail::pg_permits_table(state_->options.fencing_sequence);
  if (permits && (*permits == 0 || *permits > static_cast<std::uint32_t>(INT_MAX)))
    detail::invalid_field("semaphore permits", fmt::format("must be 1 to {}", INT_MAX), std::to_string(*permits));
  if (!has_permits_table(st, state_->options, state_->endpoint))
    detail::invalid_field("set_permits", fmt::format("needs the table {}: run install_schema() once", table),
                          fmt::format("{} missing in {}", table, state_->endpoint));
  const detail::PgStatement q{
      0,
      "",
      permits ? fmt::format("INSERT INTO {} (namespace, name, permits) VALUES ($1, $2, $3::int4) ON CONFLICT "
                            "(namespace, name) DO UPDATE SET permits = EXCLUDED.permits",
                            table)
              : fmt::format("DELETE FROM {} WHERE namespace = $1 AND name = $2 AND $3 IS NOT NULL", table),
      {25, 25, 20}};
  (void)admin_query(st, state_->options, state_->endpoint, q,
                    {PgParam::text(state_->options.lock_namespace), PgParam::text(std::string(name)),
                     PgParam::int8(permits.value_or(0))},
                    fmt::format("setting the permits of semaphore '{}'", name));
}

AcquireResult<PgLockHandle> PostgresBackend::try_acquire_leader(const AcquireRequest& request,
                                                                std::string_view candidate) {
  return lead(*this, state(state_->pool), request, candidate, nullptr);
}
AcquireResult<PgLockHandle> PostgresBackend::acquire_wait_leader(const AcquireRequest& request,
                                                                 std::string_view candidate,
                                                                 std::chrono::milliseconds max_wait) {
  return lead(*this, state(state_->pool), request, candidate, &max_wait);
}

std::optional<LeaderInfo> PostgresBackend::leader(std::string_view name) {
  auto& st = state(state_->pool);
  static const detail::PgStatement q{
      0,
      "",
      "SELECT coalesce(a.application_name, '') FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a "
      "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.classid::int8 = "
      "(($1 >> 32) & 4294967295) AND l.objid::int8 = ($1 & 4294967295) AND l.database = (SELECT oid FROM "
      "pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
      {20}};
  const PgOutcome o = admin_query(st, state_->options, state_->endpoint, q,
                                  {PgParam::int8(primitive_key(name, detail::PgPrimitive::leader))},
                                  fmt::format("reading the leader of election '{}'", name));
  const PGresult* r = o.result.get();
  if (PQntuples(r) == 0) return std::nullopt;
  return parse_leader(PQgetvalue(r, 0, 0));
}

// ---- the semaphore's and the election's asynchronous tries ----

void PostgresBackend::async_try_acquire_permit(const AcquireRequest& request, std::uint32_t permits,
                                               const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  const std::int64_t key = primitive_key(request.name, detail::PgPrimitive::permit);
  detail::PgBackendState& st = state(state_->pool);
  async_fencing(
      *this, state_, st, ex,
      [self = *this, &st, request, key, permits, ex, done = std::move(done)](std::exception_ptr e, bool fence) mutable {
        if (e) return done(e, Contended{});
        // has_permits_table() without blocking: the operators' count is read in the try's statement if it exists.
        async_cached_exists(self, self.state_, st, ex, st.permits_table,
                            detail::pg_permits_table(self.options().fencing_sequence), 'r',
                            "the semaphore_permits table",
                            [self, &st, request, key, permits, fence, ex, done = std::move(done)](std::exception_ptr e2,
                                                                                                  bool table) mutable {
                              if (e2) return done(e2, Contended{});
                              async_pinned_try(self, self.state_, st, request, key, fence, detail::PgFamily::exclusive,
                                               ex, std::move(done), PgPermitSpec{permits, table});
                            });
      });
}

void PostgresBackend::async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                               const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  const std::int64_t key = primitive_key(request.name, detail::PgPrimitive::leader);
  detail::PgBackendState& st = state(state_->pool);
  // As lead(): the lock, then (on a grant) the pinned session's application_name, one more round trip.
  AcquireCompletion<Handle> named = [self = *this, &st, name = std::string(request.name),
                                     candidate = std::string(candidate), ex,
                                     done = std::move(done)](std::exception_ptr e, AcquireResult<Handle> r) mutable {
    auto* g = std::get_if<Grant<PgLockHandle>>(&r);
    if (e || !g) return done(e, std::move(r));
    auto grant = std::make_shared<Grant<PgLockHandle>>(std::move(*g));
    detail::PgSession& s = detail::PgHandleAccess::mark_leader(grant->handle);
    const std::string app = fmt::format("dlock:{}:{}", grant->token ? std::to_string(*grant->token) : "", candidate);
    const PostgresOptions& o = self.options();
    s.async_run(st.statements.leader_name(), {PgParam::text(app)}, o.scope == PostgresOptions::Scope::session,
                after(o.statement_timeout), ex, [self, name, grant, done](PgOutcome out) mutable {
                  if (out.ok()) return done(nullptr, std::move(*grant));
                  grant->handle = PgLockHandle();  // closes the session, which frees the lock
                  complete_now<AcquireResult<PgLockHandle>>(done, [&]() -> AcquireResult<PgLockHandle> {
                    detail::throw_outcome(out, self.endpoint(), fmt::format("naming the leader of election '{}'", name),
                                          self.options().statement_timeout);
                  });
                });
  };
  async_fencing(
      *this, state_, st, ex,
      [self = *this, &st, request, key, ex, named = std::move(named)](std::exception_ptr e, bool fence) mutable {
        if (e) return named(e, Contended{});
        async_pinned_try(self, self.state_, st, request, key, fence, detail::PgFamily::exclusive, ex, std::move(named));
      });
}

std::vector<PgAdvisoryLockInfo> PostgresBackend::monitor() {
  PgSessionPtr s = state_->pool->checkout();
  const bool modern = s->server_version() >= 140000;
  const detail::PgStatement q{
      0,
      "",
      fmt::format(
          "SELECT (l.classid::int8 << 32) | l.objid::int8 AS key, l.granted, l.pid,\n"
          "       coalesce(a.application_name, '') AS application_name,\n"
          "       coalesce(host(a.client_addr), '') AS client_addr,\n"
          "       coalesce(a.state, '') AS state,\n"
          "       {} AS wait_start_us,\n"
          "       coalesce((extract(epoch FROM now() - a.state_change) * 1000)::int8, 0) AS in_state_ms,\n"
          "       l.objsubid = 2 AS primitive, l.mode = 'ShareLock' AS shared\n"
          "FROM pg_catalog.pg_locks l\n"
          "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid\n"
          "WHERE l.locktype = 'advisory' AND l.objsubid IN (1, 2)\n"
          "  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())\n"
          "ORDER BY key, l.granted DESC, {}",
          modern ? "(extract(epoch FROM l.waitstart) * 1000000)::int8" : "NULL::int8",
          modern ? "l.waitstart NULLS FIRST" : "l.pid"),
      {}};
  PgOutcome o = s->run(q, {}, false, after(state_->options.statement_timeout));
  if (!o.ok()) detail::throw_outcome(o, state_->endpoint, "monitor query", state_->options.statement_timeout);
  std::vector<PgAdvisoryLockInfo> rows;
  const PGresult* r = o.result.get();
  for (int i = 0; i < PQntuples(r); ++i) {
    PgAdvisoryLockInfo info;
    info.key = std::strtoll(PQgetvalue(r, i, 0), nullptr, 10);
    info.granted = text_is_true(r, i, 1);
    info.pid = std::atoi(PQgetvalue(r, i, 2));
    info.application_name = PQgetvalue(r, i, 3);
    info.client_addr = PQgetvalue(r, i, 4);
    info.state = PQgetvalue(r, i, 5);
    if (!PQgetisnull(r, i, 6))
      info.wait_start =
          std::chrono::system_clock::time_point(std::chrono::duration_cast<std::chrono::system_clock::duration>(
              std::chrono::microseconds(std::strtoll(PQgetvalue(r, i, 6), nullptr, 10))));
    info.in_state_for = std::chrono::milliseconds(std::strtoll(PQgetvalue(r, i, 7), nullptr, 10));
    info.primitive = text_is_true(r, i, 8);
    info.shared = text_is_true(r, i, 9);
    rows.push_back(std::move(info));
  }
  state_->pool->checkin(std::move(s));
  return rows;
}

PostgresBackend::PoolStats PostgresBackend::pool_stats() const { return state_->pool->stats(); }

// ---- transaction scope on the caller's connection ----

namespace {

struct Exec {
  PGresult* r;
  ~Exec() { PQclear(r); }
};

std::string conn_endpoint(PGconn* c) {
  const char* host = PQhost(c);
  const char* port = PQport(c);
  const char* db = PQdb(c);
  return fmt::format("{}:{}/{}", host ? host : "?", port ? port : "?", db ? db : "?");
}

void require_transaction(PGconn* conn, std::string_view fn) {
  if (!conn) detail::invalid_field(fn, "needs a connection", "null");
  if (PQstatus(conn) != CONNECTION_OK)
    throw ConnectionError(fmt::format("dlock: PostgreSQL {}: {}: the connection is not open", conn_endpoint(conn), fn));
  if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
    detail::invalid_field(fn, "must be called inside an open transaction (BEGIN) that is not aborted",
                          "a connection outside a usable transaction block");
}

[[noreturn]] void throw_result(PGconn* conn, PGresult* r, std::string_view what) {
  detail::PgOutcome o;
  if (r && PQstatus(conn) == CONNECTION_OK) {
    o.result.reset(r);
  } else {
    o.fail = detail::PgOutcome::Fail::broken;
    o.message = PQerrorMessage(conn);
    PQclear(r);
  }
  detail::throw_outcome(o, conn_endpoint(conn), what, std::chrono::milliseconds::zero());
}

PGresult* exec_key(PGconn* conn, const char* sql, std::int64_t key, const std::int64_t* extra) {
  const PgParam k = PgParam::int8(key);
  const PgParam e = PgParam::int8(extra ? *extra : 0);
  const Oid types[2] = {20, 20};
  const char* values[2] = {k.bytes.data(), e.bytes.data()};
  const int lengths[2] = {8, 8};
  const int formats[2] = {1, 1};
  return PQexecParams(conn, sql, extra ? 2 : 1, types, values, lengths, formats, 0);
}

}  // namespace

bool pg_try_xact_lock(PGconn* conn, std::int64_t key) {
  require_transaction(conn, "pg_try_xact_lock");
  PGresult* r = exec_key(conn, "SELECT pg_catalog.pg_try_advisory_xact_lock($1)", key, nullptr);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) throw_result(conn, r, fmt::format("pg_try_xact_lock({})", key));
  Exec guard{r};
  return text_is_true(r, 0, 0);
}

bool pg_xact_lock(PGconn* conn, std::int64_t key, std::chrono::milliseconds max_wait) {
  require_transaction(conn, "pg_xact_lock");
  if (max_wait <= std::chrono::milliseconds::zero()) return pg_try_xact_lock(conn, key);
  const std::string what = fmt::format("pg_xact_lock({})", key);
  auto simple = [&](const char* sql) {
    PGresult* r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) throw_result(conn, r, what);
    PQclear(r);
  };
  simple("SAVEPOINT dlock_xact_lock");
  // Waits under lock_timeout = max_wait, then puts the caller's lock_timeout back.
  const std::int64_t wait_ms = max_wait.count();
  PGresult* r = exec_key(conn,
                         "SELECT pg_catalog.set_config('lock_timeout', t.old, true) FROM ("
                         "SELECT old, pg_catalog.pg_advisory_xact_lock($1) FROM ("
                         "SELECT old, pg_catalog.set_config('lock_timeout', $2::text, true) FROM ("
                         "SELECT pg_catalog.current_setting('lock_timeout') AS old OFFSET 0) o OFFSET 0) w "
                         "OFFSET 0) t",
                         key, &wait_ms);
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    PQclear(r);
    simple("RELEASE SAVEPOINT dlock_xact_lock");
    return true;
  }
  const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const std::string_view state = code ? code : "";
  if (PQstatus(conn) == CONNECTION_OK && (state == "55P03" || state == "40P01")) {
    simple("ROLLBACK TO SAVEPOINT dlock_xact_lock");  // the transaction is usable again, lock_timeout restored
    simple("RELEASE SAVEPOINT dlock_xact_lock");
    if (state == "55P03") {
      PQclear(r);
      return false;
    }
  }
  throw_result(conn, r, what);
}

}  // namespace dlock
