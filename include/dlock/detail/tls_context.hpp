// Internal: the one place that turns TlsOptions into an OpenSSL context and a
// verified client stream (boost::asio::ssl over OpenSSL 3), and TLS failures
// into messages. Used by every TLS transport (Redis, etcd). Link OpenSSL::SSL.
#pragma once

#include <string>
#include <system_error>
#include <string_view>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "../error.hpp"
#include "../tls.hpp"

namespace dlock::detail {

/// The text of a TLS error code: OpenSSL's reason ("wrong version number",
/// "no such file") rather than Asio's generic "asio.ssl error".
[[nodiscard]] inline std::string tls_error_text(const boost::system::error_code& ec) {
  if (ec.category() == boost::asio::error::get_ssl_category()) {
    const auto code = static_cast<unsigned long>(static_cast<unsigned int>(ec.value()));
    if (ERR_SYSTEM_ERROR(code)) return std::system_category().message(ERR_GET_REASON(code));
    const char* reason = ERR_reason_error_string(code);
    if (reason != nullptr) return reason;
  }
  return ec.message();
}

/// A client context: TLS 1.2 or later, trust from ca_file/ca_dir (else the
/// system store), the client certificate and key when set, peer verification
/// unless options.verify is false. Throws InvalidArgument naming `field` and
/// the file that could not be used (never its content).
[[nodiscard]] inline boost::asio::ssl::context make_tls_context(const TlsOptions& options, std::string_view field) {
  validate_tls(options, field);
  namespace ssl = boost::asio::ssl;
  ssl::context ctx(ssl::context::tls_client);
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  auto load = [&](std::string_view member, const std::string& path, auto&& fn) {
    boost::system::error_code ec;
    fn(ec);
    if (ec) {
      throw InvalidArgument(
          fmt::format("{}.{} = \"{}\" could not be used: {}", field, member, path, tls_error_text(ec)));
    }
  };
  if (options.ca_file.empty() && options.ca_dir.empty()) {
    load("ca_file", std::string("(system default)"), [&](auto& ec) { ctx.set_default_verify_paths(ec); });
  }
  if (!options.ca_file.empty()) {
    load("ca_file", options.ca_file, [&](auto& ec) { ctx.load_verify_file(options.ca_file, ec); });
  }
  if (!options.ca_dir.empty()) {
    load("ca_dir", options.ca_dir, [&](auto& ec) { ctx.add_verify_path(options.ca_dir, ec); });
  }
  if (!options.cert_file.empty()) {
    load("cert_file", options.cert_file, [&](auto& ec) { ctx.use_certificate_chain_file(options.cert_file, ec); });
    load("key_file", options.key_file,
         [&](auto& ec) { ctx.use_private_key_file(options.key_file, ssl::context::pem, ec); });
  }
  ctx.set_verify_mode(options.verify ? ssl::verify_peer : ssl::verify_none);
  return ctx;
}

/// Before the handshake: SNI (host names only, as RFC 6066 asks) and the name
/// or IP address the certificate must carry. `host` is the endpoint's host;
/// options.server_name wins when set. Returns false when OpenSSL refused.
template <class Stream>
[[nodiscard]] bool prepare_tls_stream(boost::asio::ssl::stream<Stream>& stream, const TlsOptions& options,
                                      std::string_view host) {
  SSL* ssl = stream.native_handle();
  const std::string name(options.server_name.empty() ? host : std::string_view(options.server_name));
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(name, ec);
  const bool is_ip = !ec;
  if (!is_ip && !name.empty() && SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) return false;
  if (!options.verify || name.empty()) return true;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (is_ip) return X509_VERIFY_PARAM_set1_ip_asc(param, address.to_string().c_str()) == 1;
  return X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size()) == 1;
}

/// Why a handshake failed, for an error message: the certificate verification
/// result when verification failed ("certificate verify failed: self-signed
/// certificate"), else the TLS error ("wrong version number": a plain-text
/// server on a TLS port).
template <class Stream>
[[nodiscard]] std::string tls_failure_reason(boost::asio::ssl::stream<Stream>& stream,
                                             const boost::system::error_code& ec) {
  const long verify = SSL_get_verify_result(stream.native_handle());
  if (verify != X509_V_OK) {
    return fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify));
  }
  return tls_error_text(ec);
}

}  // namespace dlock::detail
