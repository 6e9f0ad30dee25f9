// libFuzzer target for parse_redis_uri (issue 15 item 5). Two kinds of input,
// chosen by the first byte:
//  - raw: the rest is the URI. It parses into options that validate() accepts
//    and whose endpoint can be formed, or it is refused with the one message
//    form that quotes nothing of the URI.
//  - structured: the fields build scheme://user:password@host:port/db?query
//    (or a unix socket URI) around a marker password, which no other field
//    can contain. The marker never shows in an error message, the endpoint,
//    the host or the socket path; a URI that parses keeps it in the password.
#include <dlock/redis_options.hpp>
#include <dlock/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_input.hpp"

namespace {

using dlock_fuzz::require;

using dlock_fuzz::contains;
using dlock_fuzz::marker;
constexpr std::string_view refused = "dlock: invalid Redis URI (not shown: it may contain a password): ";

void check_raw(std::string_view uri) {
  dlock::RedisOptions o;
  try {
    o = dlock::parse_redis_uri(uri);
  } catch (const dlock::InvalidArgument& e) {
    require(std::string_view(e.what()).substr(0, refused.size()) == refused, "a refusal may quote the URI", e.what());
    return;
  }
  dlock::detail::validate(o);  // throws (and the fuzzer reports it) if parse let an invalid field through
  const std::string endpoint = dlock::detail::redis_endpoint(o);
  require(!endpoint.empty(), "empty endpoint");
  require(o.unix_socket.empty() ? o.port >= 1 && o.port <= 65535 : o.unix_socket.front() == '/', "bad address",
          endpoint);
  require(o.username.empty() || !o.password.empty(), "a user name without a password");
}

void check_structured(dlock_fuzz::FuzzInput& in) {
  const std::uint8_t shape = in.byte();
  static constexpr std::array<std::string_view, 4> schemes = {"redis", "unix", "redis+unix", "rediss"};
  const std::string scheme =
      shape % 5 < 4 ? std::string(schemes[shape % 5]) : dlock_fuzz::without(in.field(), "\x7f:/");  // no "://" in it
  const bool unix_socket = scheme != "redis" && scheme != "rediss";
  std::string user(in.field());  // may hold the marker: user names are never shown either
  if (unix_socket && !user.empty() && user.front() == '/')
    user = "u" + user;  // documented: unix:///path@... has no credentials
  // The password: the marker somewhere in fuzzed bytes, written as it is,
  // fully percent-encoded, or with only the URI's delimiters encoded.
  const std::string password = dlock_fuzz::marked(in);
  const std::uint8_t encoding = in.byte() % 3;
  const std::string written = encoding == 0   ? password
                              : encoding == 1 ? dlock_fuzz::percent_encode(password)
                                              : dlock_fuzz::percent_encode(password, ":@/?#%[]");
  // Where the marker may not go: drop 0x7f, and '%' (which could encode it)
  // from the fields that are percent-decoded.
  const std::string host = dlock_fuzz::without(in.field(), "\x7f");
  const std::string port = dlock_fuzz::without(in.field(), "\x7f");
  const std::string path = dlock_fuzz::without(in.field(), "\x7f%");
  const std::string query = dlock_fuzz::without(in.field(), "\x7f");
  std::string uri = scheme + "://";
  if (!(shape & 0x80)) uri += user + ":" + written + "@";
  if (unix_socket) {
    uri += path;
  } else {
    uri += host;
    if (shape & 0x40) uri += ":" + port;
    if (shape & 0x20) uri += "/" + path;
  }
  if (shape & 0x10) uri += "?" + query;

  dlock::RedisOptions o;
  try {
    o = dlock::parse_redis_uri(uri);
  } catch (const dlock::InvalidArgument& e) {
    require(!contains(e.what(), marker), "the password in an error message", uri);
    return;
  }
  const std::string endpoint = dlock::detail::redis_endpoint(o);
  require(!contains(endpoint, marker), "the password in endpoint()", uri);
  require(!contains(o.host, marker) && !contains(o.unix_socket, marker), "the password in the address", uri);
  if (!(shape & 0x80)) require(contains(o.password, marker), "the password lost", uri);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dlock_fuzz::FuzzInput in(data, size);
  if (in.byte() % 2 == 0) {
    check_raw(in.rest());
  } else {
    check_structured(in);
  }
  return 0;
}
