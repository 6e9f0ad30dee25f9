// One libpq connection with deadline-bounded round trips, and the pool.
#include "pg_session.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {

constexpr unsigned int8_oid = 20;
constexpr unsigned text_oid = 25;

std::string trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

std::string conn_message(PGconn* c) { return trim(c ? PQerrorMessage(c) : "out of memory"); }

enum class Ready { yes, timeout, error };

// Waits until the connection's socket is readable (or writable) or the deadline passes.
Ready wait_socket(PGconn* c, bool for_write, SteadyTime deadline) {
  const int fd = PQsocket(c);
  if (fd < 0) return Ready::error;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Ready::timeout;
    pollfd p{fd, static_cast<short>(for_write ? POLLOUT | POLLIN : POLLIN), 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 60'000)));
    if (r > 0) return Ready::yes;
    if (r < 0 && errno != EINTR) return Ready::error;
  }
}

// Waits for the socket, then reads what arrived. False, with `out` saying why,
// when the deadline passed or the connection failed.
bool await_input(PGconn* c, bool for_write, SteadyTime deadline, PgOutcome& out) {
  const Ready r = wait_socket(c, for_write, deadline);
  if (r == Ready::timeout) {
    out.fail = PgOutcome::Fail::timeout;
    return false;
  }
  if (r == Ready::error || !PQconsumeInput(c)) {
    out.fail = PgOutcome::Fail::broken;
    out.message = conn_message(c);
    return false;
  }
  return true;
}

void no_notices(void*, const char*) {}  // pg_advisory_unlock's WARNING etc. are not for stderr

}  // namespace

PgParam PgParam::int8(std::int64_t v) {
  PgParam p;
  p.bytes.resize(8);
  auto u = static_cast<std::uint64_t>(v);
  for (int i = 7; i >= 0; --i, u >>= 8) p.bytes[static_cast<std::size_t>(i)] = static_cast<char>(u & 0xff);
  p.binary = true;
  p.oid = int8_oid;
  return p;
}

PgParam PgParam::text(std::string v) {
  PgParam p;
  p.bytes = std::move(v);
  p.oid = text_oid;
  return p;
}

bool PgOutcome::ok() const noexcept {
  if (fail != Fail::none || !result) return false;
  const auto st = PQresultStatus(result.get());
  return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

std::string_view PgOutcome::sqlstate() const noexcept {
  if (!result) return {};
  const char* s = PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
  return s ? std::string_view(s) : std::string_view{};
}

PgSession::~PgSession() { PQfinish(conn_); }

PgOutcome PgSession::finish_send(int sent, SteadyTime deadline) {
  PgOutcome out;
  if (!sent) {
    out.fail = PgOutcome::Fail::broken;
    out.message = conn_message(conn_);
    return out;
  }
  for (;;) {  // flush the request (non-blocking connection)
    const int f = PQflush(conn_);
    if (f == 0) break;
    if (f < 0) {
      out.fail = PgOutcome::Fail::broken;
      out.message = conn_message(conn_);
      return out;
    }
    if (!await_input(conn_, true, deadline, out)) return out;
  }
  for (;;) {  // collect every result; keep the first error, else the last result
    while (PQisBusy(conn_)) {
      if (!await_input(conn_, false, deadline, out)) return out;
    }
    PGresult* res = PQgetResult(conn_);
    if (!res) break;
    const bool is_error = PQresultStatus(res) == PGRES_FATAL_ERROR;
    if (!out.result || (is_error && PQresultStatus(out.result.get()) != PGRES_FATAL_ERROR)) {
      out.result.reset(res);
    } else {
      PQclear(res);
    }
  }
  if (!out.result || PQstatus(conn_) == CONNECTION_BAD) {
    // A FATAL error (terminated session) arrives as a result and then the connection is bad.
    if (!out.result || PQresultStatus(out.result.get()) != PGRES_FATAL_ERROR) {
      out.fail = PgOutcome::Fail::broken;
      out.message = conn_message(conn_);
    }
  }
  return out;
}

PgOutcome PgSession::run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared,
                         SteadyTime deadline) {
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size()), formats(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].bytes.data();
    lengths[i] = static_cast<int>(params[i].bytes.size());
    formats[i] = params[i].binary ? 1 : 0;
  }
  const int n = static_cast<int>(params.size());
  if (!prepared) {
    return finish_send(PQsendQueryParams(conn_, stmt.sql.c_str(), n, stmt.types.data(), values.data(), lengths.data(),
                                         formats.data(), 0),
                       deadline);
  }
  const std::uint64_t bit = std::uint64_t{1} << stmt.id;
  if (!(prepared_ & bit)) {
    PgOutcome prep = finish_send(PQsendPrepare(conn_, stmt.name.c_str(), stmt.sql.c_str(),
                                               static_cast<int>(stmt.types.size()), stmt.types.data()),
                                 deadline);
    if (!prep.ok()) return prep;
    prepared_ |= bit;
  }
  return finish_send(PQsendQueryPrepared(conn_, stmt.name.c_str(), n, values.data(), lengths.data(), formats.data(), 0),
                     deadline);
}

PgOutcome PgSession::command(const char* sql, SteadyTime deadline) {
  return finish_send(PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0), deadline);
}

bool PgSession::reusable() noexcept {
  if (PQstatus(conn_) != CONNECTION_OK || PQtransactionStatus(conn_) != PQTRANS_IDLE) return false;
  pollfd p{PQsocket(conn_), POLLIN, 0};
  if (p.fd < 0) return false;
  if (::poll(&p, 1, 0) == 0) return true;  // nothing arrived while idle: the usual case
  // Something arrived unasked: a FATAL (idle_session_timeout, pg_terminate_backend), EOF, or a notice.
  if (!PQconsumeInput(conn_) || PQstatus(conn_) != CONNECTION_OK) return false;
  return !PQisBusy(conn_) && PQgetResult(conn_) == nullptr && ::poll(&p, 1, 0) == 0;
}

void PgSessionDeleter::operator()(PgSession* s) const noexcept {
  if (!s) return;
  PgPool* pool = s->pool();
  delete s;
  if (pool) pool->closed();
}

// ---- errors ----

void throw_outcome(const PgOutcome& o, std::string_view endpoint, std::string_view what,
                   std::chrono::milliseconds timeout) {
  if (o.fail == PgOutcome::Fail::timeout)
    throw TimeoutError(
        fmt::format("dlock: PostgreSQL {}: {} got no answer within statement_timeout {}; "
                    "the connection was closed",
                    endpoint, what, format_duration(timeout)));
  if (o.fail == PgOutcome::Fail::broken || !o.result)
    throw ConnectionError(
        fmt::format("dlock: PostgreSQL {}: connection lost during {}: {}", endpoint, what, o.message));
  const std::string_view state = o.sqlstate();
  const char* primary = PQresultErrorField(o.result.get(), PG_DIAG_MESSAGE_PRIMARY);
  const std::string msg =
      fmt::format("dlock: PostgreSQL {}: {} failed: {} (SQLSTATE {})", endpoint, what,
                  primary ? primary : trim(PQresultErrorMessage(o.result.get())), state.empty() ? "none" : state);
  if (state == "40P01") throw DeadlockError(msg);
  if (state == "57014" || state == "55P03") throw TimeoutError(msg);
  if (state.substr(0, 2) == "08" || state.substr(0, 4) == "57P0") throw ConnectionError(msg);
  if (state.substr(0, 2) == "28") throw ServerError(msg, errc::auth);
  throw ServerError(msg);
}

// ---- the pool ----

PgPool::PgPool(const PostgresOptions& options, std::string endpoint)
    : options_(options), endpoint_(std::move(endpoint)) {
  // The user's conninfo first (expanded), then ours: later keywords override earlier ones,
  // so keepalive settings are only added when the conninfo has none of its own.
  keywords_.emplace_back("dbname");
  values_.push_back(options_.conninfo);
  if (!options_.application_name.empty()) {
    keywords_.emplace_back("application_name");
    values_.push_back(options_.application_name);
  }
  bool user_keepalives = false;
  char* err = nullptr;
  if (PQconninfoOption* parsed = PQconninfoParse(options_.conninfo.c_str(), &err)) {
    for (PQconninfoOption* o = parsed; o->keyword; ++o) {
      if (o->val && *o->val && std::string_view(o->keyword).substr(0, 10) == "keepalives") user_keepalives = true;
      if (o->val && *o->val && std::string_view(o->keyword) == "tcp_user_timeout") user_keepalives = true;
    }
    PQconninfoFree(parsed);
  }
  PQfreemem(err);
  if (!user_keepalives) {
    const auto secs =
        std::max<std::int64_t>(1, std::chrono::duration_cast<std::chrono::seconds>(options_.statement_timeout).count());
    const std::pair<const char*, std::string> ka[] = {
        {"keepalives", "1"},
        {"keepalives_idle", std::to_string(secs)},
        {"keepalives_interval", std::to_string(std::max<std::int64_t>(1, secs / 3))},
        {"keepalives_count", "3"},
        {"tcp_user_timeout", std::to_string(options_.statement_timeout.count())},
    };
    for (const auto& [k, v] : ka) {
      keywords_.emplace_back(k);
      values_.push_back(v);
    }
  }
}

PgPool::~PgPool() {
  std::vector<PgSessionPtr> idle;
  {
    std::lock_guard lk(mu_);
    idle.swap(idle_);
  }
  idle.clear();  // closes them; closed() takes mu_
}

PgSessionPtr PgPool::connect() {
  std::vector<const char*> keys, vals;
  for (std::size_t i = 0; i < keywords_.size(); ++i) {
    keys.push_back(keywords_[i].c_str());
    vals.push_back(values_[i].c_str());
  }
  keys.push_back(nullptr);
  vals.push_back(nullptr);
  const SteadyTime deadline = std::chrono::steady_clock::now() + options_.connect_timeout;
  PGconn* c = PQconnectStartParams(keys.data(), vals.data(), 1);
  std::unique_ptr<PGconn, void (*)(PGconn*)> guard(c, PQfinish);
  if (!c) throw ConnectionError(fmt::format("dlock: PostgreSQL {}: cannot connect: out of memory", endpoint_));
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    const Ready r = wait_socket(c, st == PGRES_POLLING_WRITING, deadline);
    if (r == Ready::timeout)
      throw TimeoutError(fmt::format("dlock: PostgreSQL {}: cannot connect within connect_timeout {}", endpoint_,
                                     format_duration(options_.connect_timeout)));
    if (r == Ready::error) break;
    st = PQconnectPoll(c);
  }
  if (PQstatus(c) != CONNECTION_OK) {
    const std::string msg = conn_message(c);
    const std::string text = fmt::format("dlock: PostgreSQL {}: cannot connect: {}", endpoint_, msg);
    if (msg.find("authentication") != std::string::npos || msg.find("password") != std::string::npos)
      throw ServerError(text, errc::auth);
    throw ConnectionError(text);
  }
  PQsetNoticeProcessor(c, no_notices, nullptr);
  if (PQsetnonblocking(c, 1) != 0)
    throw ConnectionError(
        fmt::format("dlock: PostgreSQL {}: cannot make the connection non-blocking: {}", endpoint_, conn_message(c)));
  guard.release();
  return PgSessionPtr(new PgSession(c, this));
}

PgSessionPtr PgPool::checkout() {
  const SteadyTime deadline = std::chrono::steady_clock::now() + options_.connect_timeout;
  std::unique_lock lk(mu_);
  for (;;) {
    while (!idle_.empty()) {
      PgSessionPtr s = std::move(idle_.back());
      idle_.pop_back();
      lk.unlock();
      if (s->reusable()) return s;
      s.reset();  // dead while idle (e.g. server restart): close and try the next
      lk.lock();
    }
    if (open_ < options_.pool_size) break;
    if (!returned_.wait_until(lk, deadline, [this] { return !idle_.empty() || open_ < options_.pool_size; }))
      throw TimeoutError(
          fmt::format("dlock: PostgreSQL {}: all {} pooled connections stayed in use for connect_timeout {} (each held "
                      "lock pins one); raise PostgresOptions.pool_size",
                      endpoint_, options_.pool_size, format_duration(options_.connect_timeout)));
  }
  ++open_;
  lk.unlock();
  try {
    return connect();
  } catch (...) {
    closed();
    throw;
  }
}

void PgPool::checkin(PgSessionPtr session) noexcept {
  if (!session) return;
  if (!session->reusable()) return;  // destroying it closes it
  session->idle_since = std::chrono::steady_clock::now();
  {
    std::lock_guard lk(mu_);
    idle_.push_back(std::move(session));
  }
  returned_.notify_one();
}

void PgPool::closed() noexcept {
  {
    std::lock_guard lk(mu_);
    --open_;
  }
  returned_.notify_one();
}

PostgresBackend::PoolStats PgPool::stats() const {
  std::lock_guard lk(mu_);
  return {open_, idle_.size()};
}

}  // namespace dlock::detail
