// Conformance fixture of PostgresBackend in session or transaction scope, with
// pinned or (Shared > 0: PostgresOptions::shared_sessions) shared sessions: the
// executable's shared PostgreSQL server (support/postgres_server.hpp, or
// DLOCK_TEST_PG) with a FaultProxy in front, the fencing sequence installed,
// and a lock namespace per test.
#pragma once

#include <dlock/postgres.hpp>

#include <unistd.h>

#include <cstddef>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>

#include "conformance.hpp"
#include "integration/support/fault_proxy.hpp"
#include "integration/support/postgres_server.hpp"

namespace dlock::conformance {

template <PostgresOptions::Scope S, std::size_t Shared = 0>
class PostgresFixture {
 public:
  using Backend = PostgresBackend;
  static constexpr Traits traits{// Losing the connection ends the session, and the server frees the lock with it.
                                 .release_outage = EventType::release_not_held,
                                 // Deleting it is terminating the session that holds it.
                                 .deleted_reason = LostReason::connection,
                                 .threads = 4,
                                 .cycles = 50,
                                 .processes = 4,
                                 .process_cycles = 30};

  static void start_servers() {
    const std::string& conninfo = test::pg::PostgresServer::shared().conninfo();
    std::smatch m;
    if (!std::regex_search(conninfo, m, std::regex(R"(port=(\d+))")))
      throw std::runtime_error("the test server's conninfo names no port: " + conninfo);
    proxy() = std::make_unique<test::FaultProxy>(std::stoi(m[1]));
    proxied() = std::regex_replace(conninfo, std::regex(R"(port=\d+)"), "port=" + std::to_string(proxy()->port()));
    PostgresBackend(PostgresOptions{.conninfo = conninfo}).install_schema();  // fencing tokens
  }
  static void stop_servers() { proxy().reset(); }

  void set_up(const std::string& id) {
    namespace_ = "dlock-conformance:" + std::to_string(::getpid()) + ":" + id;
    admin_ = std::make_unique<test::pg::RawConn>(conninfo());
  }
  void tear_down() { proxy()->heal(); }

  Backend make() { return PostgresBackend(options(conninfo())); }
  Backend make_faulty() { return PostgresBackend(options(proxied())); }
  void cut() { proxy()->cut(); }
  void silence() { proxy()->silence(); }
  void heal() { proxy()->heal(); }

  /// Terminates the sessions that hold the lock, as an operator would.
  void force_delete(std::string_view name) { terminate_holders(key(name), 1); }
  /// A request for the lock waits in the server's queue.
  bool has_waiter(std::string_view name) { return has_waiter_key(key(name), 1); }

  /// As force_delete and has_waiter for a key of the bigint (objsubid 1) or
  /// the two-int4 space (objsubid 2: the primitives').
  void terminate_holders(const std::string& key, int objsubid) {
    (void)admin_->exec(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND objsubid = $2::int2 AND ((classid::int8 << 32) | objid::int8) = $1::int8",
        {key, std::to_string(objsubid)});
  }
  bool has_waiter_key(const std::string& key, int objsubid) {
    return admin_->exec(
               "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
               "AND objsubid = $2::int2 AND ((classid::int8 << 32) | objid::int8) = $1::int8",
               {key, std::to_string(objsubid)}) != "0";
  }

 private:
  static const std::string& conninfo() { return test::pg::PostgresServer::shared().conninfo(); }
  static std::unique_ptr<test::FaultProxy>& proxy() {
    static std::unique_ptr<test::FaultProxy> p;
    return p;
  }
  static std::string& proxied() {
    static std::string c;
    return c;
  }
  PostgresOptions options(const std::string& conninfo) const {
    return PostgresOptions{
        .conninfo = conninfo, .lock_namespace = namespace_, .pool_size = 4, .scope = S, .shared_sessions = Shared};
  }
  std::string key(std::string_view name) const { return std::to_string(make_key().advisory_key(name)); }
  PostgresBackend make_key() const { return PostgresBackend(options(conninfo())); }

  std::string namespace_;
  std::unique_ptr<test::pg::RawConn> admin_;
};

}  // namespace dlock::conformance
