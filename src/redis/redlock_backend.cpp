// RedlockBackend: the Backend operations as parallel rounds over N Redis
// nodes (detail::fan_out, detail/redis_client.hpp), judged by the pure rules of
// detail/redlock_math.hpp.
#include <dlock/redlock.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/random.hpp>
#include <dlock/detail/redis_async.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_subscriber.hpp>
#include <dlock/detail/redis_client.hpp>
#include <dlock/detail/redlock_calls.hpp>
#include <dlock/detail/redlock_math.hpp>
#include <dlock/error.hpp>
#include <dlock/options.hpp>

namespace dlock {

namespace detail {

void validate(const RedlockOptions& o) {
  const RedisOptions defaults{};
  if (o.nodes.size() < 3 && !(o.allow_fewer_than_three && !o.nodes.empty()))
    invalid_field("RedlockOptions.nodes",
                  o.nodes.empty() ? std::string("must name the Redis servers (at least 3, 5 recommended)")
                                  : std::string("must name at least 3 independent Redis servers (5 recommended); "
                                                "fewer tolerate no failure at all (set allow_fewer_than_three to "
                                                "accept that)"),
                  fmt::format("{} node{}", o.nodes.size(), o.nodes.size() == 1 ? "" : "s"));
  if (o.key_prefix.find_first_of("{}") != std::string::npos)
    invalid_field("RedlockOptions.key_prefix", "must not contain '{' or '}' (they would break the {name} hash tag)",
                  fmt::format("\"{}\"", o.key_prefix));
  for (std::size_t i = 0; i < o.nodes.size(); ++i) {
    const std::string field = fmt::format("RedlockOptions.nodes[{}]", i);
    RedisOptions node = o.nodes[i];
    if (node.key_prefix != defaults.key_prefix && node.key_prefix != o.key_prefix)
      invalid_field(field + ".key_prefix",
                    fmt::format("must be left unset or equal RedlockOptions.key_prefix (\"{}\"): Redlock uses one "
                                "prefix on all nodes",
                                o.key_prefix),
                    fmt::format("\"{}\"", node.key_prefix));
    node.key_prefix = o.key_prefix;
    try {
      validate(node);
    } catch (const InvalidArgument& e) {  // name the node: "RedisOptions.port" -> "RedlockOptions.nodes[2].port"
      std::string m = e.what();
      if (const auto at = m.find("RedisOptions."); at != std::string::npos) m.replace(at, 12, field);
      throw InvalidArgument(m);
    }
    for (std::size_t j = 0; j < i; ++j) {  // the database index does not make another server
      if (redis_endpoint(o.nodes[j]) == redis_endpoint(o.nodes[i]))
        invalid_field(field,
                      fmt::format("must be a different server than nodes[{}] ({}, database {}): a server listed "
                                  "twice, also with another database index, would vote twice",
                                  j, redis_endpoint(o.nodes[j]), o.nodes[j].database),
                      fmt::format("{} database {}", redis_endpoint(o.nodes[i]), o.nodes[i].database));
    }
  }
  if (!(o.clock_drift_factor >= 0.0 && o.clock_drift_factor < 1.0))  // also rejects NaN
    invalid_field("RedlockOptions.clock_drift_factor", "must be in [0, 1)", fmt::format("{}", o.clock_drift_factor));
  if (o.drift_constant < o.drift_constant.zero())
    invalid_field("RedlockOptions.drift_constant", "must not be negative", format_duration(o.drift_constant));
  if (o.node_timeout <= o.node_timeout.zero())
    invalid_field("RedlockOptions.node_timeout", "must be positive", format_duration(o.node_timeout));
}

namespace {

// Where a node's server listens, as comparable strings: "ip port" for each
// address its host resolves to (blocking getaddrinfo), or "unix <path>"
// (resolved through symlinks when the socket exists). Empty when the host
// does not resolve now: such a node is then only compared by run_id.
std::vector<std::string> server_addresses(const RedisOptions& o) {
  std::vector<std::string> out;
  if (!o.unix_socket.empty()) {
    char real[PATH_MAX];
    out.push_back("unix " + std::string(::realpath(o.unix_socket.c_str(), real) != nullptr ? real : o.unix_socket));
    return out;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  if (::getaddrinfo(o.host.c_str(), std::to_string(o.port).c_str(), &hints, &list) != 0) return out;
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* addr = a->ai_family == AF_INET
                           ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr)
                           : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr);
    if (::inet_ntop(a->ai_family, addr, text, sizeof text) != nullptr)
      out.push_back(fmt::format("{} {}", text, o.port));
  }
  ::freeaddrinfo(list);
  return out;
}

}  // namespace

void check_distinct_servers(const RedlockOptions& o) {
  std::vector<std::vector<std::string>> addresses;
  addresses.reserve(o.nodes.size());
  for (const RedisOptions& n : o.nodes) addresses.push_back(server_addresses(n));
  for (std::size_t i = 0; i < addresses.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      for (const std::string& a : addresses[i])
        if (std::find(addresses[j].begin(), addresses[j].end(), a) != addresses[j].end())
          throw InvalidArgument(fmt::format(
              "dlock: RedlockOptions.nodes[{}] ({}) is the same server as nodes[{}] ({}): both reach {}; a server "
              "listed twice would vote twice, and one server losing its data could then let a second owner in. "
              "List each Redis server once",
              i, redis_endpoint(o.nodes[i]), j, redis_endpoint(o.nodes[j]), a));
}

}  // namespace detail

namespace {

using detail::RedlockVotes;
using detail::redis_proto::ScriptCall;
namespace proto = detail::redis_proto;

std::string_view without_prefix(std::string_view m) { return m.substr(0, 7) == "dlock: " ? m.substr(7) : m; }

// Why the nodes in `failures` failed, as "ep: reason; ep: reason".
struct Failures {
  std::vector<std::pair<std::string_view, std::exception_ptr>> list;  // endpoint, error
  void add(std::string_view endpoint, std::exception_ptr e) { list.emplace_back(endpoint, std::move(e)); }

  [[nodiscard]] std::string describe() const {
    std::string out;
    for (const auto& [endpoint, e] : list) {
      if (!out.empty()) out += "; ";
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        out += without_prefix(x.what());
      } catch (...) {
        out += fmt::format("{}: unknown error", endpoint);
      }
    }
    return out;
  }
  // The error a failed round throws: ServerError when a node refused (so a
  // misconfiguration is not retried as an outage); else TimeoutError when a
  // node was sent the request and did not answer in time (it may have done
  // it: the round's outcome is in doubt, issue 11 item 19); else
  // ConnectionError (no failed node was asked anything, or it dropped the
  // connection).
  [[nodiscard]] std::exception_ptr error(const std::string& head) const {
    const std::string message = fmt::format("{}: {}", head, describe());
    bool in_doubt = false;
    for (const auto& [endpoint, e] : list) {
      try {
        std::rethrow_exception(e);
      } catch (const ServerError& x) {
        return std::make_exception_ptr(ServerError(message, static_cast<errc>(x.code().value())));
      } catch (const TimeoutError&) {
        in_doubt = true;
      } catch (...) {
      }
    }
    if (in_doubt)
      return std::make_exception_ptr(TimeoutError(fmt::format(
          "{} (the outcome is unknown: a node that was sent the request did not answer and may have done it)",
          message)));
    return std::make_exception_ptr(ConnectionError(message));
  }
};

}  // namespace

struct RedlockBackend::State {
  explicit State(RedlockOptions o)
      : options((detail::validate(o), detail::check_distinct_servers(o), std::move(o))),
        clock(options.clock != nullptr ? *options.clock : steady_clock()),
        quorum(detail::redlock_quorum(options.nodes.size())),
        subscriber(subscriber_servers(options)) {
    std::string eps;
    for (const RedisOptions& n : options.nodes) {
      RedisOptions node = n;
      node.key_prefix = options.key_prefix;
      nodes.push_back(std::make_unique<detail::RedisClient>(std::move(node), detail::RedisLinkSetup{.identify = true}));
      ptrs.push_back(nodes.back().get());
      if (!eps.empty()) eps += ',';
      eps += nodes.back()->endpoint();
    }
    endpoint = fmt::format("redlock({})", eps);
    deadline_name = fmt::format("the Redlock node_timeout {}", detail::format_duration(options.node_timeout));
  }

  // One round on the nodes with a non-empty batch, all bounded by node_timeout.
  [[nodiscard]] std::vector<detail::RedisOutcome> fan_out(const std::vector<std::vector<ScriptCall>>& batches,
                                                          std::string_view what) const {
    return detail::fan_out(ptrs, batches, options.node_timeout, what, deadline_name);
  }

  // The nodes for the pub/sub subscriber: a (re)connect with its handshake,
  // and a SUBSCRIBE's acknowledgement, are each bounded by node_timeout.
  static std::vector<detail::RedisSubscriber::Server> subscriber_servers(const RedlockOptions& o) {
    std::vector<detail::RedisSubscriber::Server> servers;
    servers.reserve(o.nodes.size());
    for (const RedisOptions& n : o.nodes) {
      RedisOptions node = n;
      node.key_prefix = o.key_prefix;
      node.connect_timeout = o.node_timeout;
      node.command_timeout = o.node_timeout;
      servers.push_back({node, detail::redis_endpoint(node)});
    }
    return servers;
  }

  [[nodiscard]] std::size_t size() const noexcept { return nodes.size(); }

  Clock::duration drift(std::chrono::milliseconds ttl, std::string_view what) const {
    const auto d = detail::redlock_drift(ttl, options.clock_drift_factor, options.drift_constant);
    if (ttl <= d)
      throw InvalidArgument(fmt::format(
          "dlock: {} on {}: ttl {} is not above the Redlock clock-drift allowance {} (ttl * clock_drift_factor + "
          "drift_constant); use a longer ttl",
          what, endpoint, detail::format_duration(ttl), detail::format_duration(d)));
    return d;
  }

  // Two nodes whose handshakes reported the same run_id are one server (a
  // spelling the constructor could not compare: a unix socket and a TCP
  // address, a name that did not resolve, a proxy): the error every acquire
  // then fails with; null when all differ.
  [[nodiscard]] std::exception_ptr same_server() const {
    std::vector<std::string> ids;
    ids.reserve(size());
    for (const auto& n : nodes) ids.push_back(n->facts().run_id());
    for (std::size_t i = 0; i < ids.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (!ids[i].empty() && ids[i] == ids[j])
          return std::make_exception_ptr(ServerError(fmt::format(
              "dlock: Redlock on {}: nodes[{}] ({}) and nodes[{}] ({}) are the same Redis server (run_id {}); a "
              "server listed twice would vote twice, and one server losing its data could then let a second owner "
              "in. List each Redis server once in RedlockOptions.nodes",
              endpoint, j, nodes[j]->endpoint(), i, nodes[i]->endpoint(), ids[i])));
    return nullptr;
  }

  // The mutex's calls on lock `name` (validated); `request`: with its acquire.
  [[nodiscard]] detail::RedlockCalls mutex_calls(std::string_view name, const AcquireRequest* request = nullptr) const {
    detail::RedisKeys keys = detail::redis_keys(options.key_prefix, name);
    detail::RedlockCalls c{
        .key = keys.lock, .fence = keys.fence, .channel = keys.channel, .acquire = {}, .release = {}, .extend = {}};
    if (request != nullptr)
      c.acquire = [keys, owner = std::string(request->owner.str()), ttl = request->ttl](
                      std::chrono::milliseconds fence_floor, std::chrono::microseconds clock_floor) {
        return proto::redlock_acquire_call(keys, owner, ttl, fence_floor, clock_floor);
      };
    c.release = [keys](std::string_view owner, proto::Publish publish) {
      return proto::release_call(keys, owner, publish);
    };
    c.extend = [lock = keys.lock](std::string_view owner, std::chrono::milliseconds ttl) {
      return proto::extend_call(lock, owner, ttl);
    };
    return c;
  }

  // One release round: the release script on every node (or those with
  // only[i] set), in parallel. Votes: yes = deleted our key, no = not ours
  // or absent, failed. Nodes left out count as neither. A release that is
  // not `published` (a failed attempt's cleanup) wakes no waiter.
  RedlockVotes release_round(const detail::RedlockCalls& calls, std::string_view owner, Failures* failures,
                             const std::vector<bool>* only = nullptr, bool published = true) {
    const auto batches = release_batches(calls, owner, only, published);
    return release_votes(calls, batches, fan_out(batches, fmt::format("release of '{}'", calls.key)), failures);
  }
  [[nodiscard]] std::vector<std::vector<ScriptCall>> release_batches(const detail::RedlockCalls& calls,
                                                                     std::string_view owner,
                                                                     const std::vector<bool>* only = nullptr,
                                                                     bool published = true) const {
    std::vector<std::vector<ScriptCall>> batches(size());
    for (std::size_t i = 0; i < size(); ++i)
      if (only == nullptr || (*only)[i])
        batches[i].push_back(calls.release(owner, published ? proto::Publish::yes : proto::Publish::no));
    return batches;
  }
  // The votes of a release round's replies (see release_round).
  RedlockVotes release_votes(const detail::RedlockCalls& calls, const std::vector<std::vector<ScriptCall>>& batches,
                             const std::vector<detail::RedisOutcome>& replies, Failures* failures) {
    RedlockVotes v;
    for (std::size_t i = 0; i < size(); ++i) {
      if (batches[i].empty()) continue;
      try {
        if (replies[i].error) std::rethrow_exception(replies[i].error);
        const auto r = detail::parse_release_reply(replies[i].replies[0], nodes[i]->endpoint(), calls.key);
        if (!r.publish_error.empty())
          nodes[i]->facts().note_publish_refusal(nodes[i]->endpoint(), calls.channel, r.publish_error);
        ++(r.released ? v.yes : v.no);
      } catch (...) {
        ++v.failed;
        if (failures != nullptr) failures->add(nodes[i]->endpoint(), std::current_exception());
      }
    }
    return v;
  }

  // The outcome of a release round (throws when it is unknown).
  ReleaseResult release_result(std::string_view name, const RedlockVotes& v, const Failures& failures) const {
    switch (detail::redlock_judge_release(v)) {
      case detail::RedlockRelease::released:
        return ReleaseResult::released;
      case detail::RedlockRelease::not_held:
        return ReleaseResult::not_held;
      case detail::RedlockRelease::unknown:
        break;
    }
    std::rethrow_exception(failures.error(fmt::format(
        "dlock: Redlock release of '{}' reached only {} of {} nodes (quorum {}) and none of them had the lock; it "
        "expires by its TTL",
        name, v.total() - v.failed, size(), quorum)));
  }

  // The verdict of an extend round on `it`, the call at position b of every
  // node's batch: valid_until set (extended), error set (unknown), or true:
  // lost (the caller releases what is left of it).
  bool judge_extend(ExtendItem& it, const std::vector<detail::RedisOutcome>& replies, std::size_t b,
                    std::string_view lock_key, Clock::duration drift) const {
    RedlockVotes v;
    Failures failures;
    for (std::size_t n = 0; n < size(); ++n) {
      try {
        if (replies[n].error) std::rethrow_exception(replies[n].error);
        ++(detail::parse_flag_reply(replies[n].replies[b], nodes[n]->endpoint(), "extend", lock_key) ? v.yes : v.no);
      } catch (...) {
        ++v.failed;
        failures.add(nodes[n]->endpoint(), std::current_exception());
      }
    }
    const Clock::duration validity = detail::redlock_validity(it.ttl, clock.now() - it.started, drift);
    switch (detail::redlock_judge_extend(v, validity)) {
      case detail::RedlockExtend::extended:
        it.valid_until = detail::redlock_valid_until(it.started, it.ttl, drift);
        return false;
      case detail::RedlockExtend::lost:
        return true;
      case detail::RedlockExtend::unknown:
        it.error = failures.error(fmt::format(
            "dlock: Redlock extend of '{}' reached a quorum of neither yes nor no ({} extended, {} not held, {} "
            "failed, quorum {}); the lock stays valid until its current validity ends",
            it.name, v.yes, v.no, v.failed, quorum));
        return false;
    }
    return false;
  }

  // One acquire attempt: its rounds (acquire, fencing counter raise, the
  // cleanup of a failed attempt) and their judgement, shared by the blocking
  // try_acquire (which sends each round with fan_out) and the asynchronous
  // one (async_fan_out).
  struct Attempt {
    // `family`: the lease family's calls, with this request's acquire.
    Attempt(State& state, const AcquireRequest& request, detail::RedlockCalls family)
        : s(state),
          name(request.name),
          owner(request.owner.str()),
          ttl(request.ttl),
          started(request.started),
          drift((detail::validate_redis_lock_name(request.name),
                 s.drift(request.ttl, fmt::format("acquire of '{}'", request.name)))),
          calls(std::move(family)),
          values(s.size()),
          may_hold(s.size(), false) {}

    // The first round. The counters' floor, one for every node
    // (docs/safety.md): this client's wall clock in µs. Each node also floors
    // at its own clock less redlock_clock_lag_us, which only matters if this
    // clock lags the nodes'.
    [[nodiscard]] std::vector<std::vector<ScriptCall>> acquire_batches() {
      const auto floor_us =
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch());
      std::vector<std::vector<ScriptCall>> batches(s.size());
      for (std::size_t i = 0; i < s.size(); ++i)
        batches[i].push_back(calls.acquire(s.nodes[i]->options().fence_ttl, floor_us));
      round_start = std::chrono::steady_clock::now();
      return batches;
    }
    [[nodiscard]] std::string what() const { return fmt::format("acquire of '{}'", name); }

    void tally(const std::vector<detail::RedisOutcome>& replies) {
      {
        std::vector<std::chrono::nanoseconds> answered;
        for (const detail::RedisOutcome& r : replies)
          if (!r.error) answered.push_back(r.answered - round_start);
        if (const auto sample = detail::redlock_time_to_quorum(std::move(answered), s.quorum)) {
          const std::chrono::nanoseconds old(s.round_ns->load(std::memory_order_relaxed));
          s.round_ns->store(detail::redlock_round_estimate(old, *sample).count(),
                            std::memory_order_relaxed);  // racy between threads: an estimate
        }
      }
      for (std::size_t i = 0; i < s.size(); ++i) {
        try {
          if (replies[i].error) std::rethrow_exception(replies[i].error);
          const auto r = detail::parse_acquire_reply(replies[i].replies[0], s.nodes[i]->endpoint(), calls.key);
          if (r.acquired) {
            values[i] = r.token;
            may_hold[i] = true;
            ++votes.yes;
          } else {
            ++votes.no;
            if (r.holder_ttl) held_ttls.push_back(*r.holder_ttl);
          }
        } catch (...) {
          ++votes.failed;
          may_hold[i] = true;  // its script may have run
          failures.add(s.nodes[i]->endpoint(), std::current_exception());
        }
      }
      judged = detail::redlock_judge_acquire(votes, started, ttl, drift, s.clock);
      error = s.same_server();  // why a granted round still fails
      if (!error && judged.outcome == detail::RedlockAcquire::granted) {
        token = detail::redlock_token(values);
        raise = detail::redlock_nodes_to_raise(values, *token);
      }
    }

    // Bring the granting nodes' fencing counters up to the token, so that a
    // quorum of counters is at least the token (docs/safety.md). In steady
    // state all nodes grant together and their counters agree: no round.
    [[nodiscard]] bool raise_needed() const { return !raise.empty(); }
    [[nodiscard]] std::vector<std::vector<ScriptCall>> raise_batches() const {
      std::vector<std::vector<ScriptCall>> raises(s.size());
      for (std::size_t i : raise)
        raises[i].push_back(calls.raise
                                ? calls.raise(owner, *token, ttl, s.nodes[i]->options().fence_ttl)
                                : proto::fence_raise_call(calls.fence, *token, ttl, s.nodes[i]->options().fence_ttl));
      return raises;
    }
    [[nodiscard]] std::string raise_what() const { return fmt::format("fencing counter update of '{}'", name); }
    void tally_raise(const std::vector<detail::RedisOutcome>& raised) {
      Failures raise_failures;
      std::size_t at_token = votes.yes - raise.size();
      for (std::size_t i : raise) {
        try {
          if (raised[i].error) std::rethrow_exception(raised[i].error);
          (void)detail::parse_flag_reply(raised[i].replies[0], s.nodes[i]->endpoint(), "fence raise", calls.fence);
          ++at_token;
        } catch (...) {
          raise_failures.add(s.nodes[i]->endpoint(), std::current_exception());
        }
      }
      if (at_token < s.quorum) {
        error = raise_failures.error(fmt::format(
            "dlock: Redlock acquire of '{}' on {} got a quorum but could bring only {} fencing counters (quorum {}) "
            "up to its token, so a later holder might get a lower token; released it",
            name, s.endpoint, at_token, s.quorum));
      } else {
        judged = detail::redlock_judge_acquire(votes, started, ttl, drift, s.clock);
      }
    }

    [[nodiscard]] bool granted() const { return !error && judged.outcome == detail::RedlockAcquire::granted; }
    [[nodiscard]] Grant<NoHandle> grant() const {
      return Grant<NoHandle>{.token = token, .valid_until = judged.valid_until};
    }

    // Not acquired: free what this attempt got, on all nodes at once that may
    // hold it (those that granted, and those that did not answer: their script
    // may have run; a node that answered "held" has nothing of ours), before
    // anyone retries, so competing clients do not keep splitting the votes.
    // Unpublished: waking every waiter for a lock that was never held would
    // only have them split the votes again.
    [[nodiscard]] bool cleanup_needed() const { return votes.yes + votes.failed > 0; }
    [[nodiscard]] std::vector<std::vector<ScriptCall>> cleanup_batches() const {
      return s.release_batches(calls, owner, &may_hold, false);
    }

    // The outcome of an attempt that was not granted (after its cleanup):
    // Contended, or the error thrown.
    [[nodiscard]] AcquireResult<NoHandle> not_granted() const {
      if (error) std::rethrow_exception(error);
      switch (judged.outcome) {
        case detail::RedlockAcquire::contended:
          return Contended{detail::redlock_holder_ttl(s.quorum, votes.yes, held_ttls)};
        case detail::RedlockAcquire::unavailable:
          std::rethrow_exception(
              failures.error(fmt::format("dlock: Redlock acquire of '{}' reached only {} of {} nodes (quorum {})", name,
                                         votes.total() - votes.failed, s.size(), s.quorum)));
        case detail::RedlockAcquire::too_slow:
        case detail::RedlockAcquire::granted:
          break;
      }
      throw TimeoutError(fmt::format(
          "dlock: Redlock acquire of '{}' on {} got a quorum but took {} of its ttl {} (drift allowance {}), leaving "
          "no validity; released it. Raise the ttl or lower node_timeout",
          name, s.endpoint,
          detail::format_duration(std::chrono::duration_cast<std::chrono::microseconds>(s.clock.now() - started)),
          detail::format_duration(ttl),
          detail::format_duration(std::chrono::duration_cast<std::chrono::microseconds>(drift))));
    }

    State& s;
    const std::string name;
    const std::string owner;
    const std::chrono::milliseconds ttl;
    const TimePoint started;
    const Clock::duration drift;
    const detail::RedlockCalls calls;
    std::chrono::steady_clock::time_point round_start{};
    RedlockVotes votes;
    Failures failures;
    std::vector<std::optional<std::uint64_t>> values;
    std::vector<bool> may_hold;  // granted, or failed (its script may have run)
    std::vector<std::chrono::milliseconds> held_ttls;
    detail::RedlockAcquireJudgement judged{};
    std::exception_ptr error;
    std::optional<std::uint64_t> token;
    std::vector<std::size_t> raise;  // nodes whose counters are below the token
  };

  const RedlockOptions options;
  const Clock& clock;
  const std::size_t quorum;
  std::vector<std::unique_ptr<detail::RedisClient>> nodes;
  std::vector<detail::RedisClient*> ptrs;
  std::string endpoint;
  std::string deadline_name;  // "the Redlock node_timeout 50ms"
  // redlock_round_estimate of the acquire rounds' time to quorum, in ns; shared with the
  // subscriptions, which spread woken waiters over it (redlock_wake_spread).
  std::shared_ptr<std::atomic<std::int64_t>> round_ns = std::make_shared<std::atomic<std::int64_t>>(0);
  detail::RedisSubscriber subscriber;  // no thread or connection before the first subscribe
};

RedlockBackend::RedlockBackend(RedlockOptions options) : state_(std::make_shared<State>(std::move(options))) {}

std::string_view RedlockBackend::endpoint() const noexcept { return state_->endpoint; }
const RedlockOptions& RedlockBackend::options() const noexcept { return state_->options; }
std::size_t RedlockBackend::node_count() const noexcept { return state_->size(); }
std::size_t RedlockBackend::quorum() const noexcept { return state_->quorum; }

AcquireResult<RedlockBackend::Handle> RedlockBackend::try_acquire(const AcquireRequest& request) {
  detail::validate_redis_lock_name(request.name);
  return acquire_by(request, state_->mutex_calls(request.name, &request));
}

AcquireResult<RedlockBackend::Handle> RedlockBackend::acquire_by(const AcquireRequest& request,
                                                                 detail::RedlockCalls calls) {
  State& s = *state_;
  State::Attempt a(s, request, std::move(calls));
  a.tally(s.fan_out(a.acquire_batches(), a.what()));
  if (a.raise_needed()) a.tally_raise(s.fan_out(a.raise_batches(), a.raise_what()));
  if (a.granted()) return a.grant();
  if (a.cleanup_needed()) {
    const auto batches = a.cleanup_batches();
    (void)s.release_votes(a.calls, batches, s.fan_out(batches, fmt::format("release of '{}'", a.calls.key)), nullptr);
  }
  return a.not_granted();
}

ReleaseResult RedlockBackend::release(std::string_view name, Lease<Handle>& lease) {
  detail::validate_redis_lock_name(name);
  return release_by(name, lease.owner, state_->mutex_calls(name));
}

ReleaseResult RedlockBackend::release_by(std::string_view name, const OwnerId& owner,
                                         const detail::RedlockCalls& calls) {
  State& s = *state_;
  Failures failures;
  const RedlockVotes v = s.release_round(calls, owner.str(), &failures);
  return s.release_result(name, v, failures);
}

std::optional<TimePoint> RedlockBackend::extend_by(std::string_view name, const OwnerId& owner,
                                                   std::chrono::milliseconds ttl, TimePoint started,
                                                   const detail::RedlockCalls& calls) {
  State& s = *state_;
  const Clock::duration drift = s.drift(ttl, fmt::format("extend of '{}'", name));
  const std::vector<std::vector<ScriptCall>> batches(s.size(), {calls.extend(owner.str(), ttl)});
  ExtendItem it{name, &owner, ttl, started};
  if (s.judge_extend(it, s.fan_out(batches, fmt::format("extend of '{}'", name)), 0, calls.key, drift)) {
    // Lost: what is left of it is released, published (it is free now). Best effort.
    (void)s.fan_out(s.release_batches(calls, owner.str()), "release of lost locks");
    return std::nullopt;
  }
  if (it.error) std::rethrow_exception(it.error);
  return it.valid_until;
}

std::vector<detail::RedisOutcome> RedlockBackend::read_round(const detail::redis_proto::ScriptCall& call,
                                                             std::string_view what) const {
  return state_->fan_out(std::vector<std::vector<ScriptCall>>(state_->size(), {call}), what);
}

void RedlockBackend::abandon(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    (void)state_->release_round(state_->mutex_calls(name), owner.str(), nullptr);
  } catch (...) {  // an invalid name or out of memory: best effort, the keys expire by their TTL
  }
}

std::string RedlockBackend::publish_refusal() const {
  for (const auto& n : state_->nodes)
    if (std::string r = n->facts().publish_refusal(); !r.empty()) return r;
  return {};
}

std::optional<TimePoint> RedlockBackend::extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started) {
  ExtendItem item{name, &lease.owner, ttl, started};
  extend_many(std::span<ExtendItem>(&item, 1));
  if (item.error) std::rethrow_exception(item.error);
  return item.valid_until;
}

RedlockBackend::Subscription RedlockBackend::subscribe_release(std::string_view name) {
  return Subscription(state_->subscriber.subscribe(detail::redis_keys(state_->options.key_prefix, name).channel),
                      state_->round_ns);
}

bool RedlockBackend::Subscription::wait_for(std::chrono::nanoseconds d) {
  const auto start = std::chrono::steady_clock::now();
  if (!sub_.wait_for(d)) return false;
  const auto spread = detail::redlock_wake_spread(std::chrono::nanoseconds(round_ns_->load(std::memory_order_relaxed)),
                                                  d - (std::chrono::steady_clock::now() - start));
  if (spread > spread.zero()) {
    std::this_thread::sleep_for(
        std::chrono::nanoseconds(std::uniform_int_distribution<std::int64_t>(0, spread.count())(detail::thread_rng())));
    // One release publishes on every node it held: the copies that came in
    // meanwhile are for this same wake-up, not a later one.
    (void)sub_.wait_for(std::chrono::nanoseconds::zero());
  }
  return true;
}

void RedlockBackend::extend_many(std::span<ExtendItem> items) noexcept {
  State& s = *state_;
  try {
    // Everything the calls point at is built first, so that it never moves.
    std::vector<std::size_t> index;  // batch position -> item
    std::vector<detail::RedisKeys> keys;
    std::vector<Clock::duration> drifts;
    keys.reserve(items.size());
    drifts.reserve(items.size());
    for (std::size_t i : detail::checked_extend_items(items)) {
      ExtendItem& it = items[i];
      Clock::duration drift{};
      try {
        drift = s.drift(it.ttl, fmt::format("extend of '{}'", it.name));
      } catch (...) {
        it.error = std::current_exception();
        continue;
      }
      drifts.push_back(drift);
      keys.push_back(detail::redis_keys(s.options.key_prefix, it.name));
      index.push_back(i);
    }
    if (index.empty()) return;
    std::vector<ScriptCall> calls;
    calls.reserve(index.size());
    for (std::size_t b = 0; b < index.size(); ++b)
      calls.push_back(proto::extend_call(keys[b].lock, items[index[b]].owner->str(), items[index[b]].ttl));
    const std::vector<std::vector<ScriptCall>> batches(s.size(), calls);
    const auto replies = s.fan_out(batches, index.size() == 1 ? fmt::format("extend of '{}'", items[index[0]].name)
                                                              : fmt::format("extend of {} locks", index.size()));

    std::vector<std::size_t> lost;  // batch positions to release
    for (std::size_t b = 0; b < index.size(); ++b)
      if (s.judge_extend(items[index[b]], replies, b, keys[b].lock, drifts[b])) lost.push_back(b);
    if (lost.empty()) return;
    // Lost: what is left of it is released on all nodes at once (pipelined),
    // so that others need not wait out its TTL, and published, which wakes
    // them: the lock is free now. Best effort.
    std::vector<ScriptCall> releases;
    releases.reserve(lost.size());
    for (std::size_t b : lost)
      releases.push_back(proto::release_call(keys[b], items[index[b]].owner->str(), proto::Publish::yes));
    (void)s.fan_out(std::vector<std::vector<ScriptCall>>(s.size(), releases), "release of lost locks");
  } catch (...) {  // out of memory: report it on every item rather than lose the batch silently
    const auto e = std::current_exception();
    for (ExtendItem& it : items)
      if (!it.valid_until) it.error = e;
  }
}

// ---- AsyncBackend: the same rounds with async_fan_out, completed through the caller's executor ----

void RedlockBackend::async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                       AcquireCompletion<Handle> done) {
  async_acquire_by(
      request, [&] { return state_->mutex_calls(request.name, &request); }, ex, std::move(done));
}

void RedlockBackend::async_acquire_by(const AcquireRequest& request, const std::function<detail::RedlockCalls()>& calls,
                                      const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) {
  using Result = AcquireResult<Handle>;
  try {
    auto state = state_;
    detail::validate_redis_lock_name(request.name);
    auto a = std::make_shared<State::Attempt>(*state, request, calls());
    // Kept by the io_context, not by the requests in flight (detail::ResultCompletion).
    const detail::ResultCompletion<Result> work(ex, done);
    // The last step: the attempt's outcome to the caller.
    auto finish = [state, a, work] {
      Result result = Contended{};
      std::exception_ptr error;
      try {
        result = a->not_granted();
      } catch (...) {
        error = std::current_exception();
      }
      work.post(error, std::move(result));
    };
    // Granted, or cleaned up and judged.
    auto settle = [state, a, work, finish] {
      if (a->granted()) return work.post(nullptr, a->grant());
      if (!a->cleanup_needed()) return finish();
      auto batches = a->cleanup_batches();
      auto shared = std::make_shared<std::vector<std::vector<ScriptCall>>>(batches);
      detail::async_fan_out(state->ptrs, std::move(batches), state->options.node_timeout,
                            fmt::format("release of '{}'", a->calls.key), state->deadline_name,
                            [state, a, shared, finish](std::vector<detail::RedisOutcome> out) {
                              try {
                                (void)state->release_votes(a->calls, *shared, out, nullptr);
                              } catch (...) {  // out of memory: the keys expire by their TTL
                              }
                              finish();
                            });
    };
    detail::async_fan_out(state->ptrs, a->acquire_batches(), state->options.node_timeout, a->what(),
                          state->deadline_name, [state, a, settle](std::vector<detail::RedisOutcome> out) {
                            try {
                              a->tally(out);
                              if (!a->raise_needed()) return settle();
                              detail::async_fan_out(state->ptrs, a->raise_batches(), state->options.node_timeout,
                                                    a->raise_what(), state->deadline_name,
                                                    [a, settle](std::vector<detail::RedisOutcome> raised) {
                                                      try {
                                                        a->tally_raise(raised);
                                                      } catch (...) {
                                                        a->error = std::current_exception();
                                                      }
                                                      settle();
                                                    });
                            } catch (...) {  // out of memory
                              a->error = std::current_exception();
                              settle();
                            }
                          });
  } catch (...) {  // an invalid name or ttl, or out of memory
    detail::post_result<Result>(detail::ExecutorCompletion(ex), done, std::current_exception(), Contended{});
  }
}

void RedlockBackend::async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                                   ReleaseCompletion done) {
  async_release_by(
      name, lease.owner, [&] { return state_->mutex_calls(name); }, ex, std::move(done));
}

void RedlockBackend::async_release_by(std::string_view name, const OwnerId& owner,
                                      const std::function<detail::RedlockCalls()>& calls,
                                      const boost::asio::any_io_executor& ex, ReleaseCompletion done) {
  try {
    detail::validate_redis_lock_name(name);
    auto state = state_;
    auto keys = std::make_shared<detail::RedlockCalls>(calls());
    auto batches = std::make_shared<std::vector<std::vector<ScriptCall>>>(state->release_batches(*keys, owner.str()));
    detail::async_fan_out(
        state->ptrs, *batches, state->options.node_timeout, fmt::format("release of '{}'", keys->key),
        state->deadline_name,
        [state, keys, batches, name = std::string(name),
         work = detail::ResultCompletion<ReleaseResult>(ex, done)](std::vector<detail::RedisOutcome> out) {
          ReleaseResult result = ReleaseResult::not_held;
          std::exception_ptr error;
          try {
            Failures failures;
            result = state->release_result(name, state->release_votes(*keys, *batches, out, &failures), failures);
          } catch (...) {
            error = std::current_exception();
          }
          work.post(error, result);
        });
  } catch (...) {
    detail::post_result<ReleaseResult>(detail::ExecutorCompletion(ex), done, std::current_exception(),
                                       ReleaseResult::not_held);
  }
}

void RedlockBackend::async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
  async_extend_by(
      name, lease.owner, ttl, started, [&] { return state_->mutex_calls(name); }, ex, std::move(done));
}

void RedlockBackend::async_extend_by(std::string_view name, const OwnerId& lease_owner, std::chrono::milliseconds ttl,
                                     TimePoint started, const std::function<detail::RedlockCalls()>& calls,
                                     const boost::asio::any_io_executor& ex, ExtendCompletion done) {
  using Result = std::optional<TimePoint>;
  try {
    detail::validate_redis_lock_name(name);
    auto state = state_;
    const Clock::duration drift = state->drift(ttl, fmt::format("extend of '{}'", name));
    auto keys = std::make_shared<detail::RedlockCalls>(calls());
    const std::string owner(lease_owner.str());
    std::vector<std::vector<ScriptCall>> batches(state->size(), {keys->extend(owner, ttl)});
    detail::async_fan_out(state->ptrs, std::move(batches), state->options.node_timeout,
                          fmt::format("extend of '{}'", name), state->deadline_name,
                          [state, keys, owner, name = std::string(name), ttl, started, drift,
                           work = detail::ResultCompletion<Result>(ex, done)](std::vector<detail::RedisOutcome> out) {
                            ExtendItem it{name, nullptr, ttl, started};
                            std::exception_ptr error;
                            try {
                              if (state->judge_extend(it, out, 0, keys->key, drift)) {
                                // Lost: what is left of it is released (published: the lock is free now). Best effort.
                                detail::async_fan_out(state->ptrs, state->release_batches(*keys, owner),
                                                      state->options.node_timeout, "release of lost locks",
                                                      state->deadline_name, [](std::vector<detail::RedisOutcome>) {});
                              }
                              error = it.error;
                            } catch (...) {
                              error = std::current_exception();
                            }
                            work.post(error, it.valid_until);
                          });
  } catch (...) {
    detail::post_result<Result>(detail::ExecutorCompletion(ex), done, std::current_exception(), std::nullopt);
  }
}

void RedlockBackend::async_abandon(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    const detail::RedlockCalls calls = state_->mutex_calls(name);
    detail::async_fan_out(state_->ptrs, state_->release_batches(calls, owner.str()), state_->options.node_timeout,
                          fmt::format("release of '{}'", calls.key), state_->deadline_name,
                          [](std::vector<detail::RedisOutcome>) {});
  } catch (...) {  // an invalid name or out of memory: best effort, the keys expire by their TTL
  }
}

void RedlockBackend::Subscription::on_release(std::function<void()> f) {
  // wait_for()'s spread, at least one round (the nodes publish during the
  // release round) and 1 ms (the transport's timer resolution).
  const auto round = std::chrono::nanoseconds(round_ns_->load(std::memory_order_relaxed));
  const auto spread = detail::redlock_wake_spread(round, std::chrono::seconds(1));
  const auto at = std::max(round, std::chrono::nanoseconds(std::uniform_int_distribution<std::int64_t>(
                                      0, spread.count())(detail::thread_rng())));
  sub_.on_release_settled(std::move(f),
                          std::max(std::chrono::milliseconds(1), std::chrono::ceil<std::chrono::milliseconds>(at)));
}

RedlockBackend::Subscription RedlockBackend::subscribe_release_nowait(std::string_view name) {
  return Subscription(state_->subscriber.subscribe(detail::redis_keys(state_->options.key_prefix, name).channel, false),
                      state_->round_ns);
}

}  // namespace dlock
