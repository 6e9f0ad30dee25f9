// AsyncRoute: where the asynchronous requests of a RedisClient go, on one
// server, through Sentinel or on a Cluster, found without blocking a thread
// (detail/redis_async.hpp, docs/async.md).
#include <unistd.h>

#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include <dlock/detail/redis_async.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_sentinel.hpp>
#include <dlock/detail/redis_sentinel_client.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

// ---- RedisClient's side ----

std::shared_ptr<AsyncRoute> RedisClient::async_route() {
  std::lock_guard lk(shared_mu_);
  if (!async_route_) async_route_ = std::make_shared<AsyncRoute>(*this);
  return async_route_;
}

void RedisClient::detach_async_route() noexcept {
  std::shared_ptr<AsyncRoute> r;
  {
    std::lock_guard lk(shared_mu_);
    r = async_route_;
  }
  if (r) r->detach();
}

void RedisClient::on_failover() noexcept {
  pool_.invalidate();
  std::shared_ptr<AsyncRoute> r;
  std::function<void()> moved;
  try {
    std::lock_guard lk(shared_mu_);
    r = async_route_;
    moved = primary_moved_;
  } catch (...) {  // out of memory copying the callback: the subscriber relocates at its next reconnect
  }
  if (r) r->switched();
  if (moved) moved();
}

void RedisClient::on_primary_moved(std::function<void()> f) {
  std::lock_guard lk(shared_mu_);
  primary_moved_ = std::move(f);
}

// ---- AsyncRoute ----

AsyncRoute::AsyncRoute(RedisClient& client)
    : kind_(client.cluster() != nullptr    ? Kind::cluster
            : client.sentinel() != nullptr ? Kind::sentinel
                                           : Kind::one),
      endpoint_(client.endpoint()),
      client_(&client),
      pid_(::getpid()) {}

AsyncRoute::~AsyncRoute() = default;

template <class F>
auto AsyncRoute::with_client(F&& fn) {
  std::lock_guard lk(life_mu_);
  if (client_ == nullptr)
    throw ConnectionError(fmt::format("dlock: the Redis client of {} was destroyed; nothing was sent", endpoint_));
  return fn(*client_);
}

void AsyncRoute::detach() noexcept {
  {
    std::lock_guard lk(life_mu_);
    client_ = nullptr;
  }
  std::vector<std::shared_ptr<RedisLink>> links;
  std::shared_ptr<RedisLink> probe;
  {
    std::lock_guard lk(mu_);
    links.swap(links_);
    probe = std::move(probe_);
    primary_.reset();
  }
  for (auto& l : links) l->close();
  if (probe) probe->close();
}

void AsyncRoute::switched() noexcept {
  std::lock_guard lk(mu_);
  primary_.reset();
  links_.clear();  // requests in flight on them complete; none is sent there again
}

void AsyncRoute::failed(const std::shared_ptr<RedisLink>& link) noexcept {
  if (kind_ == Kind::cluster) {
    try {
      refresh_then({});
    } catch (...) {  // out of memory: the next failure tries again
    }
    return;
  }
  if (!link) return;
  if (kind_ == Kind::one) {  // never reused: the next request opens a link that resolves the name again
    link->close();
    return;
  }
  std::lock_guard lk(mu_);
  // Only a link of the primary found last: the many requests failing on an
  // old primary's links find the primary once, not once each.
  if (std::find(links_.begin(), links_.end(), link) == links_.end()) return;
  primary_.reset();
  links_.clear();
}

void AsyncRoute::moved(const redis_proto::Redirect& to, std::string_view sender_host) noexcept {
  try {
    with_client([&](RedisClient& c) {
      c.cluster()->note_moved(to, sender_host);
      return 0;
    });
    refresh_then({});  // one MOVED usually means a whole range moved
  } catch (...) {      // detached, or out of memory: the patched map serves
  }
}

void AsyncRoute::asked() noexcept {
  try {
    with_client([](RedisClient& c) {
      c.cluster()->note_ask();
      return 0;
    });
  } catch (...) {  // detached
  }
}

void AsyncRoute::get_at(const std::string& host, std::uint16_t port, Got got) {
  std::shared_ptr<RedisLink> link;
  try {
    link = with_client([&](RedisClient& c) { return c.cluster()->node_at(host, port).shared_link(); });
  } catch (...) {
    return got(nullptr, {}, std::current_exception());
  }
  got(std::move(link), host, nullptr);
}

// ---- Sentinel: the primary, found as SentinelClient::open() finds it ----
//
// Every sentinel is asked SENTINEL MASTER at once (each on its own short
// link, bounded by connect_timeout + command_timeout); when all answered or
// failed, redis_proto::choose_primary decides as SentinelClient::choose()
// does (the highest configuration epoch of a majority, never behind the
// client's knowledge()), ROLE is checked at the chosen address, and the
// choice is adopted (docs/safety.md). One rule for both paths.

struct AsyncRoute::Resolve : std::enable_shared_from_this<AsyncRoute::Resolve> {
  std::shared_ptr<AsyncRoute> route;
  std::vector<std::size_t> order;
  std::size_t configured = 0;
  redis_proto::SentinelKnowledge known;  // taken before the round, as choose() does
  std::string master_name;

  std::mutex mu;  // the answers arrive on the I/O thread, possibly during start()
  std::size_t pending = 0;
  std::vector<redis_proto::SentinelAnswer> answers;
  std::string why;

  static void add(std::string& why, const std::string& s) { why += fmt::format("{}{}", why.empty() ? "" : "; ", s); }

  // The round found no usable primary: noted for the pacing of the next
  // rounds (SentinelClient::check_pace), then the waiting operations fail.
  void fail(std::exception_ptr error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      try {
        route->with_client([&](RedisClient& c) {
          c.sentinel()->round_failed(e.what());
          return 0;
        });
      } catch (...) {  // detached, or out of memory: nothing to pace
      }
    } catch (...) {
    }
    route->finish_resolve(nullptr, std::nullopt, error);
  }

  void start() {
    {
      std::lock_guard lk(mu);
      pending = order.size();
    }
    if (order.empty()) return decide();
    for (const std::size_t i : order) ask(i);
  }

  void ask(std::size_t i) {
    std::string sentinel = fmt::format("sentinel {}", i);
    try {
      const RedisOptions so = route->with_client([&](RedisClient& c) { return c.sentinel()->options_of_sentinel(i); });
      sentinel = redis_endpoint(so);
      auto link = std::make_shared<RedisLink>(
          RedisLink::open(so, RedisLinkSetup{.load_scripts = false, .check_eviction = false}));
      RedisCall call;
      call.what = "SENTINEL MASTER";
      redis_proto::push_sentinel_master(call.request, master_name);
      link->send(std::move(call), [self = shared_from_this(), link, i, sentinel](RedisOutcome o) mutable {
        link.reset();  // one question per connection, as ask() does
        self->on_answer(i, sentinel, std::move(o));
      });
    } catch (const std::exception& e) {  // detached, unreachable, or out of memory: counted as no answer
      answered(std::nullopt, fmt::format("{}: {}", sentinel, e.what()));
    }
  }

  void on_answer(std::size_t i, const std::string& sentinel, RedisOutcome o) {
    std::optional<redis_proto::SentinelAnswer> answer;
    std::string fault;
    try {
      if (o.error) std::rethrow_exception(o.error);
      const auto view = redis_proto::parse_sentinel_master(o.replies.at(0));
      if (const auto* v = std::get_if<redis_proto::MasterView>(&view))
        answer = redis_proto::SentinelAnswer{i, *v};
      else
        fault = std::holds_alternative<redis_proto::MasterUnknown>(view)
                    ? std::string("does not monitor that name")
                    : std::get<redis_proto::ReplyFault>(view).message;
    } catch (const std::exception& e) {  // ConnectionError, TimeoutError: no answer from it
      fault = e.what();
    }
    if (!answer) fault = fmt::format("{}: {}", sentinel, fault);
    answered(std::move(answer), fault);
  }

  void answered(std::optional<redis_proto::SentinelAnswer> answer, const std::string& fault) {
    bool last = false;
    try {
      std::lock_guard lk(mu);
      if (answer)
        answers.push_back(std::move(*answer));
      else
        add(why, fault);
      last = --pending == 0;
    } catch (...) {  // out of memory while noting it: still counted
      std::lock_guard lk(mu);
      last = --pending == 0;
    }
    if (last) decide();
  }

  // Every sentinel answered or failed: choose_primary, then ROLE at its choice.
  void decide() {
    try {
      const auto choice = redis_proto::choose_primary(answers, configured, known);
      if (const auto* no = std::get_if<redis_proto::NoPrimary>(&choice))
        throw ConnectionError(fmt::format(
            "dlock: no sentinel names the primary of '{}' that may be used now: {} ({}); nothing was asked of a data "
            "node (a failover in progress: retried)",
            master_name, no->why, why));
      const auto& c = std::get<redis_proto::PrimaryChoice>(choice);
      const RedisOptions primary =
          route->with_client([&](RedisClient& rc) { return rc.sentinel()->options_of_primary(c.view.address); });
      check(primary, c);
    } catch (...) {
      fail(std::current_exception());
    }
  }

  // A link to `primary`, kept (as the first shared link) if ROLE says master.
  void check(const RedisOptions& primary, const redis_proto::PrimaryChoice& choice) {
    std::shared_ptr<RedisLink> link;
    try {
      link = std::make_shared<RedisLink>(
          RedisLink::open(primary, route->with_client([](RedisClient& c) { return c.link_setup(); })));
      {
        std::lock_guard lk(route->mu_);
        route->probe_ = link;
      }
      RedisCall call;
      call.what = "ROLE";
      redis_proto::push_role(call.request);
      link->send(std::move(call), [self = shared_from_this(), link, primary, choice](RedisOutcome o) {
        self->on_role(link, primary, choice, std::move(o));
      });
    } catch (const ConnectionError& e) {  // TimeoutError too
      refuse(choice, e.what());
    } catch (...) {
      fail(std::current_exception());
    }
  }

  void on_role(const std::shared_ptr<RedisLink>& link, const RedisOptions& primary,
               const redis_proto::PrimaryChoice& choice, RedisOutcome o) {
    try {
      if (o.error) std::rethrow_exception(o.error);
      const RedisValue& reply = o.replies.at(0);
      if (reply.is_error()) throw_if_error(reply, link->endpoint(), "ROLE");
      const auto role = redis_proto::parse_role(reply);
      const auto* info = std::get_if<redis_proto::RoleInfo>(&role);
      if (info != nullptr && info->role == redis_proto::RoleInfo::Role::master) {
        const bool adopted = route->with_client([&](RedisClient& c) { return c.sentinel()->adopt(choice, primary); });
        if (adopted) return route->finish_resolve(link, primary, nullptr);
        link->close();  // superseded while ROLE was asked: never used
        route->with_client([&](RedisClient& c) -> int { c.sentinel()->throw_superseded(choice); });
      }
      link->close();
      refuse(choice, fmt::format("{}: not the primary ({}; nothing was asked of it)", link->endpoint(),
                                 info == nullptr
                                     ? std::string("ROLE gave an unexpected reply")
                                     : fmt::format("ROLE says {}", info->role == redis_proto::RoleInfo::Role::replica
                                                                       ? "replica"
                                                                       : "sentinel")));
    } catch (const ConnectionError& e) {  // TimeoutError too
      refuse(choice, e.what());
    } catch (...) {  // ServerError (auth), as open() throws it; or detached
      fail(std::current_exception());
    }
  }

  // The chosen primary cannot be used: the waiting operations fail (retried).
  void refuse(const redis_proto::PrimaryChoice& choice, const std::string& reason) {
    try {
      add(why, reason);
      throw ConnectionError(fmt::format(
          "dlock: the primary of '{}' the sentinels name at configuration epoch {} cannot be used ({}); nothing was "
          "asked of a data node (a failover in progress: retried)",
          master_name, choice.view.config_epoch, why));
    } catch (...) {
      fail(std::current_exception());
    }
  }
};

void AsyncRoute::finish_resolve(std::shared_ptr<RedisLink> link, std::optional<RedisOptions> primary,
                                std::exception_ptr error) {
  std::vector<Got> waiting;
  std::string host;
  {
    std::lock_guard lk(
        mu_);  // never with life_mu_ inside: the +switch-master callback takes mu_ under the watch's lock
    resolving_ = false;
    probe_.reset();
    waiting.swap(waiting_);
    if (link && primary) {
      host = primary->host;
      primary_ = std::move(primary);
      links_.assign(1, link);
      next_ = 0;
    }
  }
  for (auto& g : waiting) g(link, host, error);
}

// ---- Cluster: the slot map, read with CLUSTER SLOTS on a shared link ----

struct AsyncRoute::Refresh : std::enable_shared_from_this<AsyncRoute::Refresh> {
  std::shared_ptr<AsyncRoute> route;
  std::vector<std::pair<std::string, std::uint16_t>> sources;
  std::size_t at = 0;

  void next() {
    if (at == sources.size()) return route->finish_refresh();  // the old map serves; the next failure tries again
    // Not a structured binding: clang 14 cannot capture one in a lambda.
    const std::string host = sources[at].first;
    const std::uint16_t port = sources[at].second;
    ++at;
    try {
      auto link = route->with_client([&](RedisClient& c) { return c.cluster()->node_at(host, port).shared_link(); });
      RedisCall call;
      call.what = "CLUSTER SLOTS";
      const std::string_view args[] = {"CLUSTER", "SLOTS"};
      call.request.push(args);
      link->send(std::move(call),
                 [self = shared_from_this(), host](RedisOutcome o) { self->on_map(host, std::move(o)); });
    } catch (...) {  // detached, or out of memory
      route->finish_refresh();
    }
  }

  void on_map(const std::string& host, RedisOutcome o) {
    if (!o.error && !o.replies.empty()) {
      auto parsed = redis_proto::SlotMap::from_cluster_slots(o.replies[0], host);
      if (auto* map = std::get_if<redis_proto::SlotMap>(&parsed)) {
        try {
          route->with_client([&](RedisClient& c) {
            c.cluster()->install(std::move(*map));
            return 0;
          });
        } catch (...) {  // detached
        }
        return route->finish_refresh();
      }
    }
    next();
  }
};

void AsyncRoute::refresh_then(std::function<void()> then) {
  {
    std::lock_guard lk(mu_);
    if (then) after_refresh_.push_back(std::move(then));
    if (refreshing_) return;
    refreshing_ = true;
  }
  auto r = std::make_shared<Refresh>();
  r->route = shared_from_this();
  try {
    r->sources = with_client([](RedisClient& c) { return c.cluster()->map_sources(); });
  } catch (...) {  // detached: the waiters find no map and fail
  }
  r->next();
}

void AsyncRoute::finish_refresh() {
  std::vector<std::function<void()>> then;
  {
    std::lock_guard lk(mu_);
    refreshing_ = false;
    then.swap(after_refresh_);
  }
  for (auto& f : then) f();
}

// ---- get ----

void AsyncRoute::get(std::string_view route_key, Got got) {
  if (kind_ == Kind::one) {
    std::shared_ptr<RedisLink> link;
    std::string host;
    try {
      link = with_client([&](RedisClient& c) {
        host = c.options().host;
        return c.shared_link();
      });
    } catch (...) {
      return got(nullptr, {}, std::current_exception());
    }
    return got(std::move(link), std::move(host), nullptr);
  }
  if (kind_ == Kind::cluster) {
    const std::uint16_t slot = redis_proto::hash_slot(route_key);
    const auto serve = [self = shared_from_this(), slot](const Got& g, bool last) {
      std::optional<redis_proto::ClusterNode> at;
      try {
        at = self->with_client([&](RedisClient& c) { return c.cluster()->known_primary(slot); });
        if (!at && last)
          throw ConnectionError(fmt::format(
              "dlock: no node of {} serves slot {} (the cluster is down or resharding); nothing was done, and an "
              "acquire retries",
              self->endpoint_, slot));
      } catch (...) {
        g(nullptr, {}, std::current_exception());
        return true;
      }
      if (!at) return false;
      self->get_at(at->host, at->port, g);
      return true;
    };
    if (serve(got, false)) return;
    return refresh_then([serve, got = std::move(got)] { (void)serve(got, true); });
  }
  // Sentinel.
  std::shared_ptr<RedisLink> link;
  std::string host;
  std::shared_ptr<Resolve> r;
  try {
    const RedisLinkSetup setup = with_client([](RedisClient& c) {
      c.sentinel()->watch([&c] { c.on_failover(); });  // +switch-master retires what the route found
      return c.link_setup();
    });
    std::lock_guard lk(mu_);
    if (pid_ != ::getpid()) {  // fork(): the parent's links are dropped without sending anything
      links_.clear();
      primary_.reset();
      pid_ = ::getpid();
    }
    std::erase_if(links_, [](const std::shared_ptr<RedisLink>& l) { return l->broken(); });
    if (primary_ && links_.empty()) primary_.reset();  // every link to it failed: find it again
    if (primary_) {
      const std::size_t want = std::max<std::size_t>(1, primary_->pool_size);
      if (links_.size() < want) {
        links_.push_back(std::make_shared<RedisLink>(RedisLink::open(*primary_, setup)));
        link = links_.back();
      } else {
        link = links_[next_++ % links_.size()];
      }
      host = primary_->host;
    } else {
      // Allocated first: a throw after got moved into waiting_ would leave
      // it there with resolving_ set and no resolution coming (never called).
      if (!resolving_) r = std::make_shared<Resolve>();
      waiting_.push_back(std::move(got));
      if (r) {
        resolving_ = true;
        r->route = shared_from_this();
      }
    }
  } catch (...) {
    if (got) got(nullptr, {}, std::current_exception());
    return;
  }
  if (link) return got(std::move(link), std::move(host), nullptr);
  if (!r) return;
  try {
    with_client([&](RedisClient& c) {
      c.sentinel()->check_pace();  // throws while a failed round's spacing lasts
      r->order = c.sentinel()->ask_order();
      r->configured = c.options().sentinel->sentinels.size();
      r->known = c.sentinel()->knowledge();
      r->master_name = c.options().sentinel->master_name;
      return 0;
    });
  } catch (...) {
    return finish_resolve(nullptr, std::nullopt, std::current_exception());
  }
  r->start();
}

}  // namespace dlock::detail
