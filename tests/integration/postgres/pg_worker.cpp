// A separate process for the cross-process test in postgres_test.cpp:
//
//   pg_worker <conninfo> <lock name> <cycles> <worker id>
//
// Each cycle takes the lock, reads the counter row, writes it back plus one
// (a non-atomic read-then-write that only the lock makes safe), records its
// fencing token in dlock_tokens inside the critical section (the bigserial id
// gives the acquisition order), and releases. Exit status 0 on success.
#include <dlock/postgres.hpp>

#include <libpq-fe.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>

namespace {

std::string exec(PGconn* c, const char* sql, const std::string& a = {}, const std::string& b = {}) {
  const char* values[2] = {a.c_str(), b.c_str()};
  const int n = a.empty() ? 0 : (b.empty() ? 1 : 2);
  PGresult* r = PQexecParams(c, sql, n, nullptr, values, nullptr, nullptr, 0);
  const auto st = PQresultStatus(r);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    const std::string msg = PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(std::string(sql) + ": " + msg);
  }
  std::string out = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
  PQclear(r);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 5) {
    std::fprintf(stderr, "usage: pg_worker <conninfo> <lock name> <cycles> <worker id>\n");
    return 2;
  }
  try {
    const std::string conninfo = argv[1];
    const int cycles = std::atoi(argv[3]);
    const std::string worker = argv[4];
    dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = conninfo, .pool_size = 2});
    dlock::Lock<dlock::PostgresBackend> lock(pg, argv[2], {.ttl = 30s, .acquire_timeout = 60s});
    PGconn* data = PQconnectdb(conninfo.c_str());
    if (PQstatus(data) != CONNECTION_OK) throw std::runtime_error(PQerrorMessage(data));
    for (int i = 0; i < cycles; ++i) {
      std::scoped_lock hold(lock);
      const long v = std::atol(exec(data, "SELECT v FROM dlock_counter WHERE id = 1").c_str());
      exec(data, "UPDATE dlock_counter SET v = $1 WHERE id = 1", std::to_string(v + 1));
      exec(data, "INSERT INTO dlock_tokens (token, worker) VALUES ($1, $2)", std::to_string(lock.fencing_token()),
           worker);
    }
    PQfinish(data);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pg_worker %s: %s\n", argv[4], e.what());
    return 1;
  }
}
