// The Redis transport: RedisLink on Boost.Asio, one I/O thread per process.
// See detail/redis_transport.hpp.
#include <dlock/detail/redis_transport.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <utility>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/sha1.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/detail/tls_context.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using unix_socket = asio::local::stream_protocol::socket;
using tls_stream = asio::ssl::stream<tcp::socket>;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// ---- The I/O thread ----

// One io_context and its thread per process, started with the first link.
// A child process (fork()) starts its own and never touches the parent's,
// whose thread it does not have (its state may be mid-operation).
class IoThread {
 public:
  static IoThread& get() {
    std::lock_guard lk(instance_mu());
    IoThread*& current = instance();
    if (current == nullptr || current->pid_ != ::getpid()) current = new IoThread();  // the old one is leaked
    return *current;
  }
  asio::io_context& context() noexcept { return ctx_; }

 private:
  IoThread() : pid_(::getpid()), work_(asio::make_work_guard(ctx_)) {
    // fork(): the I/O thread is parked between handlers at the instant of a
    // fork (fork_prepare), so that it holds no lock a child may need: the
    // allocator's (AddressSanitizer's is not fork-safe before LLVM 18), one of
    // OpenSSL's, a pool's. Registered once per process tree (a child inherits it).
    static std::once_flag atfork;
    std::call_once(atfork, [] { (void)pthread_atfork(fork_prepare, fork_parent, nullptr); });
    // OpenSSL registers its own exit-time cleanup when initialised; initialised
    // first, it runs after stop_at_exit below, when this thread no longer uses it.
    OPENSSL_init_ssl(0, nullptr);
    thread_ = std::thread([this] {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      pthread_sigmask(SIG_BLOCK, &pipe, nullptr);  // a SIGPIPE from here never reaches the process
#ifdef __linux__
      (void)pthread_setname_np(pthread_self(), "dlock-io");  // as ps, top and gdb show it
#endif
      for (;;) {
        try {
          ctx_.run();
          return;
        } catch (...) {  // a handler threw (out of memory): keep serving the others
        }
      }
    });
    std::atexit(stop_at_exit);
  }
  // At exit the I/O thread stops (what is pending is abandoned: the process
  // ends) before static objects and OpenSSL's state are torn down under it.
  static void stop_at_exit() noexcept {
    IoThread* t = instance();
    if (t == nullptr || t->pid_ != ::getpid() || t->thread_.get_id() == std::this_thread::get_id()) return;
    t->ctx_.stop();
    if (t->thread_.joinable()) t->thread_.join();
  }
  static IoThread*& instance() {
    static IoThread* current = nullptr;
    return current;
  }
  static std::mutex& instance_mu() {
    static std::mutex mu;
    return mu;
  }

  // fork(), in the forking thread: a handler posted to the I/O thread parks
  // it (waiting on park_cv_, no lock held) until fork_parent() releases it.
  // Waits at most park_bound for it to get there (a long handler, or one
  // blocked on a lock the forking thread holds): then the fork goes ahead as
  // before. Not from the I/O thread itself (it cannot park).
  static constexpr std::chrono::milliseconds park_bound{1000};
  static void fork_prepare() noexcept {
    IoThread* t = nullptr;
    {
      std::lock_guard lk(instance_mu());
      t = instance();
    }
    if (t == nullptr || t->pid_ != ::getpid() || t->thread_.get_id() == std::this_thread::get_id()) return;
    std::unique_lock lk(t->park_mu_);
    const std::uint64_t fork = ++t->forks_;
    try {
      asio::post(t->ctx_, [t, fork] {
        std::unique_lock plk(t->park_mu_);
        t->parked_ = fork;
        t->park_cv_.notify_all();
        t->park_cv_.wait(plk, [&] { return t->released_ >= fork; });
      });
    } catch (...) {  // out of memory: the fork goes ahead unparked
      return;
    }
    (void)t->park_cv_.wait_for(lk, park_bound, [&] { return t->parked_ == fork; });
  }
  static void fork_parent() noexcept {
    IoThread* t = nullptr;
    {
      std::lock_guard lk(instance_mu());
      t = instance();
    }
    if (t == nullptr || t->pid_ != ::getpid()) return;
    {
      std::lock_guard lk(t->park_mu_);
      t->released_ = t->forks_;  // also a park handler that runs late: it returns at once
    }
    t->park_cv_.notify_all();
  }

  std::thread thread_;
  const pid_t pid_;
  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::mutex park_mu_;  // fork_prepare / fork_parent
  std::condition_variable park_cv_;
  std::uint64_t forks_ = 0;     // forks prepared
  std::uint64_t parked_ = 0;    // the fork the I/O thread parked for
  std::uint64_t released_ = 0;  // forks done in the parent
};

// TCP keepalive: a peer that vanished without a reset (host down, partition)
// is noticed after about 30 s of silence (15 s idle, then 3 probes 5 s apart)
// instead of never. Best effort.
void enable_keepalive(tcp::socket& s) noexcept {
  error_code ec;
  s.set_option(asio::socket_base::keep_alive(true), ec);
#if defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT)
  const int idle = 15, interval = 5, count = 3;
  const int fd = s.native_handle();
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
#endif
  s.set_option(tcp::no_delay(true), ec);
}

// A copy of a dlock error for one more consumer: an exception object is never
// shared between the I/O thread and callers' threads (its destruction on one
// and a what() on another is a race TSan cannot see through exception_ptr).
std::exception_ptr fresh(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const ServerError& x) {
    return std::make_exception_ptr(ServerError(x.what(), static_cast<errc>(x.code().value())));
  } catch (const TimeoutError& x) {
    return std::make_exception_ptr(TimeoutError(x.what()));
  } catch (const ConnectionError& x) {
    return std::make_exception_ptr(ConnectionError(x.what()));
  } catch (const InvalidArgument& x) {
    return std::make_exception_ptr(InvalidArgument(x.what()));
  } catch (...) {
    return std::current_exception();
  }
}

const redis_proto::ScriptShas& local_shas() {
  static const auto shas = [] {
    redis_proto::ScriptShas out;
    for (std::size_t i = 0; i < redis_script_count; ++i) out[i] = sha1_hex(redis_scripts[i]);
    return out;
  }();
  return shas;
}

}  // namespace

// ---- RedisLink::Impl: all of it runs on the I/O thread after open() ----

struct RedisLink::Impl : std::enable_shared_from_this<Impl> {
  enum class Phase { connecting, handshaking, ready, broken };
  enum class Why { io, eof, timeout, protocol, closed, handshake };

  struct Pending {
    std::string payload;
    std::size_t want = 0;
    std::string what;
    std::optional<Clock::time_point> deadline;  // the caller's
    std::string deadline_name;
    Clock::time_point due{};  // written: answered by then (command_timeout or the caller's deadline)
    bool caller_deadline_first = false;
    std::vector<RedisValue> got;
    Done done;
  };

  Impl(const RedisOptions& o, RedisLinkSetup s, RedisLinkEvents e)
      : options(o),
        endpoint(redis_endpoint(o)),
        setup(s),
        events(std::move(e)),
        pid(::getpid()),
        ctx(IoThread::get().context()),
        resolver(ctx),
        timer(ctx) {
    if (setup.load_scripts) shas = local_shas();  // SCRIPT LOAD answers these; a refused load still uses them
    if (!options.unix_socket.empty()) {
      unix_ = std::make_unique<unix_socket>(ctx);
    } else if (options.tls) {
      tls_ctx = std::make_unique<asio::ssl::context>(make_tls_context(*options.tls, "RedisOptions::tls"));
      tls = std::make_unique<tls_stream>(ctx, *tls_ctx);
    } else {
      tcp_ = std::make_unique<tcp::socket>(ctx);
    }
  }

  const RedisOptions options;
  const std::string endpoint;
  const RedisLinkSetup setup;
  const RedisLinkEvents events;
  const pid_t pid;
  redis_proto::ScriptShas shas;
  asio::io_context& ctx;
  std::atomic<bool> broken_flag{false};
  std::atomic<bool> ready_flag{false};

  // I/O thread only:
  tcp::resolver resolver;
  asio::steady_timer timer;
  std::unique_ptr<tcp::socket> tcp_;
  std::unique_ptr<unix_socket> unix_;
  std::unique_ptr<asio::ssl::context> tls_ctx;
  std::unique_ptr<tls_stream> tls;
  Phase phase = Phase::connecting;
  Clock::time_point phase_due{};
  std::optional<redis_proto::Handshake> hs;
  std::size_t hs_want = 0;
  bool hs_eviction = false, hs_identify = false;
  std::vector<RedisValue> hs_replies;
  redis_proto::ReplyParser parser;
  std::deque<Pending> queued;    // not written yet
  std::deque<Pending> inflight;  // written, replies owed (in order)
  std::string out;               // being written
  bool writing = false;
  bool reading = false;
  std::array<char, 16384> rbuf{};
  Clock::time_point timer_at = Clock::time_point::max();
  std::exception_ptr link_error;  // why it broke, for requests that arrive later

  // Who has the socket (link_state; caller_io links only stay io otherwise).
  std::mutex own_mu;
  link_state::State own;       // under own_mu
  std::vector<Pending> inbox;  // under own_mu: sent, not yet handed to the I/O thread (drain)
  // The caller's exchange (begin_here .. end_here), the caller's while it owns the link:
  std::optional<Pending> here;
  std::exception_ptr here_error;
  Why here_why = Why::io;
  std::string here_detail;

  [[nodiscard]] int fd() const noexcept {
    if (const int f = quiet_fd.load(std::memory_order_relaxed); f >= 0) return f;
    if (tcp_) return tcp_->native_handle();
    if (unix_) return unix_->native_handle();
    if (tls) return tls->next_layer().native_handle();
    return -1;
  }

  // ---- quiet idle links ----
  // An idle caller_io link's socket leaves the I/O thread's reactor: a
  // registered descriptor wakes that thread for every reply a caller reads
  // itself (epoll, edge-triggered), i.e. once per request and per node of a
  // fan-out, for nothing. The I/O thread takes it back before its next read
  // or write (attach). I/O thread only, except quiet_fd, which callers read
  // through fd() while they own the link (same descriptor either way).
  std::atomic<int> quiet_fd{-1};  // the descriptor while out of the reactor
  std::optional<tcp::socket::protocol_type> tcp_protocol;

  void detach() noexcept {
    if (quiet_fd.load(std::memory_order_relaxed) >= 0 || !setup.caller_io || tls || events.push) return;
    if (!(tcp_ && tcp_protocol) && !unix_) return;
    // Stored first: fd() never reads -1 in between (a fork() there would leave
    // the child's copy of the descriptor open: RedisLink::release closes fd()).
    const int native = tcp_ ? tcp_->native_handle() : unix_->native_handle();
    quiet_fd.store(native, std::memory_order_relaxed);
    error_code ec;
    const int f = tcp_ ? tcp_->release(ec) : unix_->release(ec);
    if (ec || f != native) quiet_fd.store(-1, std::memory_order_relaxed);  // still in the reactor
  }
  // False (the link failed) if the socket cannot be registered again.
  bool attach() {
    const int f = quiet_fd.load(std::memory_order_relaxed);
    if (f < 0) return true;
    error_code ec;
    if (tcp_) {
      tcp_->assign(*tcp_protocol, f, ec);
    } else {
      unix_->assign(asio::local::stream_protocol(), f, ec);
    }
    if (ec) {
      fail(Why::io, ec.message());  // closes quiet_fd
      return false;
    }
    quiet_fd.store(-1, std::memory_order_relaxed);
    return true;
  }

  template <class Buffers, class Handler>
  void async_write(const Buffers& b, Handler&& h) {
    if (tls) {
      asio::async_write(*tls, b, std::forward<Handler>(h));
    } else if (unix_) {
      asio::async_write(*unix_, b, std::forward<Handler>(h));
    } else {
      asio::async_write(*tcp_, b, std::forward<Handler>(h));
    }
  }
  template <class Handler>
  void async_read_some(Handler&& h) {
    const auto b = asio::buffer(rbuf);
    if (tls) {
      tls->async_read_some(b, std::forward<Handler>(h));
    } else if (unix_) {
      unix_->async_read_some(b, std::forward<Handler>(h));
    } else {
      tcp_->async_read_some(b, std::forward<Handler>(h));
    }
  }

  // ---- connect ----

  void start() {
    phase_due = saturating_add(Clock::now(), options.connect_timeout);
    arm_timer();
    auto self = shared_from_this();
    if (unix_) {
      unix_->async_connect(asio::local::stream_protocol::endpoint(options.unix_socket),
                           [self](const error_code& ec) { self->on_connect(ec); });
      return;
    }
    tcp::socket& socket = tls ? tls->next_layer() : *tcp_;
    error_code numeric;
    const auto address = asio::ip::make_address(options.host, numeric);
    if (!numeric) {  // an IP address: no resolver (and no resolver thread)
      socket.async_connect(tcp::endpoint(address, static_cast<unsigned short>(options.port)),
                           [self](const error_code& ec) { self->on_connect(ec); });
      return;
    }
    resolver.async_resolve(
        options.host, std::to_string(options.port),
        [self](const error_code& ec, const tcp::resolver::results_type& results) {
          if (self->phase == Phase::broken) return;
          if (ec) return self->on_connect(ec);
          tcp::socket& s = self->tls ? self->tls->next_layer() : *self->tcp_;
          asio::async_connect(s, results, [self](const error_code& e, const tcp::endpoint&) { self->on_connect(e); });
        });
  }

  void on_connect(const error_code& ec) {
    if (phase == Phase::broken) return;
    if (ec) {
      return fail(Why::io, fmt::format("cannot connect to Redis at {}: {}; nothing was sent. Check that "
                                       "redis-server is running there and that RedisOptions {} is right",
                                       endpoint, ec.message(), unix_ ? "unix_socket" : "host and port"));
    }
    if (tcp_) {
      enable_keepalive(*tcp_);
      error_code local;
      const auto at = tcp_->local_endpoint(local);
      if (!local) tcp_protocol = at.protocol();  // else it stays in the reactor (detach() needs it to attach again)
    }
    if (tls) enable_keepalive(tls->next_layer());
    phase = Phase::handshaking;
    phase_due = saturating_add(Clock::now(), options.connect_timeout);
    arm_timer();
    if (!tls) return redis_handshake();
    if (!prepare_tls_stream(*tls, *options.tls, options.host)) {
      return fail(Why::io, fmt::format("cannot connect to Redis at {}: the TLS server name could not be set; "
                                       "check RedisOptions tls server_name",
                                       endpoint));
    }
    auto self = shared_from_this();
    tls->async_handshake(asio::ssl::stream_base::client, [self](const error_code& e) {
      if (self->phase == Phase::broken) return;
      if (e) {
        return self->fail(Why::io, fmt::format("cannot connect to Redis at {}: TLS handshake failed: {}; nothing "
                                               "was asked of it yet. Check RedisOptions tls (ca_file, cert_file, "
                                               "server_name) and that the port serves TLS",
                                               self->endpoint, tls_failure_reason(*self->tls, e)));
      }
      self->redis_handshake();
    });
  }

  void redis_handshake() {
    hs.emplace(redis_proto::HandshakeConfig{.endpoint = endpoint,
                                            .username = options.username,
                                            .password = options.password,
                                            .database = options.database,
                                            .client_name = {},
                                            .load_scripts = setup.load_scripts});
    redis_proto::Request req;
    req.append(hs->request());
    hs_eviction = setup.check_eviction && options.eviction_check != EvictionCheck::off;
    hs_identify = setup.identify;
    if (hs_eviction) req.push({"CONFIG", "GET", "maxmemory-policy"});
    if (hs_identify) req.push({"INFO", "server"});
    hs_want = req.commands();
    read_loop();
    if (hs_want == 0) return become_ready();
    write_raw(std::string(req.payload()));
  }

  // Judges the handshake's replies once all are in, so that the first error
  // reported is the cause (AUTH before NOAUTH).
  void judge_handshake() {
    std::size_t i = 0;
    for (; i < hs_replies.size() && hs->owed() > 0; ++i) (void)hs->on_reply(hs_replies[i]);
    if (hs->status() == redis_proto::Handshake::Status::failed) {
      const bool auth = hs->failure() == redis_proto::Handshake::Failure::auth;
      return fail_with(std::make_exception_ptr(ServerError(hs->message(), auth ? errc::auth : errc::server)));
    }
    try {
      if (hs_eviction) judge_eviction(hs_replies.at(i++));
      if (hs_identify) {
        const RedisValue& r = hs_replies.at(i++);
        if (r.is_error() && starts_with(r.str, "NOAUTH")) throw_if_error(r, endpoint, "INFO server");
        // Refused (ACL, renamed): no run_id, and no duplicate check by it (docs/redlock.md).
        if (r.type == RedisValue::Type::string && setup.facts != nullptr) {
          if (auto id = parse_run_id(r.str); !id.empty()) setup.facts->set_run_id(std::move(id));
        }
      }
    } catch (...) {
      return fail_with(std::current_exception());
    }
    become_ready();
  }

  void judge_eviction(const RedisValue& r) {
    const EvictionVerdict v = judge_eviction_policy(r, endpoint);
    using Kind = EvictionVerdict::Kind;
    if (v.kind == Kind::safe || options.eviction_check == EvictionCheck::off) return;
    if (v.kind == Kind::evicts && options.eviction_check == EvictionCheck::fail)
      throw ServerError("dlock: " + v.message);
    const std::string_view kind = v.kind == Kind::evicts ? "eviction" : "eviction-unknown";
    if (setup.facts != nullptr) {
      setup.facts->warn_once(kind, v.message);
    } else {
      OnceWarnings().warn(kind, v.message);  // no facts to remember it by: warned each time
    }
  }

  void become_ready() {
    phase = Phase::ready;
    ready_flag = true;
    if (events.up) events.up();
    flush();
    arm_timer();
  }

  // ---- requests ----

  // Callers' requests, queued in one go: RedisLink::send() posts a drain
  // only when the inbox was empty, so a burst of sends from a loop (many
  // coroutines) costs one hand-off and one coalesced write.
  void drain() {
    std::vector<Pending> batch;
    bool mine = true, was_idle = false;
    {
      std::lock_guard lk(own_mu);
      batch.swap(inbox);
      if (setup.caller_io) {
        was_idle = own.owner == link_state::Owner::idle;
        mine = link_state::io_claim(own, false);
      }
    }
    for (Pending& p : batch) queued.push_back(std::move(p));
    if (phase == Phase::broken) return fail_pending();
    // Broken by a caller's exchange (or close()) whose fail() is posted
    // behind this drain: nothing more is written on it; that fail() reports
    // these requests as never sent.
    if (broken_flag) return;
    // An idle link has no read armed: closed by the server meanwhile, it is
    // noticed now, before anything is written on it.
    if (was_idle && !peek_open()) return fail(here_why, here_detail);
    if (!mine) return arm_timer();  // a caller's exchange is on it: written when it gives the link back
    flush();
    arm_timer();
  }

  void flush() {
    if (phase != Phase::ready || writing || queued.empty()) return;
    out.clear();
    const auto now = Clock::now();
    while (!queued.empty()) {
      Pending p = std::move(queued.front());
      queued.pop_front();
      out += p.payload;
      p.payload.clear();
      p.due = saturating_add(now, options.command_timeout);
      if (p.deadline && *p.deadline < p.due) {
        p.due = *p.deadline;
        p.caller_deadline_first = true;
      }
      (void)now;
      if (events.push) {  // subscriber mode: the replies go to push
        if (p.done) p.done(RedisOutcome{{}, nullptr, now});
        continue;
      }
      inflight.push_back(std::move(p));
    }
    write_raw(std::move(out));
    read_loop();  // an idle link had no read armed
  }

  void write_raw(std::string bytes) {
    if (!attach()) return;
    writing = true;
    auto buf = std::make_shared<std::string>(std::move(bytes));
    auto self = shared_from_this();
    async_write(asio::buffer(*buf), [self, buf](const error_code& ec, std::size_t) {
      self->writing = false;
      if (self->phase == Phase::broken) return;
      if (ec) return self->fail(Why::io, ec.message());
      self->flush();
      if (!self->reading) self->go_idle_if_done();
    });
  }

  void read_loop() {
    if (reading || phase == Phase::broken) return;
    if (!attach()) return;
    reading = true;
    auto self = shared_from_this();
    async_read_some([self](const error_code& ec, std::size_t n) {
      self->reading = false;
      if (self->phase == Phase::broken) return;
      if (ec) {
        const bool eof =
            ec == asio::error::eof || ec == asio::ssl::error::stream_truncated || ec == asio::error::connection_reset;
        return self->fail(eof ? Why::eof : Why::io, self->tls ? tls_error_text(ec) : ec.message());
      }
      self->parser.feed(std::string_view(self->rbuf.data(), n));
      while (self->phase != Phase::broken) {
        auto r = self->parser.next();
        if (!r) break;
        self->dispatch(std::move(*r));
      }
      if (self->phase == Phase::broken) return;
      if (self->parser.error()) return self->fail(Why::protocol, self->parser.error()->message);
      if (self->go_idle_if_done()) return;  // nothing owed: no read armed until the next request
      self->read_loop();
    });
  }

  // ---- the caller's own exchange (see link_state in the header) ----

  // I/O thread: leaves a ready link with nothing pending idle (no read armed).
  bool go_idle_if_done() {
    // Only while the link is the I/O thread's: a handler posted earlier (by
    // caller_release) may run after the link went idle and a caller took it;
    // the parser and the ownership are then that caller's.
    if (setup.caller_io) {
      std::lock_guard lk(own_mu);
      if (own.owner != link_state::Owner::io) return false;
    }
    if (reading || !link_state::may_idle({.caller_io = setup.caller_io,
                                          .tls = tls != nullptr,
                                          .subscriber = static_cast<bool>(events.push),
                                          .ready = phase == Phase::ready,
                                          .queued = queued.size(),
                                          .inflight = inflight.size(),
                                          .unparsed = parser.buffered(),
                                          .writing = writing}))
      return false;
    arm_timer();  // nothing owed: cancelled
    detach();
    std::lock_guard lk(own_mu);
    own.owner = link_state::Owner::idle;
    return true;
  }

  // I/O thread: takes the socket for new work; false while a caller has it
  // (the work then runs when the caller gives it back).
  bool io_claim(bool closing) {
    if (!setup.caller_io) return true;
    std::lock_guard lk(own_mu);
    return link_state::io_claim(own, closing);
  }

  // Caller: gives the link back; what came meanwhile runs on the I/O thread.
  void caller_release(bool broke) {
    link_state::AfterCaller next;
    {
      std::lock_guard lk(own_mu);
      next = link_state::caller_release(own, broke);
    }
    using link_state::AfterCaller;
    if (next == AfterCaller::nothing || next == AfterCaller::seized) return;
    auto self = shared_from_this();
    try {
      asio::post(ctx, [self, next, why = here_why, detail = broke ? here_detail : std::string()] {
        if (next == AfterCaller::fail) return self->fail(why, detail);
        if (next == AfterCaller::close) return self->fail(Why::closed, "closed by dlock");
        self->flush();
        self->arm_timer();
        self->go_idle_if_done();
      });
    } catch (...) {  // out of memory: the link is dropped by its owner (broken_flag)
      broken_flag = true;
    }
  }

  [[nodiscard]] bool check_idle() noexcept {
    if (broken_flag) return false;
    {
      std::lock_guard lk(own_mu);
      if (!link_state::caller_claim(own)) return true;  // the I/O thread watches it
    }
    const bool open = peek_open();
    caller_release(!open);
    return open;
  }

  // Caller, owning an idle link: false if the server closed it meanwhile (or
  // sent bytes nobody asked for): then broken, why recorded for the I/O thread.
  bool peek_open() noexcept {
    char c;
    const ssize_t n = ::recv(fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    const bool open = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    if (!open) {  // closed or reset by the server, or bytes nobody asked for
      broken_flag = true;
      here_why = n > 0 ? Why::protocol : Why::eof;
      here_detail = n > 0 ? "a reply nobody asked for" : n == 0 ? "End of file" : std::strerror(errno);
    }
    return open;
  }

  // Caller: waits until the socket is ready for `what` or `due` passed. Past
  // `due` it still looks once (what arrived meanwhile counts: a fan-out reads
  // its nodes one after the other after a slow one).
  bool wait_fd(short what, Clock::time_point due) const noexcept {
    for (;;) {
      const auto now = Clock::now();
      const auto left = now >= due ? 0 : std::chrono::ceil<std::chrono::milliseconds>(due - now).count();
      pollfd pfd{fd(), what, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(std::min<decltype(left)>(left, INT_MAX)));
      if (r > 0 || (r < 0 && errno != EINTR)) return true;  // ready, or an error the next call reports
      if (r == 0 && Clock::now() >= due) return false;
    }
  }

  // Caller: the exchange failed; the link is broken (closed on the I/O thread).
  void here_fail(Why why, std::string detail) {
    broken_flag = true;
    here_why = why;
    here_detail = std::move(detail);
    here_error = in_doubt(*here, why, here_detail);
  }

  // When a request written at `now` must be answered: command_timeout, or
  // the caller's deadline if that comes first.
  [[nodiscard]] Clock::time_point request_due(const std::optional<Clock::time_point>& deadline,
                                              Clock::time_point now) const noexcept {
    const auto due = saturating_add(now, options.command_timeout);
    return deadline && *deadline < due ? *deadline : due;
  }

  // Caller: takes `call` as the exchange's request (the link already claimed).
  void here_start(RedisCall& call) {
    Pending p;
    p.want = call.request.commands();
    p.deadline = call.deadline;
    p.what = std::move(call.what);
    p.deadline_name = std::move(call.deadline_name);
    const auto now = Clock::now();
    p.due = request_due(p.deadline, now);
    p.caller_deadline_first = p.due != saturating_add(now, options.command_timeout);
    here = std::move(p);
    here_error = nullptr;
  }

  // Caller: writes what it can of `bytes` from `off` without waiting.
  enum class Step { done, wait, failed };
  Step send_some(std::string_view bytes, std::size_t& off) {
#ifdef MSG_NOSIGNAL
    constexpr int flags = MSG_NOSIGNAL | MSG_DONTWAIT;
#else
    constexpr int flags = MSG_DONTWAIT;  // SO_NOSIGPIPE is set by Asio where there is no MSG_NOSIGNAL
#endif
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd(), bytes.data() + off, bytes.size() - off, flags);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return Step::wait;
      } else {
        here_fail(Why::io, std::strerror(n < 0 ? errno : EPIPE));
        return Step::failed;
      }
    }
    return Step::done;
  }

  // Caller: takes what the parser holds for the exchange's request. done:
  // answered; failed: here_error; wait: more to read.
  Step take_replies() {
    Pending& p = *here;
    while (p.got.size() < p.want) {
      auto r = parser.next();
      if (!r) break;
      p.got.push_back(std::move(*r));
    }
    if (parser.error()) {
      here_fail(Why::protocol, parser.error()->message);
      return Step::failed;
    }
    if (p.got.size() < p.want) return Step::wait;
    if (parser.buffered() == 0) return Step::done;
    here_fail(Why::protocol, "a reply nobody asked for");
    return Step::failed;
  }

  // Caller: the error of a read that failed (`eof`: closed or reset by the server).
  void here_read_failed(bool eof, std::string detail) { here_fail(eof ? Why::eof : Why::io, std::move(detail)); }

  // Caller: one recv without waiting, fed to the parser. wait: nothing came
  // (or interrupted); failed: here_error.
  Step recv_once() {
    const ssize_t n = ::recv(fd(), rbuf.data(), rbuf.size(), MSG_DONTWAIT);
    if (n > 0) {
      parser.feed(std::string_view(rbuf.data(), static_cast<std::size_t>(n)));
      return Step::done;
    }
    if (n == 0) {
      here_read_failed(true, "End of file");
      return Step::failed;
    }
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return Step::wait;
    here_read_failed(errno == ECONNRESET, std::strerror(errno));
    return Step::failed;
  }

  // Caller: the exchange's outcome; gives the link back.
  RedisOutcome here_finish() {
    RedisOutcome result;
    const bool broke = here_error != nullptr;
    if (broke) {
      result = RedisOutcome{{}, std::move(here_error), {}};
    } else {
      result = RedisOutcome{std::move(here->got), nullptr, Clock::now()};
    }
    here.reset();
    caller_release(broke);
    return result;
  }

  bool begin_here(RedisCall& call) {
    if (!setup.caller_io || tls || events.push || call.request.commands() == 0 || broken_flag) return false;
    {
      std::lock_guard lk(own_mu);
      // A request sent before is written before this one.
      if (!inbox.empty() || !link_state::caller_claim(own)) return false;
    }
    here_start(call);
    const std::string_view bytes = call.request.payload();
    std::size_t off = 0;
    for (;;) {
      const Step s = send_some(bytes, off);
      if (s != Step::wait) break;
      if (!wait_fd(POLLOUT, here->due)) {
        here_fail(Why::timeout, {});
        break;
      }
    }
    return true;
  }

  RedisOutcome end_here() {
    while (!here_error && take_replies() == Step::wait) {
      if (!wait_fd(POLLIN, here->due)) {
        here_fail(Why::timeout, {});
        break;
      }
      (void)recv_once();
    }
    return here_finish();
  }

  bool send_here(RedisCall& call, const asio::any_io_executor& ex, Done& done);

  // An asynchronous caller's exchange is this late past its deadline before
  // the I/O thread seizes the link (its executor stopped running).
  static constexpr std::chrono::seconds async_grace{1};
  // When the I/O thread looks for an overdue asynchronous exchange (a hint
  // for its timer; io_seize decides under own_mu).
  std::atomic<Clock::rep> async_seize_hint{Clock::time_point::max().time_since_epoch().count()};
  [[nodiscard]] Clock::time_point async_seize_at() const noexcept {
    return Clock::time_point(Clock::duration(async_seize_hint.load(std::memory_order_relaxed)));
  }
  [[nodiscard]] bool seized() {
    std::lock_guard lk(own_mu);
    return own.seized;
  }
  // I/O thread: fails the link if an asynchronous caller's exchange on it is overdue.
  void seize_if_overdue() {
    const auto now = Clock::now();
    if (now < async_seize_at()) return;
    {
      std::lock_guard lk(own_mu);
      if (!link_state::io_seize(own, now, async_grace)) return;
    }
    async_seize_hint = Clock::time_point::max().time_since_epoch().count();
    fail(Why::io, fmt::format("an asynchronous caller's executor stopped running during its request (more than {} "
                              "past its deadline)",
                              format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(async_grace))));
  }
  void dispatch(RedisValue r) {
    if (phase == Phase::handshaking) {
      hs_replies.push_back(std::move(r));
      if (hs_replies.size() == hs_want) judge_handshake();
      return;
    }
    if (!inflight.empty()) {
      Pending& p = inflight.front();
      p.got.push_back(std::move(r));
      if (p.got.size() < p.want) return;
      Pending done = std::move(inflight.front());
      inflight.pop_front();
      arm_timer();
      if (done.done) done.done(RedisOutcome{std::move(done.got), nullptr, Clock::now()});
      return;
    }
    if (events.push) return events.push(std::move(r));
    fail(Why::protocol, "a reply nobody asked for");
  }

  // ---- deadlines ----

  void arm_timer() {
    if (phase == Phase::broken) return;
    auto at = Clock::time_point::max();
    if (phase != Phase::ready) at = phase_due;
    for (const Pending& p : inflight) at = std::min(at, p.due);
    for (const Pending& p : queued)
      if (p.deadline) at = std::min(at, *p.deadline);
    if (setup.caller_io) at = std::min(at, async_seize_at());
    if (at == timer_at) return;
    timer_at = at;
    if (at == Clock::time_point::max()) {
      timer.cancel();
      return;
    }
    timer.expires_at(at);
    auto self = shared_from_this();
    timer.async_wait([self, at](const error_code& ec) {
      if (ec || self->phase == Phase::broken || self->timer_at != at) return;
      self->timer_at = Clock::time_point::max();
      self->on_timer();
    });
  }

  void on_timer() {
    if (setup.caller_io) {
      seize_if_overdue();
      if (phase == Phase::broken) return;
      if (caller_has_link()) return fail_late_queued();  // its socket is the caller's: never failed under it
    }
    const auto now = Clock::now();
    bool late = phase != Phase::ready && now >= phase_due;
    for (const Pending& p : inflight) late = late || now >= p.due;
    for (const Pending& p : queued) late = late || (p.deadline && now >= *p.deadline);
    if (late) return fail(Why::timeout, {});
    arm_timer();
  }

  [[nodiscard]] bool caller_has_link() {
    std::lock_guard lk(own_mu);
    return link_state::caller_has(own);
  }

  // I/O thread, while a caller has the link: the queued requests whose
  // deadline passed fail alone, never written; the link and the caller's
  // exchange go on (the rest is written when the caller gives it back).
  void fail_late_queued() {
    const auto now = Clock::now();
    std::vector<Pending> late;
    for (auto it = queued.begin(); it != queued.end();) {
      if (it->deadline && now >= *it->deadline) {
        late.push_back(std::move(*it));
        it = queued.erase(it);
      } else {
        ++it;
      }
    }
    arm_timer();
    for (Pending& p : late) {
      if (!p.done) continue;
      std::exception_ptr e = std::make_exception_ptr(ConnectionError(
          fmt::format("dlock: {} was not sent to Redis at {} within {}: its connection was busy with another "
                      "request; nothing was asked of it",
                      p.what, endpoint, p.deadline_name.empty() ? "its deadline" : p.deadline_name)));
      RedisOutcome o{{}, std::move(e), {}};
      o.unsent = true;
      p.done(std::move(o));
    }
  }

  // ---- failure ----

  // The error of a request that was written and got no (full) answer.
  std::exception_ptr in_doubt(const Pending& p, Why why, std::string_view detail) const {
    if (why == Why::timeout) {
      const std::string budget = p.caller_deadline_first && !p.deadline_name.empty()
                                     ? p.deadline_name
                                     : fmt::format("command_timeout {}", format_duration(options.command_timeout));
      return std::make_exception_ptr(TimeoutError(fmt::format(
          "dlock: Redis at {} did not answer within {} during {}: the request was sent; its outcome is unknown. The "
          "server may be overloaded, paused or unreachable",
          endpoint, budget, p.what)));
    }
    if (why == Why::eof)
      return std::make_exception_ptr(ConnectionError(fmt::format(
          "dlock: Redis at {} closed the connection during {} ({}): the request was sent; its outcome is unknown. "
          "The server may have restarted or dropped idle clients",
          endpoint, p.what, detail)));
    return std::make_exception_ptr(ConnectionError(
        fmt::format("dlock: connection to Redis at {} failed during {} ({}): the request was sent; its outcome is "
                    "unknown",
                    endpoint, p.what, detail)));
  }

  // The error of the connect or handshake phase: nothing was asked of the server.
  std::exception_ptr unreachable(Why why, std::string_view detail) const {
    if (why == Why::timeout) {
      if (phase == Phase::connecting)
        return std::make_exception_ptr(ConnectionError(fmt::format(
            "dlock: cannot connect to Redis at {}: the connect did not complete within connect_timeout {}; nothing "
            "was sent. Check that redis-server is running there and that RedisOptions {} is right",
            endpoint, format_duration(options.connect_timeout), unix_ ? "unix_socket" : "host and port")));
      return std::make_exception_ptr(ConnectionError(fmt::format(
          "dlock: cannot connect to Redis at {}: it accepted the connection but did not answer its {}handshake "
          "within connect_timeout {}; nothing was asked of it yet. The server may be overloaded or paused, or "
          "something other than Redis{} listens there{}",
          endpoint, tls && !hs ? "TLS " : "", format_duration(options.connect_timeout), tls ? " over TLS" : "",
          tls && !hs ? " (a plain-text Redis port does not answer a TLS handshake: then use redis:// without "
                       "RedisOptions tls)"
                     : "")));
    }
    if (why == Why::io && starts_with(detail, "cannot connect"))
      return std::make_exception_ptr(ConnectionError(fmt::format("dlock: {}", detail)));
    return std::make_exception_ptr(ConnectionError(fmt::format(
        "dlock: cannot connect to Redis at {}: the connection failed during its handshake ({}); nothing was asked "
        "of it yet. Check that redis-server is running there{}",
        endpoint, detail,
        tls ? ""
            : " (a server that expects TLS closes plain connections: then set RedisOptions tls or use rediss://)")));
  }

  void fail(Why why, std::string_view detail) {
    if (phase == Phase::broken) return;
    const auto now = Clock::now();
    std::exception_ptr first = phase == Phase::ready ? nullptr : unreachable(why, detail);
    // Written requests: in doubt. A timeout blames the requests that are late.
    std::vector<std::pair<Pending, std::exception_ptr>> done;
    for (Pending& p : inflight) {
      auto e = why != Why::timeout ? in_doubt(p, why, detail)
               : now >= p.due      ? in_doubt(p, Why::timeout, detail)
                                   : in_doubt(p, Why::io, "dropped after another request on it timed out");
      done.emplace_back(std::move(p), std::move(e));
    }
    inflight.clear();
    if (first == nullptr && !done.empty()) first = done.front().second;
    if (first == nullptr) {
      Pending idle;
      idle.what = "the connection's idle time";
      first = in_doubt(idle, why, detail);
    }
    shutdown();
    link_error = fresh(first);
    fail_queued(first, why, detail);
    for (auto& [p, e] : done)
      if (p.done) p.done(RedisOutcome{{}, fresh(e), {}});
    if (events.lost) events.lost(fresh(first));
  }

  void fail_with(std::exception_ptr e) {  // the handshake was refused
    if (phase == Phase::broken) return;
    shutdown();
    link_error = e;
    for (Pending& p : queued)
      if (p.done) p.done(RedisOutcome{{}, fresh(e), {}});
    queued.clear();
    if (events.lost) events.lost(fresh(e));
  }

  // Requests never written: nothing was asked of the server for them.
  void fail_queued(const std::exception_ptr& error, Why why, std::string_view detail) {
    std::deque<Pending> q = std::move(queued);
    queued.clear();
    for (Pending& p : q) {
      if (!p.done) continue;
      // Each error is made in a statement of its own: the temporary that
      // make_exception_ptr copies shares its message buffer (libstdc++'s
      // reference-counted runtime_error string) and must be gone before the
      // error reaches another thread, as fresh() ensures elsewhere.
      std::exception_ptr e;
      bool unsent = false;
      if (why == Why::timeout && p.deadline && Clock::now() >= *p.deadline && !p.deadline_name.empty()) {
        e = std::make_exception_ptr(ConnectionError(fmt::format(
            "dlock: cannot connect to Redis at {}: {} within {} during {}; nothing was asked of it yet", endpoint,
            hs ? "it did not answer the handshake" : "the connect did not complete", p.deadline_name, p.what)));
      } else if (ready_flag) {
        e = std::make_exception_ptr(ConnectionError(
            fmt::format("dlock: the connection to Redis at {} broke before {} was sent ({}); nothing was asked of it",
                        endpoint, p.what, detail)));
        unsent = true;
      } else {
        e = fresh(error);
      }
      RedisOutcome o{{}, std::move(e), {}};
      o.unsent = unsent;
      p.done(std::move(o));
    }
  }

  void fail_pending() {  // a request for a link already broken: as the link's own error if it never got ready
    if (link_error && !ready_flag) {
      for (Pending& p : queued)
        if (p.done) p.done(RedisOutcome{{}, fresh(link_error), {}});
      queued.clear();
      return;
    }
    fail_queued(std::make_exception_ptr(ConnectionError(
                    fmt::format("dlock: the connection to Redis at {} is broken; nothing was asked of it", endpoint))),
                Why::closed, "broken");
  }

  void shutdown() noexcept {
    phase = Phase::broken;
    broken_flag = true;
    error_code ec;
    timer.cancel();
    resolver.cancel();
    // No QUIT and no TLS close_notify: closing is enough, and a dropped
    // connection must not wait for a server that stopped answering. An
    // asynchronous caller's executor may hold a duplicate of the descriptor
    // (AsyncSockets): shutdown() ends the connection for it too.
    if (setup.caller_io && fd() >= 0) (void)::shutdown(fd(), SHUT_RDWR);
    if (const int f = quiet_fd.exchange(-1); f >= 0) ::close(f);  // out of the reactor: closed here
    if (tcp_) tcp_->close(ec);
    if (unix_) unix_->close(ec);
    if (tls) tls->next_layer().close(ec);
  }
};

// ---- An asynchronous caller's exchange (RedisLink::send_here) ----

// The links' sockets as seen by one execution context (a caller's): a
// duplicate of each link's descriptor registered once with that context's
// reactor, kept while the link lives and dropped when the context shuts down
// (services shut down in reverse order of creation: this one is created
// after the reactor, so its descriptors go first). Used only by the caller
// that has the link (Owner::caller_async).
class AsyncSockets : public asio::execution_context::service {
 public:
  using key_type = AsyncSockets;
  static inline asio::execution_context::id id;
  explicit AsyncSockets(asio::execution_context& ctx) : service(ctx) {}

  struct Entry {
    std::weak_ptr<RedisLink::Impl> link;
    std::shared_ptr<asio::posix::stream_descriptor> sock;
  };

  // The context's socket for `link` (opened on first use, with `io`, an
  // executor of this context's io_context); null if it cannot be opened (out
  // of descriptors) or the context is shutting down.
  std::shared_ptr<asio::posix::stream_descriptor> get(const std::shared_ptr<RedisLink::Impl>& link,
                                                      const asio::any_io_executor& io) {
    std::lock_guard lk(mu_);
    if (shut_) return nullptr;
    if (auto it = socks_.find(link.get()); it != socks_.end() && !it->second.link.expired()) return it->second.sock;
    std::erase_if(socks_, [](const auto& e) {
      auto l = e.second.link.lock();
      return !l || l->broken_flag;
    });
    auto sock = std::make_shared<asio::posix::stream_descriptor>(io);
    const int dup = ::fcntl(link->fd(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return nullptr;
    error_code ec;
    sock->assign(dup, ec);
    if (ec) {
      ::close(dup);
      return nullptr;
    }
    socks_.insert_or_assign(link.get(), Entry{link, sock});
    return sock;
  }

 private:
  void shutdown() override {
    std::unordered_map<const RedisLink::Impl*, Entry> socks;
    {
      std::lock_guard lk(mu_);
      shut_ = true;
      socks.swap(socks_);
    }
    for (auto& [link, e] : socks) {
      error_code ec;
      e.sock->close(ec);
    }
  }
  std::mutex mu_;
  bool shut_ = false;
  std::unordered_map<const RedisLink::Impl*, Entry> socks_;  // by link (an expired entry's address may be reused)
};

// Runs on the caller's executor: the link's socket as its context sees it
// (AsyncSockets) and a timer for the request's deadline. The link is the
// caller's (Owner::caller_async) until finish().
struct AsyncHere : std::enable_shared_from_this<AsyncHere> {
  using Impl = RedisLink::Impl;
  AsyncHere(std::shared_ptr<Impl> l, std::shared_ptr<asio::posix::stream_descriptor> s, const asio::any_io_executor& ex)
      : link(std::move(l)), sock(std::move(s)), timer(ex) {}
  AsyncHere(const AsyncHere&) = delete;
  AsyncHere& operator=(const AsyncHere&) = delete;
  // Destroyed unfinished: the executor's context was destroyed during the
  // request. Nobody waits for its outcome; the link is dropped.
  ~AsyncHere() {
    if (finished) return;
    link->broken_flag = true;
    link->here_why = Impl::Why::io;
    link->here_detail = "the caller's executor was destroyed during the request";
    link->here_error = nullptr;
    link->here.reset();
    link->async_seize_hint = Clock::time_point::max().time_since_epoch().count();
    link->caller_release(true);
  }

  // Writes the rest of the request (if the first send did not take it all), then reads.
  void start(std::string payload, std::size_t off, Impl::Step sent) {
    std::lock_guard held(mu);
    timer.expires_at(link->here->due);
    timer.async_wait([self = shared_from_this()](const error_code& ec) {
      if (!ec) self->on_timer();
    });
    if (sent == Impl::Step::failed) {
      asio::post(timer.get_executor(), [self = shared_from_this()] {
        std::unique_lock lk(self->mu);
        self->finish(lk);
      });
      return;
    }
    if (sent == Impl::Step::done) return read();
    auto buf = std::make_shared<std::string>(std::move(payload));
    asio::async_write(
        *sock, asio::buffer(*buf) + off,
        asio::bind_executor(timer.get_executor(), [self = shared_from_this(), buf](const error_code& ec, std::size_t) {
          std::unique_lock lk(self->mu);
          if (self->finished) return;
          if (ec) {
            self->link->here_fail(Impl::Why::io, ec.message());
            return self->finish(lk);
          }
          self->read();
        }));
  }

  // With mu held.
  void read() {
    // The completion runs through the caller's executor (a strand's, say),
    // inline when that executor is free: the reply is read there.
    sock->async_read_some(
        asio::buffer(link->rbuf),
        asio::bind_executor(timer.get_executor(), [self = shared_from_this()](const error_code& ec, std::size_t n) {
          std::unique_lock lk(self->mu);
          if (self->finished) return;
          Impl& l = *self->link;
          if (ec) {
            if (l.seized())  // the I/O thread ended the connection: the request was overdue
              l.here_fail(Impl::Why::timeout, {});
            else
              l.here_read_failed(ec == asio::error::eof || ec == asio::error::connection_reset, ec.message());
            return self->finish(lk);
          }
          l.parser.feed(std::string_view(l.rbuf.data(), n));
          if (l.take_replies() != Impl::Step::wait) return self->finish(lk);
          self->read();
        }));
  }

  void on_timer() {
    std::unique_lock lk(mu);
    if (finished) return;
    link->here_fail(Impl::Why::timeout, {});
    finish(lk);
  }

  // The outcome to `done` (here, on the caller's executor); the link given back.
  void finish(std::unique_lock<std::mutex>& lk) {
    finished = true;
    error_code ec;
    timer.cancel(ec);
    if (link->here_error)
      sock->close(ec);  // the link breaks: its socket here goes too (the link's own is closed by the I/O thread)
    link->async_seize_hint = Clock::time_point::max().time_since_epoch().count();
    RedisOutcome out = link->here_finish();
    RedisLink::Done d = std::move(done);
    lk.unlock();
    completing = true;
    struct Reset {
      ~Reset() { completing = false; }
    } reset;
    d(std::move(out));
  }
  static inline thread_local bool completing = false;  // take_caller_completion()

  std::shared_ptr<Impl> link;
  std::shared_ptr<asio::posix::stream_descriptor> sock;
  asio::steady_timer timer;
  RedisLink::Done done;
  std::mutex mu;  // the handlers' (an executor may run them on several threads)
  bool finished = false;
};

bool RedisLink::Impl::send_here(RedisCall& call, const asio::any_io_executor& ex, Done& done) {
  if (!setup.caller_io || tls || events.push || call.request.commands() == 0 || broken_flag) return false;
  const auto due = request_due(call.deadline, Clock::now());
  {
    std::lock_guard lk(own_mu);
    if (!inbox.empty() || !link_state::caller_claim_async(own, due)) return false;  // a request sent before goes first
  }
  if (!peek_open()) {  // closed by the server while idle: nothing written, the link dropped
    caller_release(true);
    return false;
  }
  std::shared_ptr<AsyncHere> op;
  try {
    const asio::any_io_executor& io = ex;  // an io_context's (reactor_executor)
    if (io.target<asio::io_context::executor_type>() == nullptr) throw std::bad_alloc();  // the I/O thread's way
    auto& caller_ctx = asio::query(io, asio::execution::context);
    // The reactor's services first, so that AsyncSockets shuts down before them.
    if (!asio::has_service<AsyncSockets>(caller_ctx)) asio::posix::stream_descriptor reactor_first(io);
    auto sock = asio::use_service<AsyncSockets>(caller_ctx).get(shared_from_this(), io);
    if (!sock) throw std::bad_alloc();
    op = std::make_shared<AsyncHere>(shared_from_this(), std::move(sock), ex);
  } catch (...) {                 // out of descriptors or memory: the I/O thread's way
    if (op) op->finished = true;  // nothing was written: the link stays as it was
    caller_release(false);
    return false;
  }
  op->done = std::move(done);
  async_seize_hint = saturating_add(due, async_grace).time_since_epoch().count();
  here_start(call);
  std::string payload(call.request.payload());
  std::size_t off = 0;
  const Step sent = send_some(payload, off);
  op->start(std::move(payload), off, sent);
  return true;
}

// ---- RedisLink ----

RedisLink::RedisLink(std::shared_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
RedisLink::RedisLink(RedisLink&&) noexcept = default;
RedisLink& RedisLink::operator=(RedisLink&& other) noexcept {
  if (this != &other) {
    release();
    impl_ = std::move(other.impl_);
  }
  return *this;
}
RedisLink::~RedisLink() { release(); }

void RedisLink::release() noexcept {
  if (!impl_) return;
  if (impl_->pid != ::getpid()) {
    // Inherited through fork(): close the descriptor (the parent keeps its
    // session) and never touch the parent's I/O state; the objects are leaked.
    const int fd = impl_->fd();
    if (fd >= 0) ::close(fd);
    (void)new (std::nothrow) std::shared_ptr<Impl>(std::move(impl_));
    impl_.reset();
    return;
  }
  close();
  impl_.reset();
}

RedisLink RedisLink::open(const RedisOptions& options, RedisLinkSetup setup, RedisLinkEvents events) {
  auto impl = std::make_shared<Impl>(options, setup, std::move(events));
  asio::post(impl->ctx, [impl] { impl->start(); });
  return RedisLink(std::move(impl));
}

void RedisLink::send(RedisCall call, Done done) {
  Impl::Pending p;
  p.want = call.request.commands();
  p.payload = std::string(call.request.payload());
  p.what = std::move(call.what);
  p.deadline = call.deadline;
  p.deadline_name = std::move(call.deadline_name);
  p.done = std::move(done);
  if (p.want == 0) {
    if (p.done) p.done(RedisOutcome{{}, nullptr, Clock::now()});
    return;
  }
  bool first;
  {
    std::lock_guard lk(impl_->own_mu);
    first = impl_->inbox.empty();
    impl_->inbox.push_back(std::move(p));
  }
  if (first) asio::post(impl_->ctx, [impl = impl_] { impl->drain(); });
}

std::vector<RedisValue> RedisLink::exec(RedisCall call) {
  if (begin_here(call)) {
    RedisOutcome o = end_here();
    if (o.error) std::rethrow_exception(o.error);
    return std::move(o.replies);
  }
  RedisGather g(1);
  send(std::move(call), g.slot(0));
  auto out = g.wait();
  if (out[0].error) std::rethrow_exception(out[0].error);
  return std::move(out[0].replies);
}

void RedisLink::close() noexcept {
  if (!impl_ || impl_->broken_flag) return;
  impl_->broken_flag = true;  // never checked out or taken for a caller's exchange again
  try {
    asio::post(impl_->ctx, [impl = impl_] {
      if (impl->io_claim(true)) return impl->fail(Impl::Why::closed, "closed by dlock");
      impl->arm_timer();  // when the caller is done (or seized if its executor stopped)
    });
  } catch (...) {  // out of memory: the link stays open until the process ends
  }
}

bool RedisLink::begin_here(RedisCall& call) { return impl_->begin_here(call); }
bool RedisLink::send_here(RedisCall& call, const asio::any_io_executor& ex, Done& done) {
  return impl_->send_here(call, ex, done);
}
RedisOutcome RedisLink::end_here() { return impl_->end_here(); }
bool RedisLink::check_idle() noexcept { return impl_ && impl_->check_idle(); }
bool RedisLink::broken() const noexcept { return !impl_ || impl_->broken_flag; }
bool RedisLink::ready() const noexcept { return impl_ && impl_->ready_flag; }
bool RedisLink::inherited() const noexcept { return impl_ && impl_->pid != ::getpid(); }
int RedisLink::fd() const noexcept { return impl_ ? impl_->fd() : -1; }
const std::string& RedisLink::endpoint() const noexcept { return impl_->endpoint; }
const redis_proto::ScriptShas& RedisLink::shas() const noexcept { return impl_->shas; }

std::optional<asio::any_io_executor> reactor_executor(const asio::any_io_executor& ex) {
  asio::any_io_executor io = ex;
  if (const auto* strand = ex.target<asio::strand<asio::any_io_executor>>()) io = strand->get_inner_executor();
  const auto* plain = io.target<asio::io_context::executor_type>();
  if (plain == nullptr) return std::nullopt;
  return asio::any_io_executor(asio::prefer(*plain, asio::execution::outstanding_work.untracked));
}

bool take_caller_completion() noexcept { return std::exchange(AsyncHere::completing, false); }

void redis_io_after(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto& ctx = IoThread::get().context();
  auto timer = std::make_shared<asio::steady_timer>(ctx, delay);
  timer->async_wait([timer, fn = std::move(fn)](const error_code&) {
    try {
      fn();
    } catch (...) {  // a user's timer must not stop the I/O thread
    }
  });
}

// ---- RedisGather ----

struct RedisGather::State {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RedisOutcome> outcomes;
  std::size_t left;
};

RedisGather::RedisGather(std::size_t slots) : state_(std::make_shared<State>()) {
  state_->outcomes.resize(slots);
  state_->left = slots;
}

RedisLink::Done RedisGather::slot(std::size_t i) {
  return [s = state_, i](RedisOutcome o) {
    {
      std::lock_guard lk(s->mu);
      s->outcomes[i] = std::move(o);
      --s->left;
    }
    s->cv.notify_all();
  };
}

std::vector<RedisOutcome> RedisGather::wait() {
  std::unique_lock lk(state_->mu);
  state_->cv.wait(lk, [&] { return state_->left == 0; });
  return std::move(state_->outcomes);
}

}  // namespace dlock::detail
