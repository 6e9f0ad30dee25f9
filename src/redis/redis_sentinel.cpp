// Redis Sentinel requests and reply parsers without I/O (redis_sentinel.hpp).
#include <dlock/detail/redis_sentinel.hpp>

#include <algorithm>
#include <charconv>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace dlock::detail::redis_proto {

namespace {

using T = Reply::Type;

std::optional<std::uint16_t> port_of(std::string_view s) {
  unsigned v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// A port as ROLE sends it: a bulk string in the master's replica list, an
// integer for a replica's master.
std::optional<std::uint16_t> port_of(const Reply& r) {
  if (r.type == T::string) return port_of(std::string_view(r.str));
  if (r.type == T::integer && r.integer >= 1 && r.integer <= 65535) return static_cast<std::uint16_t>(r.integer);
  return std::nullopt;
}

std::optional<std::int64_t> offset_of(const Reply& r) {
  if (r.type == T::integer) return r.integer;
  if (r.type == T::string) {
    std::int64_t v = 0;
    const auto [p, ec] = std::from_chars(r.str.data(), r.str.data() + r.str.size(), v);
    if (!r.str.empty() && ec == std::errc{} && p == r.str.data() + r.str.size()) return v;
  }
  return std::nullopt;
}

ReplyFault fault(const Reply& r, std::string_view what) {
  if (r.is_error()) return ReplyFault{classify_error(r.str).kind, r.str};
  return ReplyFault{std::nullopt, fmt::format("unexpected reply to {}", what)};
}

}  // namespace

void push_get_master_addr(Request& request, std::string_view master_name) {
  request.push({"SENTINEL", "get-master-addr-by-name", master_name});
}

void push_role(Request& request) { request.push({"ROLE"}); }

MasterAddr parse_master_addr(const Reply& r) {
  if (r.type == T::nil) return MasterUnknown{};
  if (r.type == T::array && r.elements.empty()) return MasterUnknown{};
  if (r.type == T::array && r.elements.size() == 2 && r.elements[0].type == T::string && !r.elements[0].str.empty()) {
    if (const auto port = port_of(r.elements[1])) return NodeAddress{r.elements[0].str, *port};
  }
  return fault(r, "SENTINEL get-master-addr-by-name");
}

std::variant<RoleInfo, ReplyFault> parse_role(const Reply& r) {
  if (r.type != T::array || r.elements.empty() || r.elements[0].type != T::string) return fault(r, "ROLE");
  const std::string& role = r.elements[0].str;
  const auto& e = r.elements;
  RoleInfo info;
  if (role == "master" && e.size() == 3 && e[2].type == T::array) {
    const auto offset = offset_of(e[1]);
    if (!offset) return fault(r, "ROLE");
    info.role = RoleInfo::Role::master;
    info.offset = *offset;
    for (const Reply& replica : e[2].elements) {
      if (replica.type != T::array || replica.elements.size() < 2 || replica.elements[0].type != T::string)
        return fault(r, "ROLE");
      const auto port = port_of(replica.elements[1]);
      if (!port) return fault(r, "ROLE");
      info.replicas.push_back(NodeAddress{replica.elements[0].str, *port});
    }
    return info;
  }
  if ((role == "slave" || role == "replica") && e.size() == 5 && e[1].type == T::string && e[3].type == T::string) {
    const auto port = port_of(e[2]);
    const auto offset = offset_of(e[4]);
    if (!port || !offset) return fault(r, "ROLE");
    info.role = RoleInfo::Role::replica;
    info.master = NodeAddress{e[1].str, *port};
    info.link_state = e[3].str;
    info.offset = *offset;
    return info;
  }
  if (role == "sentinel" && e.size() == 2 && e[1].type == T::array) {
    info.role = RoleInfo::Role::sentinel;
    for (const Reply& name : e[1].elements) {
      if (name.type != T::string) return fault(r, "ROLE");
      info.masters.push_back(name.str);
    }
    return info;
  }
  return fault(r, "ROLE");
}

std::optional<SwitchMaster> parse_switch_master(std::string_view payload) {
  std::string_view words[5];
  for (std::size_t i = 0; i < 5; ++i) {
    const auto space = payload.find(' ');
    if ((space == std::string_view::npos) != (i == 4)) return std::nullopt;
    words[i] = payload.substr(0, space);
    if (words[i].empty()) return std::nullopt;
    payload = i == 4 ? std::string_view{} : payload.substr(space + 1);
  }
  const auto from_port = port_of(words[2]);
  const auto to_port = port_of(words[4]);
  if (!from_port || !to_port) return std::nullopt;
  return SwitchMaster{std::string(words[0]), NodeAddress{std::string(words[1]), *from_port},
                      NodeAddress{std::string(words[3]), *to_port}};
}

void push_sentinel_master(Request& request, std::string_view master_name) {
  request.push({"SENTINEL", "MASTER", master_name});
}

MasterViewReply parse_sentinel_master(const Reply& r) {
  if (r.is_error() && r.str.find("No such master") != std::string::npos) return MasterUnknown{};
  if (r.type != T::array || r.elements.size() % 2 != 0) return fault(r, "SENTINEL MASTER");
  const std::string* ip = nullptr;
  std::optional<std::uint16_t> port;
  std::optional<std::int64_t> epoch;
  for (std::size_t i = 0; i + 1 < r.elements.size(); i += 2) {
    const Reply& k = r.elements[i];
    const Reply& v = r.elements[i + 1];
    if (k.type != T::string) return fault(r, "SENTINEL MASTER");
    if (k.str == "ip" && v.type == T::string && !v.str.empty()) ip = &v.str;
    if (k.str == "port") port = port_of(v);
    if (k.str == "config-epoch") epoch = offset_of(v);
  }
  if (ip == nullptr || !port || !epoch || *epoch < 0) return fault(r, "SENTINEL MASTER");
  return MasterView{NodeAddress{*ip, *port}, static_cast<std::uint64_t>(*epoch)};
}

std::variant<PrimaryChoice, NoPrimary> choose_primary(const std::vector<SentinelAnswer>& answers,
                                                      std::size_t configured, const SentinelKnowledge& known) {
  const std::size_t majority = configured / 2 + 1;
  if (answers.size() < majority)
    return NoPrimary{fmt::format("{} of {} sentinels answered, fewer than the majority of {}", answers.size(),
                                 configured, majority)};
  const auto top = std::max_element(answers.begin(), answers.end(), [](const auto& a, const auto& b) {
    return a.view.config_epoch < b.view.config_epoch;
  });
  const MasterView& best = top->view;
  for (const SentinelAnswer& a : answers) {
    if (a.view.config_epoch == best.config_epoch && !(a.view.address == best.address))
      return NoPrimary{fmt::format("sentinels disagree at configuration epoch {} ({}:{} and {}:{})", best.config_epoch,
                                   best.address.host, best.address.port, a.view.address.host, a.view.address.port)};
  }
  if (known.chosen && best.config_epoch < known.chosen->config_epoch)
    return NoPrimary{
        fmt::format("the sentinels that answered are at configuration epoch {}, behind epoch {} "
                    "already used",
                    best.config_epoch, known.chosen->config_epoch)};
  // Another address at the epoch already used: taken only when a majority
  // names it (the view this client adopted was a failover's passing state, or
  // the sentinels settled otherwise); a lone answer could be a lagging
  // sentinel's. Refusing for good would strand the client until the next
  // failover (seen under load: every later round refused).
  if (known.chosen && best.config_epoch == known.chosen->config_epoch && !(best.address == known.chosen->address)) {
    const auto agreeing = static_cast<std::size_t>(
        std::count_if(answers.begin(), answers.end(), [&](const SentinelAnswer& a) { return a.view == best; }));
    if (agreeing < majority)
      return NoPrimary{
          fmt::format("{} of {} sentinels name {}:{} at configuration epoch {}, where {}:{} was used; "
                      "fewer than the majority of {}",
                      agreeing, configured, best.address.host, best.address.port, best.config_epoch,
                      known.chosen->address.host, known.chosen->address.port, majority)};
  }
  if (known.announced && best.address == known.announced->from && !(known.announced->from == known.announced->to) &&
      best.config_epoch <= known.epoch_when_announced)
    return NoPrimary{
        fmt::format("the sentinels that answered still name {}:{} at configuration epoch {}, which a "
                    "+switch-master announced as the old primary",
                    best.address.host, best.address.port, best.config_epoch)};
  return PrimaryChoice{best, top->sentinel};
}

std::optional<std::string> superseded(const MasterView& view, const SentinelKnowledge& known) {
  if (known.chosen && view.config_epoch < known.chosen->config_epoch)
    return fmt::format("configuration epoch {} is behind epoch {}, adopted meanwhile", view.config_epoch,
                       known.chosen->config_epoch);
  if (known.announced && view.address == known.announced->from && !(known.announced->from == known.announced->to) &&
      view.config_epoch <= known.epoch_when_announced)
    return fmt::format("a +switch-master heard meanwhile names {}:{} the old primary", view.address.host,
                       view.address.port);
  return std::nullopt;
}

std::vector<std::size_t> SentinelRotation::order() const {
  std::vector<std::size_t> out;
  out.reserve(count_);
  for (std::size_t i = 0; i < count_; ++i) out.push_back((first_ + i) % count_);
  return out;
}

}  // namespace dlock::detail::redis_proto
