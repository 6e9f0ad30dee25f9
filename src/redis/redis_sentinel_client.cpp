// SentinelClient: discovery of the primary, its ROLE check, and the
// +switch-master watch (see detail/redis_sentinel_client.hpp).
#include <dlock/detail/redis_sentinel_client.hpp>

#include <exception>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {
constexpr std::chrono::milliseconds rewatch_delay{500};
}  // namespace

// The +switch-master subscription on one sentinel at a time.
struct SentinelClient::Watch : std::enable_shared_from_this<SentinelClient::Watch> {
  SentinelClient* client = nullptr;  // valid until stop
  std::function<void()> on_switch;
  std::mutex mu;
  bool stop = false;
  std::optional<RedisLink> link;
  redis_proto::SubscriptionTable table;
  std::size_t next = 0;  // the sentinel to watch next
  std::uint64_t link_id = 0;
  std::uint64_t switches = 0;

  void start() {  // under mu
    if (stop) return;
    const std::size_t count = client->options_.sentinel->sentinels.size();
    const std::size_t i = next++ % count;
    const std::uint64_t id = ++link_id;
    const std::weak_ptr<Watch> weak = weak_from_this();
    table = redis_proto::SubscriptionTable{};
    table.want(redis_proto::switch_master_channel);
    try {
      link.emplace(RedisLink::open(
          client->sentinel_options(i), RedisLinkSetup{.load_scripts = false, .check_eviction = false},
          RedisLinkEvents{.push = [weak, id](RedisValue r) { with(weak, id, [&](Watch& w) { w.on_push(r); }); },
                          .up = [weak, id] { with(weak, id, [&](Watch& w) { w.on_up(); }); },
                          .lost = [weak, id](std::exception_ptr) { with(weak, id, [&](Watch& w) { w.on_lost(); }); }}));
    } catch (...) {  // an unusable TLS setting, or out of memory: try the next one later
      link.reset();
      later();
    }
  }
  template <class F>
  static void with(const std::weak_ptr<Watch>& weak, std::uint64_t id, F&& fn) {
    const auto w = weak.lock();
    if (!w) return;
    std::lock_guard lk(w->mu);
    if (w->stop || w->link_id != id) return;
    fn(*w);
  }
  void later() noexcept {  // under mu
    try {
      redis_io_after(rewatch_delay, [weak = weak_from_this()] {
        const auto w = weak.lock();
        if (!w) return;
        std::lock_guard lk(w->mu);
        if (!w->link) w->start();
      });
    } catch (...) {  // out of memory: no more watching; READONLY and ROLE still catch a failover
    }
  }
  void on_up() {
    try {
      RedisCall call;
      call.request = table.take_commands();
      call.what = "SUBSCRIBE +switch-master";
      if (link && !call.request.empty()) link->send(std::move(call), {});
    } catch (...) {  // out of memory: drop this link; the next one subscribes
      if (link) link->close();
    }
  }
  void on_push(const RedisValue& r) {
    const redis_proto::PubSubEvent ev = table.on_reply(r);
    using K = redis_proto::PubSubEvent::Kind;
    if (ev.kind == K::unexpected || ev.kind == K::refused) {
      if (link) link->close();  // on_lost moves on to the next sentinel
      return;
    }
    if (ev.kind != K::message) return;
    const auto sw = redis_proto::parse_switch_master(ev.payload);
    if (!sw || sw->master_name != client->options_.sentinel->master_name) return;
    ++switches;
    try {
      client->announce(*sw);
    } catch (...) {  // out of memory: the next discovery finds it
    }
    if (on_switch) on_switch();
  }
  void on_lost() {
    link.reset();
    later();
  }
};

SentinelClient::SentinelClient(RedisOptions options)
    : options_(std::move(options)), rotation_(options_.sentinel->sentinels.size()) {}

SentinelClient::~SentinelClient() {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(mu_);
    w = watch_;
  }
  if (!w) return;
  std::optional<RedisLink> link;
  {
    std::lock_guard lk(w->mu);
    w->stop = true;
    w->client = nullptr;
    link = std::move(w->link);
    w->link.reset();
  }
  link.reset();  // closed outside the lock, as the release subscriber does
}

RedisOptions SentinelClient::sentinel_options(std::size_t i) const {
  const RedisSentinelOptions& s = *options_.sentinel;
  RedisOptions o;
  o.host = s.sentinels.at(i).host;
  o.port = s.sentinels.at(i).port;
  o.username = s.username;
  o.password = s.password;
  o.tls = s.tls;
  o.connect_timeout = options_.connect_timeout;
  o.command_timeout = options_.command_timeout;
  o.eviction_check = EvictionCheck::off;
  return o;
}

RedisOptions SentinelClient::primary_options(const redis_proto::NodeAddress& a) const {
  RedisOptions o = options_;
  o.sentinel.reset();
  o.host = a.host;
  o.port = a.port;
  return o;
}

void SentinelClient::announce(const redis_proto::SwitchMaster& sw) {
  RedisOptions primary = primary_options(sw.to);
  std::lock_guard lk(mu_);
  last_ = std::move(primary);
  known_.announced = sw;
  known_.epoch_when_announced = known_.chosen ? known_.chosen->config_epoch : 0;
  pacer_.news();
}

void SentinelClient::check_pace() const {
  std::lock_guard lk(mu_);
  const auto now = redis_proto::DiscoveryPacer::Clock::now();
  if (pacer_.may_start(now)) return;
  throw ConnectionError(fmt::format(
      "dlock: the sentinels of '{}' were asked moments ago and named no primary that may be used ({}); they are "
      "asked again in {} (a failover in progress: retried)",
      options_.sentinel->master_name, pacer_.last_failure(),
      format_duration(std::chrono::ceil<std::chrono::milliseconds>(pacer_.not_before() - now))));
}

void SentinelClient::round_failed(std::string why) {
  std::lock_guard lk(mu_);
  pacer_.failed(redis_proto::DiscoveryPacer::Clock::now(), std::move(why));
}

std::optional<RedisOptions> SentinelClient::last_primary() const {
  std::lock_guard lk(mu_);
  return last_;
}

std::string_view SentinelClient::primary_endpoint() const {
  constexpr std::size_t bound = 16;
  std::lock_guard lk(mu_);
  if (!last_) return {};
  std::string e = fmt::format("{}:{}", last_->host, last_->port);
  auto it = endpoints_.find(e);
  if (it == endpoints_.end()) {
    if (endpoints_.size() >= bound) return {};
    it = endpoints_.insert(std::move(e)).first;
  }
  return *it;
}

std::optional<redis_proto::MasterView> SentinelClient::ask(std::size_t i, std::string& why) const {
  const RedisOptions so = sentinel_options(i);
  std::string answer;
  try {
    RedisLink link = RedisLink::open(so, RedisLinkSetup{.load_scripts = false, .check_eviction = false});
    RedisCall call;
    call.what = "SENTINEL MASTER";
    redis_proto::push_sentinel_master(call.request, options_.sentinel->master_name);
    const auto view = redis_proto::parse_sentinel_master(link.exec(std::move(call)).at(0));
    if (const auto* v = std::get_if<redis_proto::MasterView>(&view)) return *v;
    answer = std::holds_alternative<redis_proto::MasterUnknown>(view) ? std::string("does not monitor that name")
                                                                      : std::get<redis_proto::ReplyFault>(view).message;
  } catch (const std::exception& e) {
    answer = e.what();
  }
  why += fmt::format("{}{}: {}", why.empty() ? "" : "; ", redis_endpoint(so), answer);
  return std::nullopt;
}

redis_proto::PrimaryChoice SentinelClient::choose(std::string& why) {
  check_pace();
  // Every sentinel is asked, in turn (each bounded by connect_timeout and
  // command_timeout): the newest view is the one of the highest epoch, and
  // the first answer may be a lagging sentinel's (docs/safety.md).
  std::vector<std::size_t> order;
  {
    std::lock_guard lk(mu_);
    order = rotation_.order();
  }
  const redis_proto::SentinelKnowledge known = knowledge();
  std::vector<redis_proto::SentinelAnswer> answers;
  for (std::size_t i : order) {
    if (auto view = ask(i, why)) answers.push_back(redis_proto::SentinelAnswer{i, std::move(*view)});
  }
  auto choice = redis_proto::choose_primary(answers, options_.sentinel->sentinels.size(), known);
  if (auto* c = std::get_if<redis_proto::PrimaryChoice>(&choice)) return std::move(*c);
  ConnectionError e(fmt::format(
      "dlock: no sentinel names the primary of '{}' that may be used now: {} ({}); nothing was asked of a data "
      "node (a failover in progress: retried)",
      options_.sentinel->master_name, std::get<redis_proto::NoPrimary>(choice).why, why));
  round_failed(e.what());
  throw e;
}

redis_proto::SentinelKnowledge SentinelClient::knowledge() const {
  std::lock_guard lk(mu_);
  return known_;
}

bool SentinelClient::adopt(const redis_proto::PrimaryChoice& choice, RedisOptions primary) {
  std::function<void()> retire;
  {
    std::lock_guard lk(mu_);
    rotation_.answered(choice.sentinel);
    if (redis_proto::superseded(choice.view, known_)) return false;  // a newer round or a +switch-master won
    pacer_.succeeded();
    const bool moved = last_ && (last_->host != primary.host || last_->port != primary.port);
    known_.chosen = choice.view;
    if (known_.announced && choice.view.config_epoch > known_.epoch_when_announced) known_.announced.reset();
    last_ = std::move(primary);
    if (moved) retire = on_switch_;
  }
  // Connections pooled to the node found before are not to this epoch's
  // primary: retired as after a +switch-master.
  if (retire) retire();
  return true;
}

void SentinelClient::throw_superseded(const redis_proto::PrimaryChoice& choice) const {
  std::string why;
  {
    std::lock_guard lk(mu_);
    why = redis_proto::superseded(choice.view, known_).value_or("superseded");
  }
  throw ConnectionError(fmt::format(
      "dlock: the primary of '{}' found at configuration epoch {} may no longer be used ({}); nothing was asked "
      "of it (a failover in progress: retried)",
      options_.sentinel->master_name, choice.view.config_epoch, why));
}

std::optional<RedisLink> SentinelClient::open_if_primary(const RedisOptions& primary, const RedisLinkSetup& setup,
                                                         std::string& why) {
  try {
    RedisLink link = RedisLink::open(primary, setup);
    RedisCall call;
    call.what = "ROLE";
    redis_proto::push_role(call.request);
    const RedisValue reply = std::move(link.exec(std::move(call)).at(0));
    if (reply.is_error()) throw_if_error(reply, link.endpoint(), "ROLE");
    const auto role = redis_proto::parse_role(reply);
    const auto* info = std::get_if<redis_proto::RoleInfo>(&role);
    if (info != nullptr && info->role == redis_proto::RoleInfo::Role::master) return link;
    link.close();
    why += fmt::format(
        "{}{}: not the primary ({}; nothing was asked of it)", why.empty() ? "" : "; ", link.endpoint(),
        info == nullptr
            ? std::string("ROLE gave an unexpected reply")
            : fmt::format("ROLE says {}", info->role == redis_proto::RoleInfo::Role::replica ? "replica" : "sentinel"));
  } catch (const ConnectionError& e) {  // TimeoutError too: try the next candidate
    why += fmt::format("{}{}", why.empty() ? "" : "; ", e.what());
  }
  return std::nullopt;
}

RedisLink SentinelClient::open(const RedisLinkSetup& setup) {
  // The primary of the highest configuration epoch a majority of sentinels
  // report (redis_proto::choose_primary), then ROLE at that address.
  std::string why;
  const redis_proto::PrimaryChoice choice = choose(why);
  RedisOptions primary = primary_options(choice.view.address);
  auto link = open_if_primary(primary, setup, why);  // a ServerError (auth) is thrown as before
  if (!link) {
    ConnectionError e(fmt::format(
        "dlock: the primary of '{}' the sentinels name at configuration epoch {} cannot be used ({}); nothing was "
        "asked of a data node (a failover in progress: retried)",
        options_.sentinel->master_name, choice.view.config_epoch, why));
    round_failed(e.what());
    throw e;
  }
  if (!adopt(choice, std::move(primary))) {
    link->close();
    throw_superseded(choice);
  }
  return std::move(*link);
}

void SentinelClient::watch(std::function<void()> on_switch) {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(mu_);
    if (watch_) return;
    watch_ = w = std::make_shared<Watch>();
    on_switch_ = on_switch;
  }
  std::lock_guard lk(w->mu);
  w->client = this;
  w->on_switch = std::move(on_switch);
  w->start();
}

std::vector<std::size_t> SentinelClient::ask_order() const {
  std::lock_guard lk(mu_);
  return rotation_.order();
}

std::uint64_t SentinelClient::switches() const {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(mu_);
    w = watch_;
  }
  if (!w) return 0;
  std::lock_guard lk(w->mu);
  return w->switches;
}

}  // namespace dlock::detail
