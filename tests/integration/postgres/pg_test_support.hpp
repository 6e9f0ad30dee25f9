// Helpers shared by the PostgresBackend integration tests: the shared server's
// conninfo, options with a per-run namespace, the running test's name.
#pragma once

#include <dlock/postgres.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "support/postgres_server.hpp"

namespace dlock::test::pg {

inline const std::string& conninfo() { return PostgresServer::shared().conninfo(); }

/// A namespace per test run, so that runs against a shared DLOCK_TEST_PG server do not meet.
inline const std::string& run_namespace() {
  static const std::string ns = "dlock-test-" + std::to_string(::getpid());
  return ns;
}

/// `o` with the shared server's conninfo (unless it names one) and the run's namespace (unless set).
inline PostgresOptions options(PostgresOptions o = {}) {
  if (o.conninfo.empty()) o.conninfo = conninfo();
  if (o.lock_namespace.empty()) o.lock_namespace = run_namespace();
  return o;
}

inline std::string test_name() { return ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

/// A request for the advisory lock `key` waits in the server's queue.
inline bool has_waiter(RawConn& raw, std::int64_t key) {
  return raw.exec(
             "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
             "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
             {std::to_string(key)}) != "0";
}

/// How many requests for the advisory lock `key` wait in the server's queue.
inline int waiting_count(RawConn& raw, std::int64_t key) {
  return std::stoi(
      raw.exec("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
               "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
               {std::to_string(key)}));
}

/// Advisory locks on `key`, granted or awaited, in the server.
inline int advisory_rows(RawConn& raw, std::int64_t key) {
  return std::stoi(
      raw.exec("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
               "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
               {std::to_string(key)}));
}

/// Polls `cond` (a server-side or cross-thread condition) every 5 ms until it holds or `limit` passes.
template <class F>
bool eventually_holds(F cond, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

inline std::chrono::milliseconds since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t);
}

}  // namespace dlock::test::pg
