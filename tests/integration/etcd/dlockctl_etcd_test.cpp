// dlockctl etcd list|inspect|release against a one-member etcd cluster, in process (dlockctl::run).
#include <dlock/etcd.hpp>
#include <dlock/lock.hpp>

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "support/etcd_server.hpp"

namespace dlock {
namespace {

using namespace std::chrono_literals;

struct Result {
  int rc;
  std::string out, err;
};

Result dlockctl(const test::EtcdCluster& cluster, std::vector<std::string> args) {
  args.push_back("--etcd");
  args.push_back(cluster.url(0));
  args.push_back("--prefix");
  args.push_back("dlockctl-test/");
  std::ostringstream out, err;
  const int rc = dlockctl::run(
      args, out, err, [](const char*) -> const char* { return nullptr; }, false);
  return {rc, out.str(), err.str()};
}

TEST(DlockctlEtcd, ListInspectAndForceRelease) {
  test::EtcdCluster cluster({.members = 1});
  EtcdBackend b(cluster.options("dlockctl-test/"));
  Lock<EtcdBackend> lock(b, "orders:42", {.ttl = 30s});
  ASSERT_TRUE(lock.try_lock());
  const std::string owner = lock.owner_id();
  const std::string token = std::to_string(lock.fencing_token());

  auto r = dlockctl(cluster, {"etcd", "list"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("orders:42"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(owner), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 lock under prefix"), std::string::npos) << r.out;

  r = dlockctl(cluster, {"etcd", "inspect", "orders:42", "--json"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"held\":true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"token\":" + token), std::string::npos) << r.out;
  EXPECT_EQ(dlockctl(cluster, {"etcd", "inspect", "nope"}).rc, 1);

  EXPECT_EQ(dlockctl(cluster, {"etcd", "release", "orders:42"}).rc, 2) << "without --force";
  r = dlockctl(cluster, {"etcd", "release", "--force", "orders:42"});
  EXPECT_EQ(r.rc, 2) << "without --yes";
  EXPECT_NE(r.err.find("would delete"), std::string::npos) << r.err;
  EXPECT_TRUE(lock.owns_lock());
  r = dlockctl(cluster, {"etcd", "release", "--force", "orders:42", "--yes"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THROW(lock.extend(), LockLostError) << "the holder learns it at its next extension";
  EXPECT_EQ(dlockctl(cluster, {"etcd", "release", "--force", "orders:42", "--yes"}).rc, 1);

  r = dlockctl(cluster, {"etcd", "list", "--user", "u", "--password", "hunter2-secret", "--timeout", "0.3"});
  EXPECT_EQ(r.rc, 3) << "auth is not enabled, so a user is refused: " << r.err;
  EXPECT_EQ(r.err.find("hunter2-secret"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace dlock
