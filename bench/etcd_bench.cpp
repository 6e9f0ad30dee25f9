// EtcdBackend throughput and handoff latency, for bench/parts/etcd.sh.
//
//   DLOCK_BENCH_ETCD=http://127.0.0.1:2379[,...] etcd_bench
//
// BM_etcd_floor: a raw HTTP/JSON client (synchronous Beast on one kept-alive
//   connection to the first endpoint, request bodies written by hand, only
//   the lease id and "succeeded" read from the replies) doing what one lock
//   pair needs: lease grant, create-if-absent txn, delete-if-owner txn, lease
//   revoke. items/s = cycles/s.
// BM_etcd_uncontended: one thread, Lock<EtcdBackend> try_lock + unlock pairs
//   (the same four requests).
// BM_etcd_contended/8: 8 contenders, each with its own backend, on one name,
//   as bench_common.hpp's contended() (handoffs/s, p50/p99 wait, fairness).
#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/dlock.hpp>
#include <dlock/etcd.hpp>

#include <benchmark/benchmark.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace std::chrono_literals;
namespace http = boost::beast::http;

std::vector<std::string> endpoints() {
  const char* e = std::getenv("DLOCK_BENCH_ETCD");
  std::vector<std::string> out;
  std::string s = e ? e : "http://127.0.0.1:2379";
  for (std::size_t p = 0; p != std::string::npos;) {
    const auto c = s.find(',', p);
    out.push_back(s.substr(p, c == std::string::npos ? c : c - p));
    p = c == std::string::npos ? c : c + 1;
  }
  return out;
}

dlock::EtcdOptions options() { return dlock::EtcdOptions{.endpoints = endpoints(), .key_prefix = "dlock-bench/"}; }

// The floor: the four requests of a pair, nothing else.
class RawClient {
 public:
  RawClient() : socket_(ioc_) {
    const auto e = dlock::detail::parse_etcd_endpoint(endpoints().front(), "DLOCK_BENCH_ETCD");
    host_ = e.host + ":" + e.port;
    boost::asio::ip::tcp::resolver r(ioc_);
    boost::asio::connect(socket_, r.resolve(e.host, e.port));
    socket_.set_option(boost::asio::ip::tcp::no_delay(true));
  }
  std::string post(const char* target, std::string body) {
    http::request<http::string_body> req{http::verb::post, target, 11};
    req.set(http::field::host, host_);
    req.set(http::field::content_type, "application/json");
    req.set("Grpc-Metadata-hasleader", "true");
    req.body() = std::move(body);
    req.prepare_payload();
    http::write(socket_, req);
    http::response<http::string_body> res;
    http::read(socket_, buffer_, res);
    return std::move(res.body());
  }

 private:
  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
  std::string host_;
};

std::string between(const std::string& s, const std::string& start) {
  const auto p = s.find(start);
  if (p == std::string::npos) return {};
  const auto b = p + start.size();
  return s.substr(b, s.find('"', b) - b);
}

void BM_etcd_floor(benchmark::State& state) {
  RawClient c;
  const std::string key = "ZGxvY2stYmVuY2gvZmxvb3I=";  // base64("dlock-bench/floor")
  const std::string owner = "MDE5MzZiOGUtN2MzYS03ZDJlLTlmMDEtMmIzYzRkNWU2Zjcw";
  for (auto _ : state) {
    const std::string lease = between(c.post("/v3/lease/grant", R"({"TTL":"30"})"), "\"ID\":\"");
    const std::string acquired =
        c.post("/v3/kv/txn", R"({"compare":[{"target":"CREATE","result":"EQUAL","key":")" + key +
                                 R"(","create_revision":"0"}],"success":[{"request_put":{"key":")" + key +
                                 R"(","value":")" + owner + R"(","lease":")" + lease +
                                 R"("}}],"failure":[{"request_range":{"key":")" + key + R"("}}]})");
    const std::string released =
        c.post("/v3/kv/txn", R"({"compare":[{"target":"VALUE","result":"EQUAL","key":")" + key + R"(","value":")" +
                                 owner + R"("}],"success":[{"request_delete_range":{"key":")" + key + R"("}}]})");
    (void)c.post("/v3/lease/revoke", R"({"ID":")" + lease + R"("})");
    if (lease.empty() || acquired.find("\"succeeded\":true") == std::string::npos ||
        released.find("\"succeeded\":true") == std::string::npos) {
      state.SkipWithError("the floor's cycle failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_etcd_floor)->UseRealTime();

void BM_etcd_uncontended(benchmark::State& state) {
  dlock::EtcdBackend etcd(options());
  dlock::bench::lock_unlock_pairs(state, etcd);
}
BENCHMARK(BM_etcd_uncontended)->UseRealTime();

void BM_etcd_contended(benchmark::State& state) {
  std::vector<std::unique_ptr<dlock::EtcdBackend>> backends;
  for (std::int64_t i = 0; i < state.range(0); ++i) backends.push_back(std::make_unique<dlock::EtcdBackend>(options()));
  dlock::bench::contended(state, backends, {.ttl = 30s}, std::chrono::microseconds(0));
}
BENCHMARK(BM_etcd_contended)->Arg(8)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
