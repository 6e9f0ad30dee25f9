// libFuzzer target for what PostgresBackend does with a user's connection
// string before it ever connects (issue 15 item 5): libpq's parse, dlock's
// check for URIs libpq would misread, the endpoint text, and the redaction of
// libpq's messages. The first byte chooses:
//  - raw: the rest is the conninfo. The constructor succeeds with a non-empty
//    endpoint or throws InvalidArgument, nothing else.
//  - keyword/value or URI: the fields build a conninfo around a marker
//    password (written as it is or encoded), which no other field can
//    contain. The marker never shows in an error message or the endpoint.
// The conninfo also goes through pg_redact, whose output has no line break
// or double space and does not change when redacted again.
#include <dlock/error.hpp>
#include <dlock/postgres.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_input.hpp"

namespace {

using dlock_fuzz::require;

using dlock_fuzz::contains;
using dlock_fuzz::marker;

// Returns the endpoint, or the error message with `failed` set.
std::string construct(const std::string& conninfo, bool& failed) {
  failed = false;
  try {
    const dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = conninfo});
    std::string endpoint(pg.endpoint());
    require(!endpoint.empty(), "empty endpoint", conninfo);
    return endpoint;
  } catch (const dlock::InvalidArgument& e) {
    failed = true;
    return e.what();
  }
}

void check_redact(std::string_view message) {
  const std::string r = dlock::detail::pg_redact(message);
  require(!contains(r, "\n") && !contains(r, "  "), "pg_redact left a line break or a double space", r);
  require(dlock::detail::pg_redact(r) == r, "pg_redact is not idempotent", r);
}

std::string keyword_value(dlock_fuzz::FuzzInput& in, const std::string& password, std::uint8_t shape) {
  std::string s;
  for (const char* key : {"host", "port", "dbname", "user"}) {
    const std::string v = dlock_fuzz::without(in.field(), "\x7f");
    if (!v.empty()) s += std::string(key) + "=" + dlock_fuzz::pg_quoted(v) + " ";
  }
  // Quoted, or as it is when it needs no quotes.
  const bool plain =
      (shape & 0x10) && !password.empty() && password.find_first_of(" \t\n\r\f\v'\\") == std::string::npos;
  s += "password=" + (plain ? password : dlock_fuzz::pg_quoted(password));
  const std::string extra = dlock_fuzz::without(in.field(), "\x7f");
  if (!extra.empty()) s += " " + extra;  // anything after it, parsed or not
  return s;
}

std::string uri(dlock_fuzz::FuzzInput& in, const std::string& password, std::uint8_t shape) {
  // The user is percent-decoded and shows in the endpoint when there is no
  // dbname: no '%' there, nor in the host and database (also decoded).
  const std::string user = dlock_fuzz::without(in.field(), "\x7f%");
  const std::string host = dlock_fuzz::without(in.field(), "\x7f%");
  const std::string port = dlock_fuzz::without(in.field(), "\x7f");
  const std::string db = dlock_fuzz::without(in.field(), "\x7f%");
  const std::string query = dlock_fuzz::without(in.field(), "\x7f%");
  const std::uint8_t encoding = in.byte() % 3;
  const std::string written = encoding == 0   ? password
                              : encoding == 1 ? dlock_fuzz::percent_encode(password)
                                              : dlock_fuzz::percent_encode(password, ":@/?#%[] ");
  std::string s = (shape & 0x10) ? "postgresql://" : "postgres://";
  s += user + ":" + written + "@" + host;
  if (shape & 0x20) s += ":" + port;
  if (shape & 0x40) s += "/" + db;
  if (shape & 0x80) s += "?" + query;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dlock_fuzz::FuzzInput in(data, size);
  const std::uint8_t shape = in.byte();
  bool failed = false;
  if (shape % 3 == 0) {
    const std::string conninfo(in.rest());
    (void)construct(conninfo, failed);
    check_redact(conninfo);
    return 0;
  }
  // The marker somewhere in fuzzed bytes (NUL-free: fields end at NUL).
  const std::string password = dlock_fuzz::marked(in);
  const std::string conninfo = shape % 3 == 1 ? keyword_value(in, password, shape) : uri(in, password, shape);
  const std::string text = construct(conninfo, failed);
  require(!contains(text, marker), failed ? "the password in an error message" : "the password in endpoint()",
          conninfo);
  check_redact(conninfo);
  return 0;
}
