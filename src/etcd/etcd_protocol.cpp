// The etcd v3 JSON API as pure functions (detail/etcd_protocol.hpp).
#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/detail/time.hpp>
#include <dlock/error.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <stdexcept>

namespace dlock::detail {

using nlohmann::json;

namespace {

constexpr std::string_view b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// An int64 field: a JSON string in the gateway's output, absent when zero.
std::int64_t int_field(const json& j, const char* name) {
  const auto it = j.find(name);
  if (it == j.end() || it->is_null()) return 0;
  if (it->is_string()) return std::stoll(it->get<std::string>());
  if (it->is_number_integer()) return it->get<std::int64_t>();
  throw std::runtime_error(fmt::format("etcd reply field {} is not an integer", name));
}

std::string bytes_field(const json& j, const char* name) {
  const auto it = j.find(name);
  if (it == j.end() || !it->is_string()) return {};
  return base64_decode(it->get<std::string>());
}

json parse(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw std::runtime_error("etcd reply is not a JSON object");
  return j;
}

EtcdKv kv_of(const json& kv) {
  return EtcdKv{.key = bytes_field(kv, "key"),
                .value = bytes_field(kv, "value"),
                .create_revision = int_field(kv, "create_revision"),
                .mod_revision = int_field(kv, "mod_revision"),
                .lease = int_field(kv, "lease")};
}

json compare(const char* target, std::string_view key, const char* field, json value) {
  return json{{"target", target}, {"result", "EQUAL"}, {"key", base64_encode(key)}, {field, std::move(value)}};
}

json range_op(std::string_view key) { return json{{"request_range", {{"key", base64_encode(key)}}}}; }

}  // namespace

EtcdEndpoint parse_etcd_endpoint(std::string_view url, std::string_view field) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument(
        fmt::format("{} = \"{}\" is not an etcd endpoint: {} (expected http://host:port or "
                    "https://host:port)",
                    field, url, why));
  };
  EtcdEndpoint e;
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else if (url.starts_with("https://")) {
    rest = url.substr(8);
    e.tls = true;
  } else {
    throw bad("no http:// or https:// scheme");
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('@') != std::string_view::npos) throw bad("credentials belong in username/password");
  if (rest.find('/') != std::string_view::npos) throw bad("a path is not allowed");
  std::string_view host;
  std::string_view port;
  if (rest.starts_with("[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') throw bad("no port");
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) throw bad("no port");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) throw bad("no host");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoi(std::string(port)) == 0 || std::stoi(std::string(port)) > 65535)
    throw bad("the port is not a number from 1 to 65535");
  e.host = host;
  e.port = port;
  e.url = url;
  return e;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += b64[(v >> 18) & 63];
    out += b64[(v >> 12) & 63];
    out += b64[(v >> 6) & 63];
    out += b64[v & 63];
  }
  if (i < bytes.size()) {
    unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += b64[(v >> 18) & 63];
    out += b64[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? b64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) throw std::invalid_argument("base64: length is not a multiple of 4");
  std::array<int, 256> rev{};
  rev.fill(-1);
  for (std::size_t i = 0; i < b64.size(); ++i) rev[static_cast<unsigned char>(b64[i])] = static_cast<int>(i);
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + static_cast<std::size_t>(k)];
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v[k] = 0;
        ++pad;
      } else if (pad > 0 || (v[k] = rev[static_cast<unsigned char>(c)]) < 0) {
        throw std::invalid_argument("base64: invalid character");
      }
    }
    const unsigned n = (static_cast<unsigned>(v[0]) << 18) | (static_cast<unsigned>(v[1]) << 12) |
                       (static_cast<unsigned>(v[2]) << 6) | static_cast<unsigned>(v[3]);
    out += static_cast<char>((n >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((n >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

std::int64_t etcd_lease_seconds(std::chrono::milliseconds ttl) noexcept {
  const auto s = saturating_ceil<std::chrono::seconds>(ttl).count();
  return s < 1 ? 1 : static_cast<std::int64_t>(s);
}

std::optional<EtcdError> parse_etcd_error(std::string_view body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  const json* e = &j;
  if (const auto it = j.find("error"); it != j.end() && it->is_object()) e = &*it;  // a streamed message's error
  const auto msg = e->find("message");
  auto code = e->find("code");
  if (code == e->end()) code = e->find("grpc_code");  // the error of a streamed reply
  if (code == e->end() || !code->is_number_integer()) return std::nullopt;
  return EtcdError{.code = code->get<int>(),
                   .message = msg != e->end() && msg->is_string() ? msg->get<std::string>() : std::string()};
}

EtcdErrorAction classify_etcd_error(const EtcdError& e) noexcept {
  const std::string_view m = e.message;
  auto has = [&](std::string_view s) { return m.find(s) != std::string_view::npos; };
  if (has("invalid auth token") || has("auth token is expired") || has("authentication token")) {
    return EtcdErrorAction::reauthenticate;
  }
  if (has("authentication failed") || has("permission denied") || has("user name is empty") || e.code == 7) {
    return EtcdErrorAction::auth_failed;
  }
  if (e.code == 16) return EtcdErrorAction::reauthenticate;
  if (has("request timed out") || has("timed out due to leader failure") || has("leader changed")) {
    return EtcdErrorAction::in_doubt;
  }
  if (e.code == 14 || has("no leader") || has("server stopped") || has("not capable") || has("too many requests")) {
    return EtcdErrorAction::next_endpoint;
  }
  return EtcdErrorAction::fail;
}

std::string etcd_authenticate_request(std::string_view user, std::string_view password) {
  return json{{"name", user}, {"password", password}}.dump();
}

std::string etcd_lease_grant_request(std::int64_t ttl_seconds) {
  return json{{"TTL", std::to_string(ttl_seconds)}}.dump();
}

std::string etcd_lease_id_request(std::int64_t lease) { return json{{"ID", std::to_string(lease)}}.dump(); }

std::string etcd_acquire_request(std::string_view key, std::string_view owner, std::int64_t lease) {
  const json put{{"request_put",
                  {{"key", base64_encode(key)}, {"value", base64_encode(owner)}, {"lease", std::to_string(lease)}}}};
  return json{{"compare", json::array({compare("CREATE", key, "create_revision", "0")})},
              {"success", json::array({put, range_op(key)})},
              {"failure", json::array({range_op(key)})}}
      .dump();
}

std::string etcd_release_request(std::string_view key, std::string_view owner, std::int64_t create_revision) {
  json cmp = json::array({compare("VALUE", key, "value", base64_encode(owner))});
  if (create_revision != 0) cmp.push_back(compare("CREATE", key, "create_revision", std::to_string(create_revision)));
  return json{{"compare", std::move(cmp)},
              {"success", json::array({{{"request_delete_range", {{"key", base64_encode(key)}}}}})}}
      .dump();
}

std::string etcd_owner_check_request(std::string_view key, std::string_view owner, std::int64_t create_revision,
                                     std::int64_t lease) {
  return json{{"compare", json::array({compare("VALUE", key, "value", base64_encode(owner)),
                                       compare("CREATE", key, "create_revision", std::to_string(create_revision)),
                                       compare("LEASE", key, "lease", std::to_string(lease))})}}
      .dump();
}

std::string etcd_relet_request(std::string_view key, std::string_view owner, std::int64_t create_revision,
                               std::int64_t lease) {
  const json put{
      {"request_put", {{"key", base64_encode(key)}, {"ignore_value", true}, {"lease", std::to_string(lease)}}}};
  return json{{"compare", json::array({compare("VALUE", key, "value", base64_encode(owner)),
                                       compare("CREATE", key, "create_revision", std::to_string(create_revision))})},
              {"success", json::array({put})}}
      .dump();
}

std::string etcd_range_request(std::string_view key, bool prefix) {
  json r{{"key", base64_encode(key)}};
  if (prefix) {
    // The range end of a prefix: the prefix with its last byte below 0xff incremented.
    std::string end(key);
    while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
    if (end.empty()) {
      end = std::string(1, '\0');
    } else {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
    }
    r["range_end"] = base64_encode(end);
  }
  return r.dump();
}

std::string etcd_watch_request(std::string_view key, std::int64_t start_revision) {
  json c{{"key", base64_encode(key)}};
  if (start_revision > 0) c["start_revision"] = std::to_string(start_revision);
  return json{{"create_request", std::move(c)}}.dump();
}

EtcdLeaseGrant parse_etcd_lease_grant(std::string_view body) {
  const json j = parse(body);
  EtcdLeaseGrant g{.id = int_field(j, "ID"), .ttl = int_field(j, "TTL")};
  if (g.id == 0 || g.ttl <= 0) throw std::runtime_error("etcd lease grant reply has no lease");
  return g;
}

EtcdAcquireReply parse_etcd_acquire(std::string_view body, std::string_view owner, std::int64_t lease) {
  const json j = parse(body);
  EtcdAcquireReply r;
  if (const auto h = j.find("header"); h != j.end()) r.revision = int_field(*h, "revision");
  std::optional<EtcdKv> kv;
  if (const auto rs = j.find("responses"); rs != j.end() && rs->is_array()) {
    for (const json& op : *rs) {
      const auto range = op.find("response_range");
      if (range == op.end()) continue;
      const auto kvs = range->find("kvs");
      if (kvs != range->end() && kvs->is_array() && !kvs->empty()) kv = kv_of(kvs->front());
    }
  }
  if (kv && kv->value == owner && kv->lease == lease) {  // created now, or by this same attempt before
    r.granted = true;
    r.create_revision = kv->create_revision;
    return r;
  }
  if (j.value("succeeded", false)) throw std::runtime_error("etcd acquire txn succeeded but the key is not there");
  r.holder = std::move(kv);
  return r;
}

std::string parse_etcd_auth_token(std::string_view body) {
  const json j = parse(body);
  const auto t = j.find("token");
  if (t == j.end() || !t->is_string() || t->get<std::string>().empty())
    throw std::runtime_error("etcd authenticate reply has no token");
  return t->get<std::string>();
}

bool parse_etcd_txn_succeeded(std::string_view body) { return parse(body).value("succeeded", false); }

std::int64_t parse_etcd_keepalive(std::string_view body) {
  const json j = parse(body);
  const auto r = j.find("result");
  return int_field(r != j.end() && r->is_object() ? *r : j, "TTL");
}

std::string etcd_keepalive_many_request(std::span<const std::int64_t> leases) {
  std::string out;
  for (const std::int64_t id : leases) {
    out += etcd_lease_id_request(id);
    out += '\n';
  }
  return out;
}

std::vector<std::pair<std::int64_t, std::int64_t>> parse_etcd_keepalive_many(std::string_view body) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  while (!body.empty()) {
    const auto nl = body.find('\n');
    const std::string_view line = body.substr(0, nl);
    body = nl == std::string_view::npos ? std::string_view() : body.substr(nl + 1);
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    const json j = parse(line);
    if (j.contains("error")) throw std::runtime_error("etcd keepalive stream ended with an error");
    const auto r = j.find("result");
    const json& m = r != j.end() && r->is_object() ? *r : j;
    out.emplace_back(int_field(m, "ID"), int_field(m, "TTL"));
  }
  return out;
}

std::string etcd_range_many_request(std::span<const std::string> keys) {
  json ops = json::array();
  for (const auto& k : keys) ops.push_back(range_op(k));
  return json{{"success", std::move(ops)}}.dump();
}

std::vector<std::optional<EtcdKv>> parse_etcd_range_many(std::string_view body) {
  const json j = parse(body);
  std::vector<std::optional<EtcdKv>> out;
  if (const auto rs = j.find("responses"); rs != j.end() && rs->is_array()) {
    for (const json& op : *rs) {
      std::optional<EtcdKv> kv;
      if (const auto range = op.find("response_range"); range != op.end()) {
        const auto kvs = range->find("kvs");
        if (kvs != range->end() && kvs->is_array() && !kvs->empty()) kv = kv_of(kvs->front());
      }
      out.push_back(std::move(kv));
    }
  }
  return out;
}

std::int64_t parse_etcd_time_to_live(std::string_view body) { return int_field(parse(body), "TTL"); }

std::vector<EtcdKv> parse_etcd_range(std::string_view body) {
  const json j = parse(body);
  std::vector<EtcdKv> out;
  if (const auto kvs = j.find("kvs"); kvs != j.end() && kvs->is_array()) {
    for (const json& kv : *kvs) out.push_back(kv_of(kv));
  }
  return out;
}

EtcdWatchMessage parse_etcd_watch_message(std::string_view line) {
  const json j = parse(line);
  EtcdWatchMessage m;
  const auto r = j.find("result");
  if (r == j.end() || !r->is_object()) {
    m.canceled = true;  // an error message: the stream ends
    return m;
  }
  m.created = r->value("created", false);
  m.canceled = r->value("canceled", false);
  if (const auto h = r->find("header"); h != r->end()) m.revision = int_field(*h, "revision");
  if (const auto evs = r->find("events"); evs != r->end() && evs->is_array()) {
    for (const json& ev : *evs) m.deleted |= ev.value("type", std::string()) == "DELETE";
  }
  return m;
}

}  // namespace dlock::detail
