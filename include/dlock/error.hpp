// dlock/error.hpp: the exceptions dlock throws and the error codes they carry.
//
// Every exception is a dlock::Error: a std::runtime_error whose what() is a
// complete sentence (what happened, where, and for which lock) and whose
// code() is a std::error_code from dlock::error_category(). The subclass tells the caller what to do next:
//
//   TimeoutError     the deadline passed: a request the service had received got
//                    no answer in time (its outcome is unknown), or no pooled
//                    connection came free; try again later or give up.
//   ConnectionError  the lock service could not be reached (connect refused or
//                    no answer within the connect timeout: nothing was done) or
//                    dropped the connection (the state of the lock on the server
//                    is unknown). Every backend reports "could not reach the
//                    service" this way, so FallbackBackend degrades on it.
//                    Redis: connect refused, failed or timed out, or no answer
//                    to the connection's handshake (AUTH/SELECT/CONFIG GET/
//                    SCRIPT LOAD) within connect_timeout. A request that was
//                    sent and got no reply within command_timeout is a
//                    TimeoutError ("the request was sent; its outcome is
//                    unknown"); a connection broken after sending stays a
//                    ConnectionError whose message says the outcome is unknown.
//                    A server in a failover's transient state (READONLY,
//                    MASTERDOWN, LOADING, TRYAGAIN, CLUSTERDOWN, BUSY) is a
//                    ConnectionError too, whose message says nothing was done.
//                    Redlock: a failed round is a TimeoutError if any node that
//                    missed it was sent the request, else a ConnectionError.
//   LockLostError    the operation needs a lock this owner no longer holds
//                    (expired, taken, connection gone); stop the critical section.
//   DeadlockError    a deadlock was detected: by the server, or a second acquire
//                    of a Lock by the thread that already holds it (a Lock is
//                    not recursive); release what you hold, retry.
//   CancelledError   the caller's std::stop_token was requested during an acquire;
//                    nothing is held (a grant that raced the request was released).
//   InvalidArgument  a name or option is wrong; fix the code or configuration.
//   ServerError      the server refused (authentication, out of memory, wrong
//                    key type); fix the server side.
//
// Contention is not an error: try_lock() returns false.
#pragma once

#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>

namespace dlock {

enum class errc {
  timeout = 1,
  connection,
  lock_lost,
  not_held,
  deadlock,
  invalid_argument,
  server,
  auth,
  no_fencing_token,
  cancelled,
};

namespace detail {
class ErrorCategory final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "dlock"; }
  [[nodiscard]] std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::timeout:
        return "timed out";
      case errc::connection:
        return "connection to the lock service failed";
      case errc::lock_lost:
        return "lock was lost";
      case errc::not_held:
        return "lock is not held";
      case errc::deadlock:
        return "deadlock detected";
      case errc::invalid_argument:
        return "invalid argument";
      case errc::server:
        return "lock service refused the request";
      case errc::auth:
        return "authentication failed";
      case errc::no_fencing_token:
        return "fencing tokens are not available";
      case errc::cancelled:
        return "cancelled by a stop request";
    }
    return "unknown dlock error";
  }
};
}  // namespace detail

/// A short lowercase name for metrics labels and logs: "timeout", "connection", ...
[[nodiscard]] constexpr const char* to_string(errc e) noexcept {
  switch (e) {
    case errc::timeout:
      return "timeout";
    case errc::connection:
      return "connection";
    case errc::lock_lost:
      return "lock_lost";
    case errc::not_held:
      return "not_held";
    case errc::deadlock:
      return "deadlock";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::server:
      return "server";
    case errc::auth:
      return "auth";
    case errc::no_fencing_token:
      return "no_fencing_token";
    case errc::cancelled:
      return "cancelled";
  }
  return "unknown";
}

[[nodiscard]] inline const std::error_category& error_category() noexcept {
  static const detail::ErrorCategory category;
  return category;
}

[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// The root of every exception dlock throws.
class Error : public std::runtime_error {
 public:
  Error(errc code, const std::string& what) : std::runtime_error(what), code_(make_error_code(code)) {}
  [[nodiscard]] const std::error_code& code() const noexcept { return code_; }

 private:
  std::error_code code_;
};

class TimeoutError : public Error {
 public:
  explicit TimeoutError(const std::string& what) : Error(errc::timeout, what) {}
};

class ConnectionError : public Error {
 public:
  explicit ConnectionError(const std::string& what) : Error(errc::connection, what) {}
};

/// Thrown by operations that need the lock once it is lost or was never held
/// (code errc::lock_lost or errc::not_held).
class LockLostError : public Error {
 public:
  explicit LockLostError(const std::string& what, errc code = errc::lock_lost) : Error(code, what) {}
};

class DeadlockError : public Error {
 public:
  explicit DeadlockError(const std::string& what) : Error(errc::deadlock, what) {}
};

/// A stop was requested (the caller's std::stop_token) before the acquire
/// finished; the lock is not held.
class CancelledError : public Error {
 public:
  explicit CancelledError(const std::string& what) : Error(errc::cancelled, what) {}
};

class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& what) : Error(errc::invalid_argument, what) {}
};

/// The server answered with an error (code errc::server or errc::auth).
class ServerError : public Error {
 public:
  explicit ServerError(const std::string& what, errc code = errc::server) : Error(code, what) {}
};

}  // namespace dlock

template <>
struct std::is_error_code_enum<dlock::errc> : std::true_type {};
