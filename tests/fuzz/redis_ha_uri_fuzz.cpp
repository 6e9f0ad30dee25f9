// libFuzzer target for parse_redis_sentinel_uri and parse_redis_cluster_uri
// (issue 14). The first byte chooses the parser (bit 0) and the input kind
// (bit 1):
//  - raw: the rest is the URI. It parses into options that validate()
//    accepts, or is refused with the one message form that quotes nothing;
//  - structured: scheme://user:password@hosts/path?query around a marker
//    password, which no other field can contain. The marker never shows in an
//    error message, a host or the master name; a URI that parses keeps it in
//    the password.
#include <dlock/error.hpp>
#include <dlock/redis_ha.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_input.hpp"

namespace {

using dlock_fuzz::contains;
using dlock_fuzz::marker;
using dlock_fuzz::require;
constexpr std::string_view refused = "dlock: invalid Redis URI (not shown: it may contain a password): ";

struct Parsed {
  std::vector<dlock::RedisAddress> hosts;
  std::string username, password, master_name;
};

// Parses with the chosen parser; nullopt when refused (after checking the message).
std::optional<Parsed> parse(std::string_view uri, bool sentinel) {
  try {
    if (sentinel) {
      auto u = dlock::parse_redis_sentinel_uri(uri);
      dlock::detail::validate(u.sentinel);
      return Parsed{u.sentinel.sentinels, u.username, u.password, u.sentinel.master_name};
    }
    auto u = dlock::parse_redis_cluster_uri(uri);
    dlock::detail::validate(u.cluster);
    return Parsed{u.cluster.seeds, u.username, u.password, {}};
  } catch (const dlock::InvalidArgument& e) {
    require(std::string_view(e.what()).substr(0, refused.size()) == refused, "a refusal may quote the URI", e.what());
    require(!contains(e.what(), marker), "the password in an error message", uri);
    return std::nullopt;
  }
}

void check(const Parsed& p, std::string_view uri) {
  require(!p.hosts.empty(), "no host", uri);
  for (const auto& h : p.hosts) {
    require(!h.host.empty() && h.port >= 1 && h.port <= 65535, "bad address", uri);
    require(!contains(h.host, marker), "the password in a host", uri);
  }
  require(!contains(p.master_name, marker), "the password in the master name", uri);
  require(p.username.empty() || !p.password.empty(), "a user name without a password", uri);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dlock_fuzz::FuzzInput in(data, size);
  const std::uint8_t mode = in.byte();
  const bool sentinel = (mode & 1) == 0;
  if ((mode & 2) == 0) {
    if (const auto p = parse(in.rest(), sentinel)) check(*p, in.rest());
    return 0;
  }
  const std::string user = dlock_fuzz::without(in.field(), "\x7f");
  const std::string password = dlock_fuzz::marked(in);
  const std::uint8_t encoding = in.byte() % 3;
  const std::string written = encoding == 0   ? password
                              : encoding == 1 ? dlock_fuzz::percent_encode(password)
                                              : dlock_fuzz::percent_encode(password, ":@/?#%[]");
  const std::string hosts = dlock_fuzz::without(in.field(), "\x7f@");
  const std::string path = dlock_fuzz::without(in.field(), "\x7f%@");
  const std::string query = dlock_fuzz::without(in.field(), "\x7f@");
  std::string uri = sentinel ? "redis+sentinel://" : "redis+cluster://";
  if (!(mode & 0x80)) uri += user + ":" + written + "@";
  uri += hosts;
  if (mode & 0x40) uri += "/" + path;
  if (mode & 0x20) uri += "?" + query;
  const auto p = parse(uri, sentinel);
  if (!p) return 0;
  check(*p, uri);
  if (!(mode & 0x80)) require(contains(p->password, marker), "the password lost", uri);
  return 0;
}
