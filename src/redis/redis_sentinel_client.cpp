// SentinelClient: discovery of the primary, its ROLE check, and the
// +switch-master watch (see detail/redis_sentinel_client.hpp).
#include <dlock/detail/redis_sentinel_client.hpp>

#include <exception>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

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

void SentinelClient::remember(RedisOptions primary) {
  std::lock_guard lk(mu_);
  last_ = std::move(primary);
}

void SentinelClient::announce(const redis_proto::SwitchMaster& sw) {
  RedisOptions primary = primary_options(sw.to);
  std::lock_guard lk(mu_);
  last_ = std::move(primary);
  announced_ = sw;
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

std::optional<redis_proto::NodeAddress> SentinelClient::ask(std::size_t i, std::string& why) const {
  const RedisOptions so = sentinel_options(i);
  std::string answer;
  try {
    RedisLink link = RedisLink::open(so, RedisLinkSetup{.load_scripts = false, .check_eviction = false});
    RedisCall call;
    call.what = "SENTINEL get-master-addr-by-name";
    redis_proto::push_get_master_addr(call.request, options_.sentinel->master_name);
    const auto addr = redis_proto::parse_master_addr(link.exec(std::move(call)).at(0));
    if (const auto* a = std::get_if<redis_proto::NodeAddress>(&addr)) return *a;
    answer = std::holds_alternative<redis_proto::MasterUnknown>(addr) ? std::string("does not monitor that name")
                                                                      : std::get<redis_proto::ReplyFault>(addr).message;
  } catch (const std::exception& e) {
    answer = e.what();
  }
  why += fmt::format("{}{}: {}", why.empty() ? "" : "; ", redis_endpoint(so), answer);
  return std::nullopt;
}

RedisOptions SentinelClient::discover() {
  std::vector<std::size_t> order;
  {
    std::lock_guard lk(mu_);
    order = rotation_.order();
  }
  std::string answers;
  for (std::size_t i : order) {
    if (const auto a = ask(i, answers)) {
      RedisOptions primary = primary_options(*a);
      std::lock_guard lk(mu_);
      rotation_.answered(i);
      last_ = primary;
      return primary;
    }
  }
  throw ConnectionError(
      fmt::format("dlock: no sentinel names the primary of '{}' ({}); nothing was asked of a data node",
                  options_.sentinel->master_name, answers));
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
  // The address a +switch-master announced first; then each sentinel's answer
  // (redis_proto::worth_trying: not the announced old primary, not twice),
  // each checked by ROLE, until one is the primary (docs/safety.md).
  const RedisSentinelOptions& s = *options_.sentinel;
  std::optional<redis_proto::SwitchMaster> announced;
  std::vector<std::size_t> order;
  {
    std::lock_guard lk(mu_);
    announced = announced_;
    order = rotation_.order();
  }
  std::vector<redis_proto::NodeAddress> tried;
  std::string why;
  if (announced) {
    const RedisOptions primary = primary_options(announced->to);
    tried.push_back(announced->to);
    if (auto link = open_if_primary(primary, setup, why)) {
      remember(primary);
      return std::move(*link);
    }
    std::lock_guard lk(mu_);  // no longer the primary: the announcement is out of date for the next discovery
    if (announced_ == announced) announced_.reset();
  }
  for (std::size_t i : order) {
    const auto answer = ask(i, why);
    if (!answer) continue;
    if (!redis_proto::worth_trying(*answer, announced, tried)) {
      why += fmt::format("{}{}: names {}:{}, the announced old primary or one already tried", why.empty() ? "" : "; ",
                         redis_endpoint(sentinel_options(i)), answer->host, answer->port);
      continue;
    }
    tried.push_back(*answer);
    const RedisOptions primary = primary_options(*answer);
    if (auto data = open_if_primary(primary, setup, why)) {  // a ServerError (auth) is thrown as before
      std::lock_guard lk(mu_);
      rotation_.answered(i);
      last_ = primary;
      return std::move(*data);
    }
  }
  throw ConnectionError(
      fmt::format("dlock: no sentinel names the primary of '{}' ({}); nothing was asked of a data node (a failover in "
                  "progress: retried)",
                  s.master_name, why));
}

void SentinelClient::watch(std::function<void()> on_switch) {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(mu_);
    if (watch_) return;
    watch_ = w = std::make_shared<Watch>();
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

std::optional<redis_proto::SwitchMaster> SentinelClient::announcement() const {
  std::lock_guard lk(mu_);
  return announced_;
}

void SentinelClient::found(std::optional<std::size_t> i, RedisOptions primary) {
  std::lock_guard lk(mu_);
  if (i) rotation_.answered(*i);
  last_ = std::move(primary);
}

void SentinelClient::announcement_failed(const redis_proto::SwitchMaster& sw) {
  std::lock_guard lk(mu_);
  if (announced_ == sw) announced_.reset();
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
