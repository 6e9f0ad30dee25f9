// The asynchronous Redis operations: async_fan_out() on the client's shared
// pipelined links, and RedisBackend's AsyncBackend operations over it
// (detail/redis_async.hpp, docs/async.md).
#include <dlock/detail/redis_async.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>
#include <dlock/redis.hpp>

namespace dlock::detail {

std::shared_ptr<RedisLink> RedisClient::shared_link() {
  // The shared links reach options_ itself: with Sentinel or Cluster that is
  // not the server holding the lock. The asynchronous requests go through
  // async_route(), which finds that server; this refuses anything else.
  if (sentinel_ || cluster_)
    throw InvalidArgument(fmt::format(
        "dlock: {}: shared_link() reaches one server; with Redis Sentinel or Cluster use async_route()", endpoint_));
  std::lock_guard lk(shared_mu_);
  if (shared_pid_ != ::getpid()) {  // fork(): the parent's links are dropped without sending anything
    shared_links_.clear();
    shared_pid_ = ::getpid();
  }
  std::erase_if(shared_links_, [](const std::shared_ptr<RedisLink>& l) { return l->broken(); });
  if (shared_links_.size() < std::max<std::size_t>(1, options_.pool_size)) {
    RedisLinkSetup setup = setup_;
    setup.caller_io = true;  // idle, an asynchronous caller may do its own exchange on it (send_here)
    shared_links_.push_back(std::make_shared<RedisLink>(RedisLink::open(options_, setup)));
    return shared_links_.back();
  }
  return shared_links_[shared_next_++ % shared_links_.size()];
}

namespace {

using detail::redis_proto::ScriptCall;
using detail::redis_proto::ScriptForm;

struct FanOut : std::enable_shared_from_this<FanOut> {
  std::vector<std::shared_ptr<AsyncRoute>> routes;
  std::vector<std::vector<ScriptCall>> batches;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  std::string what, deadline_name;
  // The caller's io_context (reactor_executor), for send_here() only while
  // async_fan_out() runs on the caller's thread: later sends (from the I/O
  // thread, maybe after the context is gone) take the I/O thread's way.
  std::optional<boost::asio::any_io_executor> ex;
  std::thread::id initiator;
  std::atomic<bool> initiating{false};
  [[nodiscard]] bool on_callers_thread() const {
    return ex && initiating.load(std::memory_order_acquire) && std::this_thread::get_id() == initiator;
  }
  std::function<void(std::vector<RedisOutcome>)> done;
  std::vector<RedisOutcome> out;
  std::atomic<std::size_t> left{0};

  void node_done(std::size_t i, RedisOutcome o) {
    out[i] = std::move(o);  // each slot is written by one completion only
    if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) done(std::move(out));
  }

  // Node i's batch on a link its route finds; `again`: this is the one resend
  // after a reply saying the server is not the primary (as run_scripts does).
  void start(std::size_t i, bool again) {
    try {
      routes[i]->get(cluster_route_key(batches[i].front()), [self = shared_from_this(), i, again](
                                                                std::shared_ptr<RedisLink> link, std::string host,
                                                                std::exception_ptr error) {
        if (error) return self->node_done(i, RedisOutcome{{}, error, {}});
        std::vector<std::size_t> all(self->batches[i].size());
        for (std::size_t k = 0; k < all.size(); ++k) all[k] = k;
        self->send(i, std::move(link), std::move(host), std::move(all), ScriptForm::evalsha, RedisOutcome{}, again);
      });
    } catch (...) {  // out of memory: this node's outcome
      node_done(i, RedisOutcome{{}, std::current_exception(), {}});
    }
  }

  // The batch's outcome, judged: a connection error or a server that is not
  // the primary sends the route looking again (and the batch once more).
  void judged(std::size_t i, const std::shared_ptr<RedisLink>& link, std::string host, RedisOutcome o, bool again) {
    if (o.error) {
      routes[i]->failed(link);
      return node_done(i, std::move(o));
    }
    if (any_not_primary(o.replies)) {
      routes[i]->failed(link);
      if (!again) return start(i, true);
      return node_done(i, std::move(o));
    }
    if (routes[i]->cluster() && o.replies.size() == 1 && o.replies[0].is_error())
      return follow(i, std::move(host), std::move(o), 0);
    node_done(i, std::move(o));
  }

  // Cluster: MOVED / ASK followed (as ClusterClient::follow does), the call
  // sent as EVAL to the named node, at most redis_proto::max_redirects times.
  void follow(std::size_t i, std::string sender_host, RedisOutcome o, int redirects) {
    const redis_proto::HaDecision d = redis_proto::after_error(o.replies[0].str, sender_host, redirects);
    if (d.step != redis_proto::HaStep::follow_moved && d.step != redis_proto::HaStep::follow_ask) {
      if (d.refresh_map) routes[i]->failed(nullptr);  // READONLY, CLUSTERDOWN: the next attempt uses the new map
      return node_done(i, std::move(o));
    }
    const redis_proto::Redirect to = *d.redirect;
    const bool ask = d.step == redis_proto::HaStep::follow_ask;
    if (ask)
      routes[i]->asked();
    else
      routes[i]->moved(to, sender_host);
    routes[i]->get_at(to.host, to.port,
                      [self = shared_from_this(), i, ask, redirects](std::shared_ptr<RedisLink> link, std::string host,
                                                                     std::exception_ptr error) {
                        if (error) return self->node_done(i, RedisOutcome{{}, error, {}});
                        self->redirected(i, std::move(link), std::move(host), ask, redirects + 1);
                      });
  }

  void redirected(std::size_t i, std::shared_ptr<RedisLink> link, std::string host, bool ask, int redirects) {
    try {
      RedisCall call{.request = {}, .what = what, .deadline = deadline, .deadline_name = deadline_name};
      if (ask) redis_proto::push_asking(call.request);  // ASKING, then the call
      (void)redis_proto::push_script_call(call.request, batches[i].front(), link->shas(), ScriptForm::eval);
      RedisLink& l = *link;
      l.send(std::move(call), [self = shared_from_this(), i, link = std::move(link), host = std::move(host),
                               redirects](RedisOutcome o) mutable {
        if (o.error) {
          self->routes[i]->failed(link);
          return self->node_done(i, std::move(o));
        }
        if (o.replies.size() > 1) o.replies.erase(o.replies.begin(), o.replies.end() - 1);  // ASKING's +OK
        if (o.replies.size() == 1 && o.replies[0].is_error())
          return self->follow(i, std::move(host), std::move(o), redirects);
        self->node_done(i, std::move(o));
      });
    } catch (...) {  // out of memory: this node's outcome
      node_done(i, RedisOutcome{{}, std::current_exception(), {}});
    }
  }

  // Sends batches[i][k] for k in `calls` on `link` in `form`; the EVALSHA
  // round resends the calls answered NOSCRIPT once as EVAL.
  void send(std::size_t i, std::shared_ptr<RedisLink> link, std::string host, std::vector<std::size_t> calls,
            ScriptForm form, RedisOutcome first, bool again) {
    try {
      RedisCall call{.request = {}, .what = what, .deadline = deadline, .deadline_name = deadline_name};
      for (std::size_t k : calls)
        (void)detail::redis_proto::push_script_call(call.request, batches[i][k], link->shas(), form);
      RedisLink& l = *link;
      RedisLink::Done on_reply = [self = shared_from_this(), i, link, host = std::move(host), calls = std::move(calls),
                                  form, first = std::move(first), again](RedisOutcome o) mutable {
        if (o.error && o.unsent && form == ScriptForm::evalsha && !again) {
          // The link broke before the batch was written (closed while idle): once more on another.
          self->routes[i]->failed(link);
          return self->start(i, true);
        }
        if (o.error) return self->judged(i, link, std::move(host), std::move(o), again);
        if (form == ScriptForm::eval) {  // the resend: its replies into the first round's places
          for (std::size_t j = 0; j < calls.size() && j < o.replies.size(); ++j)
            first.replies[calls[j]] = std::move(o.replies[j]);
          first.answered = o.answered;
          return self->judged(i, link, std::move(host), std::move(first), again);
        }
        std::vector<std::size_t> resend;
        for (std::size_t k = 0; k < o.replies.size(); ++k)
          if (detail::redis_proto::after_script_reply(o.replies[k], ScriptForm::evalsha) ==
              detail::redis_proto::ScriptNext::resend_as_eval)
            resend.push_back(k);
        if (resend.empty()) return self->judged(i, link, std::move(host), std::move(o), again);
        self->send(i, std::move(link), std::move(host), std::move(resend), ScriptForm::eval, std::move(o), again);
      };
      if (on_callers_thread()) {  // the caller's own exchange on an idle link: no hand-off to the I/O thread and back
        if (l.send_here(call, *ex, on_reply)) return;
        if (l.broken() && form == ScriptForm::evalsha && !again) {  // closed while idle: nothing was sent
          routes[i]->failed(link);
          return start(i, true);
        }
      }
      l.send(std::move(call), std::move(on_reply));
    } catch (...) {  // out of memory: this node's outcome
      node_done(i, RedisOutcome{{}, std::current_exception(), {}});
    }
  }
};

}  // namespace

void async_fan_out(std::span<RedisClient* const> nodes, std::vector<std::vector<ScriptCall>> batches,
                   std::optional<std::chrono::milliseconds> timeout, std::string what, std::string deadline_name,
                   std::function<void(std::vector<RedisOutcome>)> done,
                   std::optional<boost::asio::any_io_executor> ex) {
  auto f = std::make_shared<FanOut>();
  f->ex = std::move(ex);
  f->initiator = std::this_thread::get_id();
  f->initiating.store(true, std::memory_order_release);
  f->batches = std::move(batches);
  if (timeout) f->deadline = saturating_add(std::chrono::steady_clock::now(), *timeout);
  f->what = std::move(what);
  f->deadline_name = std::move(deadline_name);
  f->done = std::move(done);
  f->out.resize(nodes.size());
  f->routes.resize(nodes.size());
  f->left.store(nodes.size() + 1);  // one more for this call: done runs once all sends are out
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (f->batches[i].empty()) {
      f->node_done(i, RedisOutcome{});
      continue;
    }
    try {
      if (timeout && nodes[i]->cluster() != nullptr)  // Redlock's rounds: as RedisClient::open_link refuses them
        throw InvalidArgument(
            fmt::format("dlock: {} is a Redis Cluster, which routes each lock to its shard; it cannot serve where one "
                        "server is expected (a Redlock node): give Redlock independent servers",
                        nodes[i]->endpoint()));
      f->routes[i] = nodes[i]->async_route();
    } catch (...) {  // out of memory
      f->node_done(i, RedisOutcome{{}, std::current_exception(), {}});
      continue;
    }
    f->start(i, false);
  }
  f->initiating.store(false, std::memory_order_release);
  if (f->left.fetch_sub(1, std::memory_order_acq_rel) == 1) f->done(std::move(f->out));
}

}  // namespace dlock::detail

namespace dlock {

namespace {

// One script call on the backend's server; `judge` turns its reply into the
// result (or throws), which goes to `done` through `ex`.
template <class R, class State, class Judge>
void one_call(const std::shared_ptr<State>& state, detail::redis_proto::ScriptCall call, std::string what,
              const boost::asio::any_io_executor& ex, std::function<void(std::exception_ptr, R)> done, Judge judge) {
  detail::RedisClient* const node[] = {state->node.get()};
  std::vector<std::vector<detail::redis_proto::ScriptCall>> batches(1);
  batches[0].push_back(std::move(call));
  detail::async_fan_out(
      node, std::move(batches), std::nullopt, std::move(what), {},
      [state, work = detail::ResultCompletion<R>(ex, std::move(done)),
       judge = std::move(judge)](std::vector<detail::RedisOutcome> out) {
        R result{};
        std::exception_ptr error;
        try {
          if (out.at(0).error) std::rethrow_exception(out[0].error);
          result = judge(out[0].replies.at(0));
        } catch (...) {
          error = std::current_exception();
        }
        work.complete(error, std::move(result));
      },
      detail::reactor_executor(ex));
}

}  // namespace

void RedisBackend::async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                     AcquireCompletion<Handle> done) {
  try {
    detail::validate_redis_lock_name(request.name);
    detail::RedisClient& node = *state_->node;
    const detail::RedisKeys keys = node.keys(request.name);
    auto call = detail::redis_proto::acquire_call(keys, request.owner.str(), request.ttl, node.options().fence_ttl);
    one_call<AcquireResult<Handle>>(
        state_, std::move(call), fmt::format("acquire of '{}'", keys.lock), ex, std::move(done),
        [state = state_, lock = keys.lock, valid_until = detail::saturating_add(request.started, request.ttl)](
            const detail::RedisValue& reply) -> AcquireResult<Handle> {
          const auto r = detail::parse_acquire_reply(reply, state->node->endpoint(), lock);
          if (!r.acquired) return Contended{r.holder_ttl};
          return Grant<Handle>{.token = r.token, .valid_until = valid_until};
        });
  } catch (...) {
    detail::post_result<AcquireResult<Handle>>(detail::ExecutorCompletion(ex), done, std::current_exception(),
                                               Contended{});
  }
}

void RedisBackend::async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                                 ReleaseCompletion done) {
  try {
    detail::validate_redis_lock_name(name);
    const detail::RedisKeys keys = state_->node->keys(name);
    auto call = detail::redis_proto::release_call(keys, lease.owner.str(), detail::redis_proto::Publish::yes);
    one_call<ReleaseResult>(state_, std::move(call), fmt::format("release of '{}'", keys.lock), ex, std::move(done),
                            [state = state_, keys](const detail::RedisValue& reply) {
                              detail::RedisClient& node = *state->node;
                              const auto r = detail::parse_release_reply(reply, node.endpoint(), keys.lock);
                              if (!r.publish_error.empty())
                                node.facts().note_publish_refusal(node.endpoint(), keys.channel, r.publish_error);
                              return r.released ? ReleaseResult::released : ReleaseResult::not_held;
                            });
  } catch (...) {
    detail::post_result<ReleaseResult>(detail::ExecutorCompletion(ex), done, std::current_exception(),
                                       ReleaseResult::not_held);
  }
}

void RedisBackend::async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done) {
  try {
    detail::validate_redis_lock_name(name);
    const std::string lock = state_->node->keys(name).lock;
    auto call = detail::redis_proto::extend_call(lock, lease.owner.str(), ttl);
    one_call<std::optional<TimePoint>>(state_, std::move(call), fmt::format("extend of '{}'", lock), ex,
                                       std::move(done),
                                       [state = state_, lock, valid_until = detail::saturating_add(started, ttl)](
                                           const detail::RedisValue& reply) -> std::optional<TimePoint> {
                                         if (!detail::parse_flag_reply(reply, state->node->endpoint(), "extend", lock))
                                           return std::nullopt;
                                         return valid_until;
                                       });
  } catch (...) {
    detail::post_result<std::optional<TimePoint>>(detail::ExecutorCompletion(ex), done, std::current_exception(),
                                                  std::nullopt);
  }
}

void RedisBackend::async_abandon(std::string_view name, const OwnerId& owner) noexcept {
  try {
    detail::validate_redis_lock_name(name);
    detail::RedisClient* const node[] = {state_->node.get()};
    const detail::RedisKeys keys = state_->node->keys(name);
    std::vector<std::vector<detail::redis_proto::ScriptCall>> batches(1);
    batches[0].push_back(detail::redis_proto::release_call(keys, owner.str(), detail::redis_proto::Publish::yes));
    detail::async_fan_out(node, std::move(batches), std::nullopt, fmt::format("release of '{}'", keys.lock), {},
                          [](std::vector<detail::RedisOutcome>) {});
  } catch (...) {  // an invalid name or out of memory: best effort, the lock expires by its TTL
  }
}

RedisBackend::Subscription RedisBackend::subscribe_release_nowait(std::string_view name) {
  return Subscription(state_->subscriber.subscribe(state_->node->keys(name).channel, false));
}

}  // namespace dlock
