// One libpq connection with deadline-bounded round trips, and the pool.
#include "pg_session.hpp"

#include <fcntl.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <stop_token>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {

constexpr unsigned int8_oid = 20;
constexpr unsigned text_oid = 25;

std::string trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

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
// Keeps the first error result, else the last result.
void collect(PgOutcome& out, PGresult* res) {
  const bool is_error = PQresultStatus(res) == PGRES_FATAL_ERROR;
  if (!out.result || (is_error && PQresultStatus(out.result.get()) != PGRES_FATAL_ERROR)) {
    out.result.reset(res);
  } else {
    PQclear(res);
  }
}

// After the last result: none, or a failed connection, is a broken round trip.
void conclude(PGconn* c, PgOutcome& out) {
  if (!out.result || PQstatus(c) == CONNECTION_BAD) {
    // A FATAL error (terminated session) arrives as a result and then the connection is bad.
    if (!out.result || PQresultStatus(out.result.get()) != PGRES_FATAL_ERROR) {
      out.fail = PgOutcome::Fail::broken;
      out.message = conn_message(c);
    }
  }
}

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

// Frees a connection inherited across fork() without sending anything: its
// socket is the parent's too, and PQfinish() would send Terminate on it. The
// descriptor is first replaced by /dev/null (dup2 closes the socket and reuses
// the number atomically, so no other file can take it in between); libpq's
// Terminate then fails on it (ENOTSOCK) and reaches no server. If /dev/null
// cannot be opened, the few bytes of the PGconn are leaked instead.
void discard_inherited(PGconn* c) noexcept {
  const int fd = PQsocket(c);
  if (fd >= 0) {
    const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0 || ::dup2(null_fd, fd) < 0) {
      if (null_fd >= 0) ::close(null_fd);
      ::close(fd);  // never write to a number another file may get: leak the PGconn
      return;
    }
    ::close(null_fd);
  }
  PQfinish(c);
}

}  // namespace

std::string pg_redact(std::string_view msg) {
  std::string out;
  bool quoted = false;
  for (const char c : msg) {
    if (c == '"') {
      quoted = !quoted;
      out += quoted ? "\"..." : "\"";
      continue;
    }
    if (quoted) continue;
    const char ch = c == '\n' || c == '\t' || c == '\r' ? ' ' : c;
    if (ch == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += ch;
  }
  if (quoted) out += '"';
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string pg_redact_conninfo_error(std::string_view msg) {
  const auto first = msg.find('"');
  const auto last = msg.rfind('"');
  if (first == last) return pg_redact(msg);  // no quote, or one: pg_redact drops what follows it
  std::string paired(msg.substr(0, first));
  paired += "\"\"";
  paired += msg.substr(last + 1);
  return pg_redact(paired);
}

std::string conn_message(PGconn* c) { return c ? pg_redact(PQerrorMessage(c)) : "out of memory"; }

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

PgSession::~PgSession() {
  if (inherited()) {
    discard_inherited(conn_);
  } else {
    PQfinish(conn_);
  }
}

PgOutcome PgSession::refuse_inherited() const {
  PgOutcome out;
  out.fail = PgOutcome::Fail::broken;
  out.message = "the connection was opened by the parent process before fork(); it is never used in a child";
  return out;
}

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
    collect(out, res);
  }
  conclude(conn_, out);
  return out;
}

namespace {

// The results of a pipeline (one Sync), taken one PQgetResult() at a time by
// the blocking and the asynchronous round trip: each step's results end with
// a NULL, then comes the sync point. Keeps the first error, else the last
// query's result; marks the statements whose Parse succeeded as prepared.
class PipelineReader {
 public:
  enum class Fed { more, synced, broken };
  PipelineReader(std::vector<const PgStatement*> steps, std::bitset<pg_max_statements>& prepared)
      : steps_(std::move(steps)), prepared_(prepared) {}

  Fed feed(PgOutcome& out, PGresult* res) {
    if (!res) {
      ++step_;  // the connection failed when no sync point will come
      return step_ > steps_.size() + 1 ? Fed::broken : Fed::more;
    }
    PgResult owned(res);
    switch (PQresultStatus(res)) {
      case PGRES_PIPELINE_SYNC:
        return Fed::synced;
      case PGRES_PIPELINE_ABORTED:
        break;
      case PGRES_FATAL_ERROR:
        if (!failed_) out.result = std::move(owned);
        failed_ = true;
        break;
      default:
        if (step_ < steps_.size() && steps_[step_]) {
          prepared_.set(steps_[step_]->id);
        } else if (!failed_) {
          out.result = std::move(owned);
        }
    }
    return Fed::more;
  }
  // After the sync point: leaves pipeline mode; false when the connection failed meanwhile.
  static bool ended(PGconn* c, const PgOutcome& out) {
    if (PQexitPipelineMode(c) && PQstatus(c) != CONNECTION_BAD) return true;
    return out.result && PQresultStatus(out.result.get()) == PGRES_FATAL_ERROR;
  }

 private:
  std::vector<const PgStatement*> steps_;  // per result set: a Parse (the statement to mark prepared) or a query
  std::bitset<pg_max_statements>& prepared_;
  std::size_t step_ = 0;
  bool failed_ = false;
};

// Drives a sent request to its outcome on an executor: flush, then read until
// the last result (of a pipeline: until its sync point), each wait an
// async_wait on the socket, all under a timer.
class PgAsyncRoundTrip : public std::enable_shared_from_this<PgAsyncRoundTrip> {
 public:
  PgAsyncRoundTrip(PGconn* c, const boost::asio::any_io_executor& ex, std::function<void(PgOutcome)> done,
                   std::optional<PipelineReader> pipeline = std::nullopt)
      : conn_(c), socket_(ex), timer_(ex), done_(std::move(done)), pipeline_(std::move(pipeline)) {}
  PgAsyncRoundTrip(const PgAsyncRoundTrip&) = delete;
  PgAsyncRoundTrip& operator=(const PgAsyncRoundTrip&) = delete;
  // Destroyed unfinished (its io_context stopped or destroyed mid-statement):
  // the fd stays the connection's, which `done_` closes (PQfinish) when it
  // drops the session; the descriptor must not close it a second time.
  ~PgAsyncRoundTrip() {
    if (!finished_) (void)socket_.release();
  }

  // `sent`: whether libpq accepted the request (else the outcome is "broken").
  // A `stop` request ends it as the deadline does, with Fail::cancelled.
  void start(bool sent, SteadyTime deadline, const std::stop_token& stop = {}) {
    if (!sent) return finish_broken();
    if (stop.stop_possible()) stop_cb_.emplace(stop, StopPost{this->weak_from_this(), socket_.get_executor()});
    boost::system::error_code ec;
    socket_.assign(PQsocket(conn_), ec);
    if (ec) return finish_broken();
    timer_.expires_at(deadline);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
      if (e || self->finished_) return;
      self->out_.fail = PgOutcome::Fail::timeout;
      self->finish();
    });
    flush();
  }

 private:
  void flush() {
    const int f = PQflush(conn_);
    if (f < 0) return finish_broken();
    if (f == 0) return read();
    wait(boost::asio::posix::stream_descriptor::wait_write, &PgAsyncRoundTrip::flush);
  }
  void read() {
    while (!PQisBusy(conn_)) {
      PGresult* res = PQgetResult(conn_);
      if (pipeline_) {
        const auto fed = pipeline_->feed(out_, res);
        if (fed == PipelineReader::Fed::more) continue;
        if (fed == PipelineReader::Fed::broken || !PipelineReader::ended(conn_, out_)) return finish_broken();
        return finish();
      }
      if (!res) {
        conclude(conn_, out_);
        return finish();
      }
      collect(out_, res);
    }
    wait(boost::asio::posix::stream_descriptor::wait_read, &PgAsyncRoundTrip::read);
  }
  void wait(boost::asio::posix::stream_descriptor::wait_type what, void (PgAsyncRoundTrip::*next)()) {
    socket_.async_wait(what, [self = shared_from_this(), next](const boost::system::error_code& e) {
      if (self->finished_) return;  // the deadline passed first
      if (e || !PQconsumeInput(self->conn_)) return self->finish_broken();
      ((*self).*next)();
    });
  }
  void finish_broken() {
    out_.fail = PgOutcome::Fail::broken;
    out_.message = conn_message(conn_);
    out_.result.reset();
    finish();
  }
  void finish() {
    finished_ = true;
    stop_cb_.reset();
    timer_.cancel();
    (void)socket_.release();  // the fd stays the connection's: PQfinish closes it
    boost::asio::post(
        socket_.get_executor(),
        [done = std::move(done_), out = std::make_shared<PgOutcome>(std::move(out_))] { done(std::move(*out)); });
  }

  // Runs on the thread that requests the stop: ends the round trip on its executor.
  struct StopPost {
    std::weak_ptr<PgAsyncRoundTrip> trip;
    boost::asio::any_io_executor ex;
    void operator()() noexcept {
      try {
        boost::asio::post(ex, [trip = trip] {
          auto self = trip.lock();
          if (!self || self->finished_) return;
          self->out_.fail = PgOutcome::Fail::cancelled;
          self->out_.result.reset();
          self->finish();
        });
      } catch (...) {  // out of memory: the round trip ends at its deadline
      }
    }
  };

  PGconn* conn_;
  boost::asio::posix::stream_descriptor socket_;
  boost::asio::steady_timer timer_;
  std::function<void(PgOutcome)> done_;
  std::optional<PipelineReader> pipeline_;
  PgOutcome out_;
  bool finished_ = false;
  std::optional<std::stop_callback<StopPost>> stop_cb_;
};

}  // namespace

void PgSession::async_finish_send(int sent, SteadyTime deadline, const boost::asio::any_io_executor& ex,
                                  std::function<void(PgOutcome)> done) {
  std::make_shared<PgAsyncRoundTrip>(conn_, ex, std::move(done))->start(sent != 0, deadline);
}

namespace {

// The parameter arrays libpq's send functions take.
struct ParamArrays {
  explicit ParamArrays(const std::vector<PgParam>& params)
      : values(params.size()), lengths(params.size()), formats(params.size()) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      values[i] = params[i].bytes.data();
      lengths[i] = static_cast<int>(params[i].bytes.size());
      formats[i] = params[i].binary ? 1 : 0;
    }
  }
  [[nodiscard]] int size() const noexcept { return static_cast<int>(values.size()); }
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
};

int send_prepare(PGconn* c, const PgStatement& stmt) {
  return PQsendPrepare(c, stmt.name.c_str(), stmt.sql.c_str(), static_cast<int>(stmt.types.size()), stmt.types.data());
}

int send_query(PGconn* c, const PgStatement& stmt, const ParamArrays& p, bool prepared) {
  if (prepared)
    return PQsendQueryPrepared(c, stmt.name.c_str(), p.size(), p.values.data(), p.lengths.data(), p.formats.data(), 0);
  return PQsendQueryParams(c, stmt.sql.c_str(), p.size(), stmt.types.data(), p.values.data(), p.lengths.data(),
                           p.formats.data(), 0);
}

}  // namespace

PgOutcome PgSession::run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared,
                         SteadyTime deadline) {
  if (inherited()) return refuse_inherited();
  const ParamArrays p(params);
  if (prepared && !prepared_.test(stmt.id)) {
    PgOutcome prep = noted(finish_send(send_prepare(conn_, stmt), deadline));
    if (!prep.ok()) return prep;
    prepared_.set(stmt.id);
  }
  return noted(finish_send(send_query(conn_, stmt, p, prepared), deadline));
}

PgOutcome PgSession::noted(PgOutcome out) noexcept {
  // A cancelled round trip says nothing about the server: the pool need not suspect its other connections.
  if (out.fail != PgOutcome::Fail::none && out.fail != PgOutcome::Fail::cancelled) failed_ = true;
  return out;
}

std::function<void(PgOutcome)> PgSession::noting(std::function<void(PgOutcome)> done) {
  return [this, done = std::move(done)](PgOutcome out) { done(noted(std::move(out))); };
}

PgOutcome PgSession::run_pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline) {
  return noted(pipelined(calls, prepared, deadline));
}

namespace {

// Enters pipeline mode and sends the calls and a Sync (unsent bytes stay in
// libpq's buffer for PQflush); the reader of their results, or nullopt when
// the connection failed.
std::optional<PipelineReader> send_pipeline(PGconn* c, std::initializer_list<PgCall> calls, bool prepared,
                                            std::bitset<pg_max_statements>& prepared_set) {
  if (!PQenterPipelineMode(c)) return std::nullopt;
  std::vector<const PgStatement*> steps;
  for (const PgCall& call : calls) {
    if (prepared && !prepared_set.test(call.stmt.id)) {
      if (!send_prepare(c, call.stmt)) return std::nullopt;
      steps.push_back(&call.stmt);
    }
    if (!send_query(c, call.stmt, ParamArrays(call.params), prepared)) return std::nullopt;
    steps.push_back(nullptr);
  }
  if (!PQpipelineSync(c)) return std::nullopt;
  return PipelineReader(std::move(steps), prepared_set);
}

}  // namespace

PgOutcome PgSession::pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline) {
  if (inherited()) return refuse_inherited();
  PgOutcome out;
  const auto broken = [&] {
    out.fail = PgOutcome::Fail::broken;
    out.message = conn_message(conn_);
    out.result.reset();
    return std::move(out);
  };
  std::optional<PipelineReader> reader = send_pipeline(conn_, calls, prepared, prepared_);
  if (!reader) return broken();
  for (;;) {  // flush the requests (non-blocking connection)
    const int f = PQflush(conn_);
    if (f == 0) break;
    if (f < 0) return broken();
    if (!await_input(conn_, true, deadline, out)) return out;
  }
  for (;;) {
    while (PQisBusy(conn_)) {
      if (!await_input(conn_, false, deadline, out)) return out;
    }
    const auto fed = reader->feed(out, PQgetResult(conn_));
    if (fed == PipelineReader::Fed::broken) return broken();
    if (fed == PipelineReader::Fed::synced) break;
  }
  if (!PipelineReader::ended(conn_, out)) return broken();
  return out;
}

void PgSession::async_run_pipelined(std::initializer_list<PgCall> calls, bool prepared, SteadyTime deadline,
                                    const boost::asio::any_io_executor& ex, std::function<void(PgOutcome)> done,
                                    std::stop_token stop) {
  if (inherited()) {
    boost::asio::post(ex, [done = std::move(done), this] { done(refuse_inherited()); });
    return;
  }
  std::optional<PipelineReader> reader = send_pipeline(conn_, calls, prepared, prepared_);
  const bool sent = reader.has_value();
  std::make_shared<PgAsyncRoundTrip>(conn_, ex, noting(std::move(done)), std::move(reader))
      ->start(sent, deadline, stop);
}

void PgSession::async_run(const PgStatement& stmt, const std::vector<PgParam>& params, bool prepared,
                          SteadyTime deadline, const boost::asio::any_io_executor& ex,
                          std::function<void(PgOutcome)> done) {
  if (inherited()) {
    boost::asio::post(ex, [done = std::move(done), this] { done(refuse_inherited()); });
    return;
  }
  if (prepared && !prepared_.test(stmt.id)) {  // Parse first, then the query
    async_finish_send(send_prepare(conn_, stmt), deadline, ex,
                      [this, &stmt, params, deadline, ex, done = std::move(done)](PgOutcome prep) mutable {
                        if (!prep.ok()) return done(noted(std::move(prep)));
                        prepared_.set(stmt.id);
                        async_run(stmt, params, true, deadline, ex, std::move(done));
                      });
    return;
  }
  async_finish_send(send_query(conn_, stmt, ParamArrays(params), prepared), deadline, ex, noting(std::move(done)));
}

void PgSession::async_command(const char* sql, SteadyTime deadline, const boost::asio::any_io_executor& ex,
                              std::function<void(PgOutcome)> done) {
  if (inherited()) {
    boost::asio::post(ex, [done = std::move(done), this] { done(refuse_inherited()); });
    return;
  }
  async_finish_send(PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0), deadline, ex,
                    noting(std::move(done)));
}

PgOutcome PgSession::command(const char* sql, SteadyTime deadline) {
  if (inherited()) return refuse_inherited();
  return noted(finish_send(PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0), deadline));
}

bool PgSession::reusable() noexcept {
  if (inherited()) return false;  // reading its socket would take the parent's replies
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
  std::unique_ptr<PgSession> owned(s);
  if (PgPool* pool = s->pool()) pool->closed(std::move(owned));  // the pool drops what a fork() left
}

// ---- errors ----

void throw_outcome(const PgOutcome& o, std::string_view endpoint, std::string_view what,
                   std::chrono::milliseconds timeout) {
  if (o.fail == PgOutcome::Fail::timeout)
    throw TimeoutError(
        fmt::format("dlock: PostgreSQL {}: {} got no answer within statement_timeout {}; "
                    "the connection was closed",
                    endpoint, what, format_duration(timeout)));
  if (o.fail == PgOutcome::Fail::cancelled)
    throw CancelledError(fmt::format(
        "dlock: PostgreSQL {}: {} was cancelled by a stop request; the connection was closed", endpoint, what));
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
    : options_(options),
      endpoint_(std::move(endpoint)),
      pool_(options.pool_size, [](const std::unique_ptr<PgSession>& s) { return s && s->reusable(); }) {
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
    const auto& t = options_.statement_timeout;
    const std::pair<const char*, std::string> ka[] = {
        {"keepalives", "1"},
        {"keepalives_idle", std::to_string(pg_keepalive_seconds(t))},
        {"keepalives_interval", std::to_string(pg_keepalive_seconds(t / 3))},
        {"keepalives_count", "3"},
        {"tcp_user_timeout", std::to_string(pg_int_ms(t))},
    };
    for (const auto& [k, v] : ka) {
      keywords_.emplace_back(k);
      values_.push_back(v);
    }
  }
}

std::int64_t pg_int_ms(std::chrono::milliseconds d) noexcept { return std::clamp<std::int64_t>(d.count(), 0, INT_MAX); }

std::int64_t pg_keepalive_seconds(std::chrono::milliseconds d) noexcept {
  return std::clamp<std::int64_t>(d.count() / 1000, 1, pg_max_keepalive_seconds);
}

PgPool::ConnPtr PgPool::start_connect() const {
  std::vector<const char*> keys, vals;
  for (std::size_t i = 0; i < keywords_.size(); ++i) {
    keys.push_back(keywords_[i].c_str());
    vals.push_back(values_[i].c_str());
  }
  keys.push_back(nullptr);
  vals.push_back(nullptr);
  ConnPtr c(PQconnectStartParams(keys.data(), vals.data(), 1), PQfinish);
  if (!c) throw ConnectionError(fmt::format("dlock: PostgreSQL {}: cannot connect: out of memory", endpoint_));
  return c;
}

ConnectionError PgPool::connect_timed_out() const {
  // Not a TimeoutError: nothing was asked of the server yet, the outcome is
  // known (no lock taken): the service could not be reached.
  return ConnectionError(
      fmt::format("dlock: PostgreSQL {}: cannot connect: no answer within connect_timeout {}; check that the "
                  "server is running and reachable there",
                  endpoint_, format_duration(options_.connect_timeout)));
}

PgSessionPtr PgPool::finish_connect(ConnPtr guard, std::uint64_t epoch) {
  PGconn* c = guard.get();
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
  PgSessionPtr s(new PgSession(c, this));
  s->epoch = epoch;
  return s;
}

PgSessionPtr PgPool::connect(std::uint64_t epoch) {
  const SteadyTime deadline = saturating_add(std::chrono::steady_clock::now(), options_.connect_timeout);
  ConnPtr guard = start_connect();
  PGconn* c = guard.get();
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    const Ready r = wait_socket(c, st == PGRES_POLLING_WRITING, deadline);
    if (r == Ready::timeout) throw connect_timed_out();
    if (r == Ready::error) break;
    st = PQconnectPoll(c);
  }
  return finish_connect(std::move(guard), epoch);
}

namespace {

// PQconnectPoll driven by async_wait on the socket (libpq may change the
// socket between attempts: each wait wraps the current one), under a timer.
class PgAsyncConnect : public std::enable_shared_from_this<PgAsyncConnect> {
 public:
  using Then = std::function<void(std::exception_ptr, PgSessionPtr)>;
  PgAsyncConnect(PgPool& pool, const boost::asio::any_io_executor& ex, std::uint64_t epoch, Then then)
      : pool_(pool), socket_(ex), timer_(ex), then_(std::move(then)), epoch_(epoch) {}

  void start(PgPool::ConnPtr conn, std::chrono::milliseconds timeout) {
    conn_ = std::move(conn);
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
      if (e || self->finished_) return;
      self->finish(std::make_exception_ptr(self->pool_.connect_timed_out()));
    });
    step();
  }

 private:
  void step() {
    PGconn* c = conn_.get();
    if (PQstatus(c) == CONNECTION_BAD || st_ == PGRES_POLLING_OK || st_ == PGRES_POLLING_FAILED) return finish({});
    (void)socket_.release();
    boost::system::error_code ec;
    socket_.assign(PQsocket(c), ec);
    if (ec) return finish({});
    socket_.async_wait(st_ == PGRES_POLLING_WRITING ? boost::asio::posix::stream_descriptor::wait_write
                                                    : boost::asio::posix::stream_descriptor::wait_read,
                       [self = shared_from_this()](const boost::system::error_code& e) {
                         if (self->finished_) return;
                         if (e) return self->finish({});
                         self->st_ = PQconnectPoll(self->conn_.get());
                         self->step();
                       });
  }
  // `error` null: the connection's state decides (finish_connect).
  void finish(std::exception_ptr error) {
    finished_ = true;
    timer_.cancel();
    (void)socket_.release();  // PQfinish (or the session) closes the fd
    PgSessionPtr session;
    if (!error) {
      try {
        session = pool_.finish_connect(std::move(conn_), epoch_);
      } catch (...) {
        error = std::current_exception();
      }
    }
    conn_.reset();
    if (error) pool_.free_slot(epoch_);  // a timed-out or failed connect: the slot is free again, the idle ones suspect
    auto s = std::make_shared<PgSessionPtr>(std::move(session));
    boost::asio::post(socket_.get_executor(), [then = std::move(then_), error, s] { then(error, std::move(*s)); });
  }

  PgPool& pool_;
  boost::asio::posix::stream_descriptor socket_;
  boost::asio::steady_timer timer_;
  Then then_;
  const std::uint64_t epoch_;
  PgPool::ConnPtr conn_{nullptr, PQfinish};
  PostgresPollingStatusType st_ = PGRES_POLLING_WRITING;
  bool finished_ = false;
};

}  // namespace

void PgPool::async_connect(const boost::asio::any_io_executor& ex, std::uint64_t reserved,
                           std::function<void(std::exception_ptr, PgSessionPtr)> then) {
  try {
    ConnPtr conn = start_connect();
    std::make_shared<PgAsyncConnect>(*this, ex, reserved, std::move(then))
        ->start(std::move(conn), options_.connect_timeout);
  } catch (...) {
    free_slot(reserved);
    throw;
  }
}

PgSessionPtr PgPool::adopt(Sessions::Checkout c) noexcept {
  c.handle->epoch = c.epoch;
  return PgSessionPtr(c.handle.release());
}

void PgPool::free_slot(std::uint64_t epoch) noexcept { pool_.give_back(Sessions::Checkout{nullptr, epoch}, false); }

TimeoutError PgPool::pool_full() const {
  return TimeoutError(
      fmt::format("dlock: PostgreSQL {}: all {} pooled connections stayed in use for connect_timeout {} ({}); raise "
                  "PostgresOptions.pool_size",
                  endpoint_, options_.pool_size, format_duration(options_.connect_timeout),
                  options_.shared_sessions == 0
                      ? "each held lock pins one"
                      : "shared_sessions of them hold the locks; waits and administrative calls use the rest"));
}

PgSessionPtr PgPool::checkout() {
  // The wait for a free slot and the connect each get connect_timeout.
  std::optional<Sessions::Checkout> c =
      pool_.take(options_.connect_timeout, [] { return std::unique_ptr<PgSession>(); });
  if (!c) throw pool_full();
  if (c->handle) return adopt(std::move(*c));
  try {  // a reserved slot: connect outside the pool's lock
    return connect(c->epoch);
  } catch (...) {
    free_slot(c->epoch);
    throw;
  }
}

PgPool::Taken PgPool::try_checkout() {
  std::optional<Sessions::Checkout> c =
      pool_.take(std::chrono::nanoseconds::zero(), [] { return std::unique_ptr<PgSession>(); });
  Taken t;
  if (!c) return t;
  if (c->handle) {
    t.session = adopt(std::move(*c));
  } else {
    t.reserved = c->epoch;
  }
  return t;
}

void PgPool::checkin(PgSessionPtr session) noexcept {
  if (!session) return;
  const std::uint64_t epoch = session->epoch;
  // Kept if reusable (the pool asks), else closed with a generation bump.
  pool_.give_back(Sessions::Checkout{std::unique_ptr<PgSession>(session.release()), epoch}, true);
}

void PgPool::closed(std::unique_ptr<PgSession> session) noexcept {
  const std::uint64_t epoch = session->epoch;
  const bool failed = session->failed() || PQstatus(session->conn()) != CONNECTION_OK;
  Sessions::Checkout c{std::move(session), epoch};
  if (failed) {
    pool_.give_back(std::move(c), false);  // the idle ones to this server are suspect
  } else {
    pool_.retire(std::move(c));  // closed on purpose: it held a lock, or its session was renamed
  }
}

PostgresBackend::PoolStats PgPool::stats() const { return {pool_.open_count(), pool_.idle_count()}; }

}  // namespace dlock::detail
