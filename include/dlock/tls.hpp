// dlock/tls.hpp: TlsOptions, the TLS settings shared by every backend that
// speaks TLS (Redis and Redlock nodes, etcd endpoints).
//
//   dlock::RedisOptions o{.host = "cache.internal", .port = 6380,
//                         .tls = dlock::TlsOptions{.ca_file = "/etc/ssl/redis-ca.pem"}};
//
// Verification is on by default: the server's chain must lead to a trusted CA
// (ca_file / ca_dir, or the system's default store when both are empty) and
// its certificate must name the host (or server_name). A TLS setting never
// falls back to plain TCP. Messages name files and fields, never key material.
#pragma once

#include <string>
#include <string_view>

namespace dlock {

struct TlsOptions {
  /// PEM file of trusted CA certificates. With ca_dir also empty, the system's
  /// default trust store is used.
  std::string ca_file{};
  /// Directory of trusted CA certificates in OpenSSL's hashed layout (c_rehash).
  std::string ca_dir{};
  /// Client certificate chain (PEM) for mutual TLS; set together with key_file.
  std::string cert_file{};
  /// Private key (PEM) of cert_file; never read into any message.
  std::string key_file{};
  /// Name sent as SNI and checked against the server's certificate; empty:
  /// the endpoint's host (an IP address is checked against the certificate's
  /// IP subject alternative names).
  std::string server_name{};
  /// Verify the server's certificate chain and name. Turning it off keeps the
  /// traffic encrypted but lets anyone in the path impersonate the server.
  bool verify = true;
};

namespace detail {
/// Throws InvalidArgument naming `field` (e.g. "RedisOptions::tls") and the
/// first invalid member: a cert_file without key_file or the reverse.
void validate_tls(const TlsOptions& options, std::string_view field);
}  // namespace detail

}  // namespace dlock

#include <fmt/format.h>

#include "error.hpp"

namespace dlock::detail {
inline void validate_tls(const TlsOptions& options, std::string_view field) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    throw InvalidArgument(fmt::format("{}.{} is set without {}.{}: mutual TLS needs both", field,
                                      options.cert_file.empty() ? "key_file" : "cert_file", field,
                                      options.cert_file.empty() ? "cert_file" : "key_file"));
  }
}
}  // namespace dlock::detail
