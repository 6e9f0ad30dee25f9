// The conformance suite over EtcdBackend on a three-member etcd cluster.
#include "etcd_fixture.hpp"

namespace dlock::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(Etcd, Conformance, EtcdFixture);
}  // namespace dlock::conformance
