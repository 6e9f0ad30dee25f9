// The etcd v3 JSON protocol without a server (detail/etcd_protocol.hpp):
// canned replies as etcd 3.4's gateway sends them.
#include <dlock/detail/etcd_protocol.hpp>
#include <dlock/error.hpp>

#include <gtest/gtest.h>

#include <string>

namespace dlock::detail {
namespace {

using namespace std::chrono_literals;

TEST(EtcdProtocol, Base64RoundTripsEveryLength) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("k1"), "azE=");
  EXPECT_EQ(base64_encode("owner1"), "b3duZXIx");
  EXPECT_EQ(base64_encode("x"), "eA==");
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (std::size_t n = 0; n <= all.size(); n += 7)
    EXPECT_EQ(base64_decode(base64_encode(all.substr(0, n))), all.substr(0, n));
  EXPECT_THROW((void)base64_decode("abc"), std::invalid_argument);
  EXPECT_THROW((void)base64_decode("a=bc"), std::invalid_argument);
  EXPECT_THROW((void)base64_decode("ab!c"), std::invalid_argument);
}

TEST(EtcdProtocol, EndpointsParseAndRefuseCredentialsAndPaths) {
  const auto e = parse_etcd_endpoint("https://[::1]:2379", "f");
  EXPECT_TRUE(e.tls);
  EXPECT_EQ(e.host, "::1");
  EXPECT_EQ(e.port, "2379");
  EXPECT_EQ(parse_etcd_endpoint("http://etcd-0.internal:2379/", "f").host, "etcd-0.internal");
  EXPECT_THROW((void)parse_etcd_endpoint("etcd:2379", "f"), InvalidArgument);
  EXPECT_THROW((void)parse_etcd_endpoint("http://u:p@h:1", "f"), InvalidArgument);
  EXPECT_THROW((void)parse_etcd_endpoint("http://h", "f"), InvalidArgument);
  EXPECT_THROW((void)parse_etcd_endpoint("http://h:0", "f"), InvalidArgument);
}

TEST(EtcdProtocol, LeaseSecondsRoundUpToAtLeastOne) {
  EXPECT_EQ(etcd_lease_seconds(1ms), 1);
  EXPECT_EQ(etcd_lease_seconds(1000ms), 1);
  EXPECT_EQ(etcd_lease_seconds(1001ms), 2);
  EXPECT_EQ(etcd_lease_seconds(0ms), 1);
  EXPECT_GT(etcd_lease_seconds(std::chrono::milliseconds::max()), 0);
}

TEST(EtcdProtocol, AcquireGrantedContendedAndRetried) {
  const std::string granted =
      R"({"header":{"revision":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}},)"
      R"({"response_range":{"kvs":[{"key":"azE=","create_revision":"2","mod_revision":"2","version":"1",)"
      R"("value":"b3duZXIx","lease":"77"}],"count":"1"}}]})";
  auto r = parse_etcd_acquire(granted, "owner1", 77);
  EXPECT_TRUE(r.granted);
  EXPECT_EQ(r.create_revision, 2);

  const std::string held =
      R"({"header":{"revision":"9"},"responses":[{"response_range":{"kvs":[{"key":"azE=","create_revision":"5",)"
      R"("mod_revision":"5","version":"1","value":"b3duZXIx","lease":"77"}],"count":"1"}}]})";
  r = parse_etcd_acquire(held, "other", 78);
  EXPECT_FALSE(r.granted);
  ASSERT_TRUE(r.holder.has_value());
  EXPECT_EQ(r.holder->value, "owner1");
  EXPECT_EQ(r.holder->lease, 77);
  EXPECT_EQ(r.revision, 9);
  // The same attempt sent twice (its first reply lost): the key is already this owner's on this lease.
  r = parse_etcd_acquire(held, "owner1", 77);
  EXPECT_TRUE(r.granted);
  EXPECT_EQ(r.create_revision, 5);
  // The same owner on another lease (an earlier acquisition) is not this grant.
  EXPECT_FALSE(parse_etcd_acquire(held, "owner1", 99).granted);
  EXPECT_THROW((void)parse_etcd_acquire("<html>", "o", 1), std::runtime_error);
}

TEST(EtcdProtocol, RequestsCarryBase64KeysAndStringInts) {
  const std::string a = etcd_acquire_request("k1", "owner1", 77);
  EXPECT_NE(a.find(R"("target":"CREATE")"), std::string::npos) << a;
  EXPECT_NE(a.find(R"("create_revision":"0")"), std::string::npos) << a;
  EXPECT_NE(a.find(R"("lease":"77")"), std::string::npos) << a;
  EXPECT_NE(a.find(R"("value":"b3duZXIx")"), std::string::npos) << a;
  const std::string rel = etcd_release_request("k1", "owner1", 5);
  EXPECT_NE(rel.find(R"("create_revision":"5")"), std::string::npos) << rel;
  EXPECT_NE(rel.find("request_delete_range"), std::string::npos) << rel;
  EXPECT_EQ(etcd_release_request("k1", "owner1", 0).find("CREATE"), std::string::npos);
  EXPECT_NE(etcd_owner_check_request("k1", "o", 5, 77).find(R"("target":"LEASE")"), std::string::npos);
  EXPECT_NE(etcd_relet_request("k1", "o", 5, 78).find(R"("ignore_value":true)"), std::string::npos);
  // prefix range: "a/" .. "a0"
  EXPECT_NE(etcd_range_request("a/", true).find(R"("range_end":")" + base64_encode("a0") + "\""), std::string::npos);
  EXPECT_NE(etcd_watch_request("k", 12).find(R"("start_revision":"12")"), std::string::npos);
}

TEST(EtcdProtocol, LeaseReplies) {
  const auto g = parse_etcd_lease_grant(R"({"header":{},"ID":"4111120319694151429","TTL":"5"})");
  EXPECT_EQ(g.id, 4111120319694151429);
  EXPECT_EQ(g.ttl, 5);
  EXPECT_THROW((void)parse_etcd_lease_grant(R"({"header":{}})"), std::runtime_error);
  EXPECT_EQ(parse_etcd_keepalive(R"({"result":{"header":{},"ID":"7","TTL":"30"}})"), 30);
  EXPECT_EQ(parse_etcd_keepalive(R"({"result":{"header":{},"ID":"7"}})"), 0) << "a revoked or expired lease";
  EXPECT_EQ(parse_etcd_time_to_live(R"({"header":{},"ID":"7","TTL":"-1"})"), -1);
  EXPECT_TRUE(parse_etcd_txn_succeeded(R"({"header":{},"succeeded":true})"));
  EXPECT_FALSE(parse_etcd_txn_succeeded(R"({"header":{}})"));
}

TEST(EtcdProtocol, ErrorsAreClassified) {
  auto action = [](std::string_view body) { return classify_etcd_error(*parse_etcd_error(body)); };
  EXPECT_EQ(action(R"({"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14})"),
            EtcdErrorAction::next_endpoint);
  EXPECT_EQ(action(R"({"error":"etcdserver: request timed out","code":14,"message":"etcdserver: request timed out"})"),
            EtcdErrorAction::in_doubt);
  EXPECT_EQ(action(R"({"error":"etcdserver: invalid auth token","code":3,"message":"etcdserver: invalid auth token"})"),
            EtcdErrorAction::reauthenticate);
  EXPECT_EQ(action(R"({"code":3,"message":"etcdserver: authentication failed, invalid user ID or password"})"),
            EtcdErrorAction::auth_failed);
  EXPECT_EQ(action(R"({"code":3,"message":"invalid character 'b'"})"), EtcdErrorAction::fail);
  // a streamed reply's error
  EXPECT_EQ(action(R"({"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}})"),
            EtcdErrorAction::next_endpoint);
  EXPECT_FALSE(parse_etcd_error(R"({"result":{"header":{}}})").has_value());
}

TEST(EtcdProtocol, WatchMessages) {
  EXPECT_TRUE(parse_etcd_watch_message(R"({"result":{"header":{"revision":"3"},"created":true}})").created);
  const auto put = parse_etcd_watch_message(
      R"({"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"azE=","create_revision":"4"}}]}})");
  EXPECT_FALSE(put.deleted) << "PUT is the default event type and omitted";
  const auto del = parse_etcd_watch_message(
      R"({"result":{"header":{"revision":"5"},"events":[{"type":"DELETE","kv":{"key":"azE=","mod_revision":"5"}}]}})");
  EXPECT_TRUE(del.deleted);
  EXPECT_EQ(del.revision, 5);
  EXPECT_TRUE(parse_etcd_watch_message(R"({"result":{"header":{},"canceled":true}})").canceled);
  EXPECT_TRUE(parse_etcd_watch_message(R"({"error":{"grpc_code":14,"message":"x"}})").canceled);
}

}  // namespace
}  // namespace dlock::detail
